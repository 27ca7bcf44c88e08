"""Reading a stored instance without loading its bulk data (read-only helper).

:func:`read_stored` gives the data set up to the Pixel Data (large values
left unread, PS3.5 7.1 element by element) and where the Pixel Data value
lies in the file, so WADO-RS can send metadata, bulk data and frames by
seeking, never holding the pixels in memory. Both read an instance by its key
in the archive's :class:`~dicomstore.archive.storage.Storage`.

A deflated data set (PS3.5 A.5) cannot be reached by seeking: :func:`inflated`
inflates it into a temporary file (``inflation.inflated_temporary``, in the
storage's scratch folder, up to a limit), which every reader of one goes
through and then reads as it reads a data set that was never deflated.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset

from dicomstore.archive.dicomfile import PIXEL_TAGS, dataset_offset, encoding_of
from dicomstore.archive.storage import Storage
from dicomstore.inflation import DEFAULT_MAX_INFLATED, inflated_temporary
from dicomstore.vr import LONG_VRS

_IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}


@dataclass(frozen=True, slots=True)
class PixelValue:
    """The Pixel Data element: tag, VR, value offset in the file (of a deflated data set:
    in its inflated copy, from 0), length (None: undefined, i.e. encapsulated)."""

    tag: int
    vr: str
    offset: int
    length: int | None


@dataclass(frozen=True, slots=True)
class Stored:
    """The header of a stored instance and where its pixels are."""

    dataset: Dataset
    implicit: bool
    little: bool
    deflated: bool
    pixels: PixelValue | None


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in PIXEL_TAGS


@contextmanager
def inflated(storage: Storage, key: str, limit: int) -> Iterator[tuple[BinaryIO, int]]:
    """(the deflated data set at ``key`` inflated into a temporary file, rewound; its
    size): Explicit VR Little Endian from offset 0 (PS3.5 A.5). The stored file is
    closed once inflated, the temporary when the block ends. Raises
    ``inflation.TooLarge`` beyond ``limit`` inflated bytes, ``InflateError``
    (a ValueError) for a stream that does not inflate, OSError."""
    scratch = storage.scratch()
    with ExitStack() as stack:
        with storage.open(key) as fp:
            fp.seek(dataset_offset(fp))
            where = str(scratch) if scratch is not None else None
            found = stack.enter_context(inflated_temporary(fp, limit, where))
        yield found


@contextmanager
def opened(
    storage: Storage, key: str, transfer_syntax_uid: str, *, inflated_limit: int
) -> Iterator[tuple[Stored, BinaryIO | None]]:
    """(:func:`read_stored` of ``key``, the bytes its ``pixels`` offset is in): for a
    deflated data set its :func:`inflated` copy, open until the block ends; else
    None (the stored file: open it, or :func:`read_range`)."""
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if not deflated:
        yield read_stored(storage, key, transfer_syntax_uid), None
        return
    with inflated(storage, key, inflated_limit) as (fp, _size):
        ds, pixels = header_of(fp, implicit, little)
        yield Stored(ds, implicit, little, True, pixels), fp


def read_stored(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str,
    *,
    defer_size: int = 1024,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
) -> Stored:
    """The data set at ``key`` before the Pixel Data (values over ``defer_size`` left
    unread when the bytes are a local file, which pydicom reopens to read them; from
    another storage every value before the Pixel Data is read).

    A deflated data set (PS3.5 A.5) is read from its :func:`inflated` copy (up to
    ``inflated_limit`` bytes), every value before the Pixel Data read; its
    pixels are located in that copy (read them from another :func:`inflated`).
    """
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if deflated:
        with opened(storage, key, transfer_syntax_uid, inflated_limit=inflated_limit) as found:
            return found[0]
    path = storage.local_path(key)
    defer = defer_size if path is not None else None
    with storage.open(key) as fp:
        fp.seek(dataset_offset(fp))
        read, pixels = header_of(fp, implicit, little, defer)
    # A FileDataset knows its file, so deferred values load on access.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        name = str(path) if path is not None else key
        ds = FileDataset(name, read, is_implicit_VR=implicit, is_little_endian=little)
    return Stored(ds, implicit, little, False, pixels)


def header_of(
    fp: BinaryIO, implicit: bool, little: bool, defer_size: int | None = None
) -> tuple[Dataset, PixelValue | None]:
    """The data set from ``fp``'s position up to the Pixel Data (values over
    ``defer_size`` left unread), and where that Pixel Data is."""
    read = read_dataset(fp, implicit, little, stop_when=_at_pixels, defer_size=defer_size)
    return read, pixel_value(fp, implicit, little)


def file_meta(storage: Storage, key: str) -> tuple[bytes | None, FileMetaDataset]:
    """The preamble (None when the file has no 'DICM') and File Meta Information of the
    stored file at ``key`` (PS3.10 7.1); ValueError for a file meta pydicom cannot read."""
    with storage.open(key) as fp:
        offset = dataset_offset(fp)
        fp.seek(0)
        head = fp.read(offset)
    preamble, body = (head[:128], head[132:]) if head[128:132] == b"DICM" else (None, head)
    return preamble, FileMetaDataset(read_dataset(io.BytesIO(body), False, True))


def read_file_header(storage: Storage, key: str, *, inflated_limit: int) -> FileDataset:
    """The stored file at ``key`` up to its Pixel Data as pydicom's ``dcmread(...,
    stop_before_pixels=True)`` gives it (File Meta Information and data set), a
    deflated data set read from its :func:`inflated` copy (up to ``inflated_limit``
    bytes) rather than inflated whole in memory as pydicom does. Raises as
    :func:`read_stored`, and ValueError for a file meta pydicom cannot read."""
    preamble, meta = file_meta(storage, key)
    syntax = str(meta.get("TransferSyntaxUID", ""))
    stored = read_stored(storage, key, syntax, inflated_limit=inflated_limit)
    path = storage.local_path(key)
    name = str(path) if path is not None else key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = FileDataset(
            name,
            stored.dataset,
            preamble=preamble,
            file_meta=meta,
            is_implicit_VR=stored.implicit,
            is_little_endian=stored.little,
        )
    return ds


def pixel_value(fp: BinaryIO, implicit: bool, little: bool) -> PixelValue | None:
    """The Pixel Data element whose header is at ``fp``'s position, if it is one."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    order = "<" if little else ">"
    group, elem = struct.unpack(order + "HH", head[:4])
    tag = group << 16 | elem
    if tag not in PIXEL_TAGS:
        return None
    if implicit:
        vr = _IMPLICIT_PIXEL_VR[tag]
        (length,), value_at = struct.unpack(order + "L", head[4:8]), start + 8
    elif head[4:6] in LONG_VRS:
        vr = head[4:6].decode("ascii")
        (length,), value_at = struct.unpack(order + "L", head[8:12]), start + 12
    else:
        vr = head[4:6].decode("ascii", "replace")
        (length,), value_at = struct.unpack(order + "H", head[6:8]), start + 8
    return PixelValue(tag, vr, value_at, None if length == 0xFFFFFFFF else length)


def read_range(
    storage: Storage, key: str, offset: int, length: int, chunk: int = 1 << 20
) -> Iterator[bytes]:
    """Yield ``length`` bytes at ``key`` from ``offset`` in chunks."""
    with storage.open(key) as fp:
        yield from read_chunks(fp, offset, length, chunk, key)


def read_chunks(
    fp: BinaryIO, offset: int, length: int, chunk: int = 1 << 20, name: str = "the file"
) -> Iterator[bytes]:
    """Yield ``length`` bytes of the open ``fp`` from ``offset`` in chunks."""
    fp.seek(offset)
    left = length
    while left > 0:
        block = fp.read(min(chunk, left))
        if not block:
            raise OSError(f"{name} is shorter than its Pixel Data header says")
        left -= len(block)
        yield block
