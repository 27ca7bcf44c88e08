"""Coverage-guided fuzzing of the sans-I/O decoders with atheris (issue: hardening).

    pip install atheris
    python fuzz/fuzz_protocol.py -atheris_runs=2000000          # or -max_total_time=600
    python fuzz/fuzz_protocol.py fuzz/corpus -max_total_time=600  # keep a corpus

Each input is fed to an acceptor connection in Sta2 and in Sta6 (the upper
layer, PS3.8) in several chunk splits, through the entry points production
uses: the bytes land in one receive buffer that is reused, compacted and grown
the way ``aio.association.Stream`` does it, ``Connection.receive_view`` sees a
view of what is unconsumed once ``pdu_size`` says a PDU may be complete, the
P-DATA PDVs (views into that buffer) go to the DIMSE assembler before the
buffer moves, and ``parts_to_send`` is drained after each call.  Then the
input goes to the command set decoder (PS3.7).  Only our own
RemoteProtocolError may come out; anything else is a crash that atheris
reports with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from dicomstore.dimse import DimseAssembler, decode_message
    from dicomstore.errors import RemoteProtocolError
    from dicomstore.ul import pdu as P
    from dicomstore.ul.connection import Connection, Role
    from dicomstore.ul.events import DataIndication
    from dicomstore.ul.items import PresentationContextAC, PresentationContextRQ, UserInformation

_RQ = P.encode(
    P.AssociateRQ(
        "SCP",
        "SCU",
        [PresentationContextRQ(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])],
        UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
    )
)
_AC = P.AssociateAC(
    "SCP",
    "SCU",
    [PresentationContextAC(1, 0, "1.2.840.10008.1.2")],
    UserInformation(max_length=16384, implementation_class_uid="1.2.3"),
)
#: A small receive buffer, so that compaction and growth happen (aio's is 512 KiB).
_BUFFER = 256


class _Shell:
    """aio's Stream and Transport.receive without sockets: one reused receive buffer."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.buf = bytearray(_BUFFER)
        self.start = self.end = 0
        self.need = 6
        self.assembler = DimseAssembler()
        self.broken = False

    def arrive(self, data: bytes) -> None:
        """Bytes from the socket: into the buffer, then every batch they complete."""
        self._make_room(len(data))
        self.buf[self.end : self.end + len(data)] = data
        self.end += len(data)
        view = memoryview(self.buf)
        while self.end - self.start >= self.need:
            events, used = self.conn.receive_view(view[self.start : self.end])
            self.conn.parts_to_send()
            if not used:
                break
            self.start += used
            self.need = P.pdu_size(view[self.start : self.end])
            for event in events:  # used while the views are valid, as the services do
                if isinstance(event, DataIndication) and not self.broken:
                    try:
                        for pdv in event.pdvs:
                            self.assembler.receive(pdv)
                    except RemoteProtocolError as exc:
                        self.broken = True
                        self.conn.protocol_error(exc)
                        self.conn.parts_to_send()
            del events
        view.release()

    def _make_room(self, more: int) -> None:
        """Compact (in place) or grow the buffer, as ``Stream.make_room`` does."""
        avail = self.end - self.start
        if self.end + more <= len(self.buf):
            return
        if avail + more > len(self.buf):
            new = bytearray(max(2 * len(self.buf), avail + more))
            new[:avail] = self.buf[self.start : self.end]
            self.buf = new
        else:  # the old bytes are overwritten: any view kept past its batch sees it
            self.buf[:avail] = bytes(self.buf[self.start : self.end])
        self.start, self.end = 0, avail


def _established() -> Connection:
    conn = _new_sta2()
    _Shell(conn).arrive(_RQ)
    conn.accept(_AC)
    conn.parts_to_send()
    return conn


def _new_sta2() -> Connection:
    conn = Connection(Role.ACCEPTOR, max_pdata=16384)
    conn.transport_connected()
    return conn


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    split = fdp.ConsumeIntInRange(1, 64)
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    for conn in (_new_sta2(), _established()):
        shell = _Shell(conn)
        for start in range(0, len(payload), split):
            shell.arrive(payload[start : start + split])  # never raises
        conn.transport_closed()
        conn.parts_to_send()
    try:
        decode_message(payload)
    except RemoteProtocolError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
