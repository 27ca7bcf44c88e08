"""What the Storage SCU sends: files and data sets, scanned, streamed or converted.

A PS3.10 file is a 128-byte preamble, ``DICM``, the File Meta Information
(group 0002, always Explicit VR Little Endian, PS3.10 7.1) and then the data
set in the transfer syntax the meta names.  :func:`scan_file` finds where the
data set starts by walking the meta element headers itself, reads the SOP
Class and Instance UIDs from the first elements of the data set, and leaves
the rest of the file alone; :func:`file_chunks` then streams the data set's
bytes unchanged (bit-preserving).  Files without preamble and meta start with
the data set at offset 0; pydicom tells their encoding.

Before anything is sent, :func:`scan_file` walks the element headers of the
data set to the end of the file (:mod:`dicomstore.framing`: values skipped by
their lengths), so that a file cut short — in its Pixel Data, its last element,
an element header, a fragment — is a :class:`CorruptFile`, never sent.
A deflated data set (PS3.5 A.5) is inflated for that walk (bounded memory),
which finds where its deflate stream ends: bytes after it are left out, an
odd-length stream gets its NUL pad, with a warning (:attr:`Instance.warning`).

Conversion (decompression, re-encoding between the syntaxes of PS3.5 A.1-A.3)
decodes the whole instance with pydicom: only the bit-preserving path and
inflating (``conversion.inflated``) have memory independent of its size.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeGuard

from dicomstore import framing, uids
from dicomstore.errors import DicomstoreError
from dicomstore.framing.headers import UNDEFINED, UNKNOWN_VR, element_header

if TYPE_CHECKING:  # pydicom is imported only when a file needs it (it is slow to import)
    from pydicom.dataset import Dataset


def is_dataset(item: object) -> TypeGuard[Dataset]:
    """True for a pydicom Dataset, without importing pydicom when nobody did (nor
    reading a module another thread is still loading: no ``Dataset`` in it yet)."""
    dataset = getattr(sys.modules.get("pydicom.dataset"), "Dataset", None)
    return dataset is not None and isinstance(item, dataset)


#: Bytes read from the start of a file to find the meta and the SOP UIDs.
HEAD_SIZE = 16 * 1024
_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018


class NotDicom(DicomstoreError):
    """A file that is not a storable DICOM instance (the reason is the message)."""


class Unreadable(NotDicom):
    """A path that cannot be opened or read (``OSError``): a failure, not a skip."""


class CorruptFile(NotDicom):
    """A DICOM instance whose data set is cut short or cannot be read: never sent.

    The message names the element and the bytes missing; the SOP UIDs are known.
    """

    def __init__(self, message: str, sop_class_uid: str, sop_instance_uid: str) -> None:
        super().__init__(message)
        self.sop_class_uid, self.sop_instance_uid = sop_class_uid, sop_instance_uid


@dataclass
class Instance:
    """One SOP Instance to send: a file's data set, or a pydicom Dataset."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    path: Path | None = None
    offset: int = 0  # where the data set starts in the file
    size: int = 0  # bytes of the data set as sent (0 for a Dataset until encoded)
    dataset: Dataset | None = None
    #: Bytes sent after the file's ``size - len(padding)`` bytes (PS3.5 A.5 padding).
    padding: bytes = b""
    #: What the scan noticed about the file and did about it (sent all the same).
    warning: str | None = None
    #: Opens the bytes of a file that is not a local path (an archive's stored
    #: instance, ``ArchiveReader.open``): a readable, seekable stream.
    opener: Callable[[], IO[bytes]] | None = None
    #: False until :func:`check_data_set` walked it (``scan_file(check=False)``:
    #: :func:`check_file` does, before it is sent).
    checked: bool = True

    @property
    def label(self) -> str:
        """The path, or the SOP Instance UID for an in-memory data set."""
        return str(self.path) if self.path is not None else self.sop_instance_uid


# -- finding the files ------------------------------------------------------


def expand_paths(
    inputs: Iterable[str | os.PathLike], stdin: IO[str] | None = None
) -> Iterator[Path]:
    """Files named, files under folders (recursively, sorted), and ``-``: paths on stdin."""
    for item in inputs:
        if str(item) == "-":
            for line in stdin if stdin is not None else sys.stdin:
                line = line.strip()
                if line:
                    yield from expand_paths([line])
            continue
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                folder = Path(root)  # (once per folder: a Path costs a parse)
                for name in sorted(files):
                    yield folder / name
        else:
            yield path


# -- reading headers ----------------------------------------------------------


def parse_file_meta(head: bytes) -> tuple[int, dict[int, bytes]] | None:
    """Offset of the data set and the meta values (``framing.file_meta``), or None
    if there is no ``DICM`` (a data set without meta: pydicom reads it)."""
    try:
        return framing.file_meta(head)
    except framing.NotPart10:
        return None
    except framing.FramingError as exc:
        raise NotDicom(f"file meta information is malformed or too long: {exc}") from None


def _text(value: bytes) -> str:
    return value.rstrip(b"\0 ").decode("ascii", "replace").strip()


def _walk_sop_uids(data: bytes, ts: str) -> tuple[str, str] | None:
    """SOP Class and Instance UIDs from the first top-level elements, or None.

    Handles the three uncompressed encodings and the encapsulated syntaxes
    (whose elements are Explicit VR Little Endian); gives up (None) on
    anything unusual, and the caller asks pydicom.
    """
    if ts == uids.IMPLICIT_VR_LE:
        implicit, little = True, True
    elif ts == uids.EXPLICIT_VR_BE:
        implicit, little = False, False
    elif ts == uids.EXPLICIT_VR_LE or (ts in uids.transfer_syntaxes() and uids.is_encapsulated(ts)):
        implicit, little = False, True
    else:
        return None
    found: dict[int, str] = {}
    pos = 0
    while (header := element_header(data, pos, implicit, little)) is not None:
        tag, _vr, length, value = header
        if tag > _SOP_INSTANCE:
            break
        if length in (UNDEFINED, UNKNOWN_VR) or value + length > len(data):
            return None
        if tag in (_SOP_CLASS, _SOP_INSTANCE):
            found[tag] = _text(data[value : value + length])
        pos = value + length
    if found.get(_SOP_CLASS) and found.get(_SOP_INSTANCE):
        return found[_SOP_CLASS], found[_SOP_INSTANCE]
    return None


def _encoding_ts(ds: Dataset) -> str:
    """The uncompressed transfer syntax a data set was read in (or Explicit VR LE)."""
    implicit, little = ds.original_encoding
    if implicit:
        return uids.IMPLICIT_VR_LE
    if little is False:
        return uids.EXPLICIT_VR_BE
    return uids.EXPLICIT_VR_LE


def _checked(sop_class: object, sop_instance: object) -> tuple[str, str]:
    cls, inst = str(sop_class or "").strip(), str(sop_instance or "").strip()
    if not cls or not inst:
        raise NotDicom("no SOP Class UID or SOP Instance UID in the data set")
    if not uids.is_valid_uid(cls):
        raise NotDicom(f"SOP Class UID {cls[:64]!r} is not a UID")
    return cls, inst


def scan_file(path: str | os.PathLike, *, check: bool = True) -> Instance:
    """Where the data set starts, what it is, and whether it is whole.

    Reads the file's head, then walks the element headers of its data set
    (:func:`check_data_set`; ``check=False``: later, by :func:`check_file`, but a
    deflated one now: its size comes from that walk).  Raises :class:`NotDicom`
    for anything that is not a storable instance, :class:`CorruptFile` for one
    cut short.
    """
    path = path if isinstance(path, Path) else Path(path)
    with _opened(path) as (fd, info):
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        head = os.pread(fd, HEAD_SIZE, 0)
        instance = _identify(path, head, info.st_size, fd)
        if check or instance.transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LE:
            check_data_set(fd, instance, head)
        else:
            instance.checked = False
    return instance


def check_file(instance: Instance) -> bytes | None:
    """:func:`check_data_set` of a file :func:`scan_file` left unchecked (the same
    errors); the data set's bytes when it lies within the first :data:`HEAD_SIZE`
    bytes of its file (read whole: to be sent as they are), else None."""
    assert instance.path is not None
    with _opened(instance.path) as (fd, _info):
        head = os.pread(fd, HEAD_SIZE, 0)
        check_data_set(fd, instance, head)
    instance.checked = True
    end = instance.offset + instance.size
    return head[instance.offset : end] if end <= len(head) else None


@contextmanager
def _opened(path: Path) -> Iterator[tuple[int, os.stat_result]]:
    """A read-only descriptor of ``path`` and its fstat, closed after; an ``OSError``
    (opening, reading) is :class:`Unreadable`; a FIFO, socket
    or device (opened without waiting for a writer: one in a folder hung ``send``,
    Ctrl-C too; review38scu #8). (No FileIO: one fstat, not two.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise NotDicom("not a regular file (a FIFO, socket or device): not read")
            yield fd, info
        finally:
            os.close(fd)
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from None


def scan_stream(opener: Callable[[], IO[bytes]]) -> Instance:
    """:func:`scan_file` of bytes that are no local file (an archive's stored instance
    in a storage other than the file system): ``opener()`` gives a readable, seekable
    stream, read by seeking; :func:`open_dataset` opens it again to send it."""
    try:
        with opener() as f:
            size = f.seek(0, os.SEEK_END)
            pread = framing.stream_pread(f)
            head = pread(HEAD_SIZE, 0)
            instance = _identify(f, head, size, pread)
            instance.opener = opener
            check_data_set(pread, instance, head)
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from None
    return instance


def _identify(
    source: Path | IO[bytes], head: bytes, size: int, fd: int | framing.Pread
) -> Instance:
    """The instance in file ``fd`` (a descriptor, or a stream's ``pread``) whose first
    bytes are ``head``, from the head alone (inflated when deflated) when it can, else
    with pydicom reading ``source``."""
    path = source if isinstance(source, Path) else None
    parsed = parse_file_meta(head)
    ts: str | None = None
    offset = 0
    if parsed is not None:
        offset, meta = parsed
        if 0x0010 in meta:
            ts = _text(meta[0x0010]) or None
        if ts is not None:
            if ts == uids.DEFLATED_EXPLICIT_VR_LE:  # PS3.5 A.5: Explicit VR LE, deflated
                found = _walk_sop_uids(_inflated_head(fd, offset), uids.EXPLICIT_VR_LE)
            else:
                found = _walk_sop_uids(head[offset:], ts)
            if found is not None:
                cls, inst = _checked(*found)
                return Instance(cls, inst, ts, path, offset, size - offset)
    # Anything else: let pydicom read the header (deflated, no meta, odd layouts).
    from pydicom import dcmread

    if not isinstance(source, Path):
        source.seek(0)
    try:
        ds = dcmread(
            source,
            stop_before_pixels=True,
            force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID"],
        )
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on garbage
        raise NotDicom(f"not readable as DICOM: {one_line(exc)}") from None
    if parsed is None and not (ds.get("SOPClassUID") and ds.get("SOPInstanceUID")):
        raise NotDicom("not a DICOM file (no DICM prefix, no SOP Class/Instance UID)")
    cls, inst = _checked(ds.get("SOPClassUID"), ds.get("SOPInstanceUID"))
    if ts is None:
        ts = _encoding_ts(ds)
    return Instance(cls, inst, ts, path, offset, size - offset)


def _inflated_head(fd: int | framing.Pread, offset: int) -> bytes:
    """The first inflated bytes (about :data:`HEAD_SIZE`) of the deflated data set at
    ``offset``: as many as inflate before an error (the walk reports it later)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data, out, size = framing.preader(fd)(HEAD_SIZE, offset), [], 0
    for at in range(0, len(data), 256):  # (256 bytes inflate to 258 KiB at most)
        try:
            out.append(inflater.decompress(data[at : at + 256]))
        except zlib.error:
            break
        size += len(out[-1])
        if size >= HEAD_SIZE or inflater.eof:
            break
    return b"".join(out)


def check_data_set(fd: int | framing.Pread, instance: Instance, head: bytes = b"") -> None:
    """Walk the element headers of the instance's data set in file ``fd`` (its
    first bytes ``head``) to the end of the file (:func:`dicomstore.framing.walk`).

    Raises :class:`CorruptFile` when the data set is cut short (or a deflated
    one cannot be inflated).  What the walk does not understand is sent as
    is, with :attr:`Instance.warning` saying so: the SCP judges.  A deflated
    data set gets its ``size``, ``padding`` and warning here
    (:func:`_deflated`).  ``OSError`` propagates.
    """
    ts = instance.transfer_syntax
    end = instance.offset + instance.size
    implicit, little = uids.is_implicit_vr(ts), uids.is_little_endian(ts)
    if ts == uids.DEFLATED_EXPLICIT_VR_LE:
        _deflated(fd, instance)
        return
    try:
        framing.walk(framing.FileSource(fd, end, head), instance.offset, implicit, little)
    except framing.Corrupt as exc:
        raise CorruptFile(str(exc), instance.sop_class_uid, instance.sop_instance_uid) from None
    except framing.FramingError as exc:
        instance.warning = f"not checked for truncation: {exc}"


def _deflated(fd: int | framing.Pread, instance: Instance) -> None:
    """Walk the inflated data set; then send the deflate stream only, padded to an
    even length with a NUL byte as PS3.5 A.5 asks, bytes after the stream left out."""
    start, end = instance.offset, instance.offset + instance.size
    src = framing.InflatedSource(fd, start, end)
    pread = src.pread
    notes: list[str] = []

    def corrupt(text: str) -> CorruptFile:
        return CorruptFile(text, instance.sop_class_uid, instance.sop_instance_uid)

    try:
        framing.walk(src, 0, False, True)
        src.finish()
    except framing.Corrupt as exc:
        if not isinstance(exc, framing.Truncated):
            raise corrupt(str(exc)) from None
        cut = "the deflate stream is cut short: " if src.stream_size is None else ""
        raise corrupt(f"{cut}{exc} (offsets in the inflated data set)") from None
    except framing.FramingError as exc:
        notes.append(f"not checked for truncation: {exc} (offsets in the inflated data set)")
        try:
            src.finish()
        except framing.FramingError as exc:
            raise corrupt(str(exc)) from None
    stream = src.stream_size
    if stream is None:
        raise corrupt(
            f"the deflate stream is cut short: it does not end within the file's {instance.size}"
            f" bytes (the data set inflated so far has {src.size} bytes)"
        )
    after = end - start - stream
    conformant_pad = after == 1 and stream % 2 == 1 and pread(1, start + stream) == b"\0"
    if after and not conformant_pad:
        trailer = pread(8, start + stream)
        gzip = trailer == struct.pack("<LL", src.crc32, src.size & 0xFFFFFFFF)
        what = " (a gzip trailer: CRC-32 and size of the inflated data)" if gzip else ""
        notes.append(f"{after} byte(s) after the end of the deflate stream{what} left out")
    if not conformant_pad:
        instance.size = stream
        if stream % 2:
            instance.padding = b"\0"
            instance.size += 1
            notes.append(
                f"odd-length deflate stream ({stream} bytes) padded with a NUL byte (PS3.5 A.5)"
            )
    if notes:
        instance.warning = "deflated data set: " + "; ".join(notes)


def instance_from_dataset(ds: Dataset) -> Instance:
    """An :class:`Instance` for an in-memory pydicom data set (encoded when sent).

    Its transfer syntax is the file meta's, else the encoding it was read
    in, else Explicit VR Little Endian.
    """
    cls, inst = _checked(ds.get("SOPClassUID"), ds.get("SOPInstanceUID"))
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return Instance(cls, inst, str(ts) if ts else _encoding_ts(ds), dataset=ds)


# -- producing the bytes ------------------------------------------------------


class SourceReadError(DicomstoreError):
    """A file could not be read while its data set was being sent."""


def open_dataset(instance: Instance, opener: Callable[[], IO[bytes]] | None = None) -> IO[bytes]:
    """The instance's file (or stream; or what ``opener`` opens), positioned where its
    data set starts (raises OSError)."""
    opener = opener or (instance.opener if instance.path is None else None)
    if opener is not None:
        f = opener()
    else:
        assert instance.path is not None
        f = open(instance.path, "rb", buffering=0)  # noqa: SIM115 - closed by file_chunks
    try:
        f.seek(instance.offset)
    except BaseException:
        f.close()
        raise
    return f


def file_chunks(
    f: IO[bytes],
    chunk_size: int,
    check: Callable[[], None] | None = None,
    first: int | None = None,
) -> Iterator[bytes]:
    """The rest of file ``f``, unchanged, in chunks of ``chunk_size``; closes ``f``.

    ``first``: the first chunk's size, doubled at each read up to ``chunk_size`` (the
    peer gets the first bytes soon, a large file still goes in large reads).
    ``check`` runs before each read and may raise to stop (e.g. when the
    association died): a dead peer must not make us read a 2 GiB file.
    """
    size = min(first or chunk_size, chunk_size)
    with f:
        while True:
            if check is not None:
                check()
            try:
                chunk = f.read(size)
            except OSError as exc:
                raise SourceReadError(f"read failed: {exc.strerror or exc}") from None
            if not chunk:
                return
            yield chunk
            size = min(size * 2, chunk_size)


def exactly(chunks: Iterable[bytes], instance: Instance) -> Iterator[bytes]:
    """The data set bytes the scan checked: the file's first ``size - len(padding)``
    bytes (what follows, e.g. after a deflate stream, left out), then ``padding``.

    Raises :class:`SourceReadError` if the file got shorter since it was scanned.
    """
    left, padding = instance.size - len(instance.padding), instance.padding
    if not left:
        if padding:
            yield padding
        return
    it = iter(chunks)
    try:
        for chunk in it:
            if len(chunk) >= left:  # the last: with the padding (each PDV has an even length)
                yield chunk[:left] + padding if len(chunk) > left or padding else chunk
                return  # (no read to meet the end of the file: what follows is not sent)
            left -= len(chunk)
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # (file_chunks closes the file)
    raise SourceReadError(f"the file got {left} bytes shorter since it was scanned")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception's text on one line, without a traceback pydicom may embed."""
    text = str(exc).split("Traceback", 1)[0]
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
