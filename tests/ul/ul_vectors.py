"""What the UL tests share (PS3.8 9.3, PS3.7 D.3.3): byte vectors and a receive shell.

The text fields are ASCII literals, their lengths in the comments; the UL
tests check those lengths once (``test_ul_items``) before any vector uses them.

:class:`Receiver` is how every test hands received bytes to the upper layer:
through the production entry points (``Connection.receive_view``,
``PDUReader.parse``), the way the asyncio shell does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from dicomstore.ul import items as I
from dicomstore.ul.connection import Connection, Role
from dicomstore.ul.events import ULEvent
from dicomstore.ul.pdu import PDU, AssociateAC, AssociateRQ, PDUReader, pdu_size

T = TypeVar("T")


class Receiver(Generic[T]):
    """The receiving half of ``aio.association`` (Stream + Transport.receive), in memory.

    Received bytes are appended to what is left over; ``parse`` (a connection's
    ``receive_view`` or a reader's ``parse``) sees a view from the first
    unconsumed byte once ``need`` bytes are there: 6 at first, then the
    ``pdu_size`` of what the last call left, as aio waits.  Unlike aio, the
    leftover moves to a new buffer after each call, so the PDV views in what
    came out stay valid for the whole test.
    """

    def __init__(self, parse: Callable[[memoryview], tuple[list[T], int]]) -> None:
        self.parse = parse
        self.pending = bytearray()
        self.need = 6

    def receive(self, data: bytes | bytearray | memoryview) -> list[T]:
        """Bytes from the transport in; what the complete ones give out."""
        buf = self.pending + data
        view = memoryview(buf)
        start = 0
        out: list[T] = []
        while len(buf) - start >= self.need:
            got, used = self.parse(view[start:])
            if not used:
                break
            out += got
            start += used
            self.need = pdu_size(view[start:])
        self.pending = bytearray(view[start:])
        return out

    def receive_chunks(self, data: bytes, cuts: Iterable[int] = ()) -> list[T]:
        """``data`` arriving in pieces, cut at the offsets ``cuts``."""
        bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(data)), len(data)]
        out: list[T] = []
        for a, b in zip(bounds, bounds[1:], strict=False):
            out += self.receive(data[a:b])
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete PDU."""
        return len(self.pending)


def pdu_receiver(max_pdata: int = 0, max_other: int = 256 * 1024) -> Receiver[PDU]:
    """A :class:`Receiver` of PDUs (``PDUReader.parse``, as a connection uses it)."""
    return Receiver(PDUReader(max_pdata, max_other).parse)


def read_pdus(data: bytes, cuts: Iterable[int] = ()) -> list[PDU]:
    """The PDUs of a byte stream (any PDU at its end left incomplete is dropped)."""
    return pdu_receiver().receive_chunks(data, cuts)


def receive(conn: Connection, data: bytes, cuts: Iterable[int] = ()) -> list[ULEvent]:
    """Hand ``data`` to ``conn`` through a fresh :class:`Receiver`; its events."""
    return Receiver(conn.receive_view).receive_chunks(data, cuts)


def sent_bytes(conn: Connection) -> bytes:
    """What ``conn`` queued for its peer (``parts_to_send``), joined."""
    return b"".join(conn.parts_to_send())


def h(text: str) -> bytes:
    """Bytes from hex digits; whitespace is ignored."""
    return bytes.fromhex(text)


def s(raw: bytes) -> str:
    return raw.decode("ascii")


APP_CTX = b"1.2.840.10008.3.1.1.1"  # 21 = 0x15, DICOM application context
VERIFICATION = b"1.2.840.10008.1.1"  # 17 = 0x11
CT_STORAGE = b"1.2.840.10008.5.1.4.1.1.2"  # 25 = 0x19
IMPLICIT_LE = b"1.2.840.10008.1.2"  # 17 = 0x11
EXPLICIT_LE = b"1.2.840.10008.1.2.1"  # 19 = 0x13
IMPL_UID = b"1.2.826.0.1.3680043.8.498.1"  # 27 = 0x1B
PROC_LOG = b"1.2.840.10008.5.1.4.1.1.88.40"  # 29 = 0x1D, Procedure Log Storage
ENHANCED_SR = b"1.2.840.10008.5.1.4.1.1.88.22"  # 29 = 0x1D
COMPREHENSIVE_SR = b"1.2.840.10008.5.1.4.1.1.88.33"  # 29 = 0x1D
STORAGE_SERVICE = b"1.2.840.10008.4.2"  # 17 = 0x11, Storage Service Class
PATIENT_ROOT_FIND = b"1.2.840.10008.5.1.4.1.2.1.1"  # 27 = 0x1B
VERSION = b"DICOMSTORE_010"  # 14 = 0x0E
CALLED = b"STORESCP        "  # 16, AE title padded with spaces (20H)
CALLING = b"STORESCU        "  # 16

#: Each text field and the length its comment gives.
LENGTHS = {
    APP_CTX: 0x15,
    VERIFICATION: 0x11,
    CT_STORAGE: 0x19,
    IMPLICIT_LE: 0x11,
    EXPLICIT_LE: 0x13,
    IMPL_UID: 0x1B,
    PROC_LOG: 0x1D,
    ENHANCED_SR: 0x1D,
    COMPREHENSIVE_SR: 0x1D,
    STORAGE_SERVICE: 0x11,
    PATIENT_ROOT_FIND: 0x1B,
    VERSION: 0x0E,
    CALLED: 16,
    CALLING: 16,
}


def associated(max_pdata: int = 0) -> tuple[Connection, Connection]:
    """A requestor and an acceptor (that advertised ``max_pdata``) in Sta6, joined in memory.

    Context 1 is CT Image Storage in Implicit VR Little Endian.
    """
    ct, implicit = s(CT_STORAGE), s(IMPLICIT_LE)
    req, acc = Connection(Role.REQUESTOR), Connection(Role.ACCEPTOR, max_pdata=max_pdata)
    req.request(AssociateRQ("SCP", "SCU", [I.PresentationContextRQ(1, ct, [implicit])]))
    acc.transport_connected()
    req.transport_connected()
    receive(acc, sent_bytes(req))
    acc.accept(AssociateAC("SCP", "SCU", [I.PresentationContextAC(1, 0, implicit)]))
    receive(req, sent_bytes(acc))
    assert req.is_established and acc.is_established
    return req, acc
