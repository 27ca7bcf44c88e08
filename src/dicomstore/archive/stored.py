"""Reading a stored instance without loading its bulk data (read-only helper).

:func:`read_stored` gives the data set up to the Pixel Data (large values
left unread, PS3.5 7.1 element by element) and where the Pixel Data value
lies in the file, so WADO-RS can send metadata, bulk data and frames by
seeking, never holding the pixels in memory. Both read an instance by its key
in the archive's :class:`~dicomstore.archive.storage.Storage`.

A deflated data set (PS3.5 A.5) cannot be reached by seeking: :func:`inflated`
inflates it into a temporary file (``inflation.inflated_temporary``, in the
storage's scratch folder, up to a limit), which every reader of one goes
through and then reads as it reads a data set that was never deflated: large
values left unread there, and read from there on access (review53 #3: they were
read whole, a 200 MiB value cost 200-400 MiB per request).
"""

from __future__ import annotations

import io
import struct
import warnings
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag

from dicomstore.archive.dicomfile import PIXEL_TAGS, dataset_offset, encoding_of
from dicomstore.archive.storage import Storage
from dicomstore.inflation import DEFAULT_MAX_INFLATED, inflated_temporary
from dicomstore.vr import LONG_VRS

_IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}
#: Values longer than this are left unread by default (read on access, from the file).
DEFER_SIZE = 1024


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
    with ExitStack() as stack:
        with storage.open(key) as fp:
            found = stack.enter_context(inflating(storage, fp, dataset_offset(fp), limit))
        yield found


def inflating(
    storage: Storage, fp: BinaryIO, start: int, limit: int
) -> AbstractContextManager[tuple[BinaryIO, int]]:
    """:func:`inflated` of the deflated data set at ``start`` in the open stored file
    ``fp`` (in ``storage``'s scratch folder)."""
    scratch = storage.scratch()
    fp.seek(start)
    return inflated_temporary(fp, limit, str(scratch) if scratch is not None else None)


@contextmanager
def opened(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str,
    *,
    inflated_limit: int,
    defer_size: int = DEFER_SIZE,
    specific_tags: list[int] | None = None,
) -> Iterator[tuple[Stored, BinaryIO | None]]:
    """(:func:`read_stored` of ``key``, the bytes its ``pixels`` offset is in): for a
    deflated data set its :func:`inflated` copy, open until the block ends (the values
    over ``defer_size`` left unread are read from it on access until then); else
    None (the stored file: open it, or :func:`read_range`)."""
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if not deflated:
        found = read_stored(
            storage, key, transfer_syntax_uid, defer_size=defer_size, specific_tags=specific_tags
        )
        yield found, None
        return
    with inflated(storage, key, inflated_limit) as (fp, _size):
        yield _read_header(fp, implicit, little, defer_size, specific_tags), fp


def _read_header(
    fp: BinaryIO,
    implicit: bool,
    little: bool,
    defer_size: int | None,
    specific_tags: list[int] | None,
    name: str | None = None,
) -> Stored:
    """:func:`header_of` ``fp`` as a ``FileDataset`` that reads the values it left
    unread on access: from the stored file ``name`` (at the data set's start), or
    with ``name`` None from ``fp``, the inflated copy of a deflated data set (while it
    is open)."""
    read, pixels = header_of(fp, implicit, little, defer_size, specific_tags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = FileDataset(name or fp, read, is_implicit_VR=implicit, is_little_endian=little)
    if name is None:
        # (not the copy's descriptor as a name: pydicom would reopen that once it is closed)
        ds.filename = None
    return Stored(ds, implicit, little, name is None, pixels)


def _named(storage: Storage, key: str, defer_size: int | None) -> tuple[str, int | None]:
    """(the name a ``FileDataset`` of ``key`` reopens for its unread values, the
    ``defer_size`` to read it with): values are left unread only in a local file."""
    path = storage.local_path(key)
    return (str(path), defer_size) if path is not None else (key, None)


def read_stored(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str,
    *,
    defer_size: int | None = DEFER_SIZE,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
    specific_tags: list[int] | None = None,
) -> Stored:
    """The data set at ``key`` before the Pixel Data (values over ``defer_size`` left
    unread when the bytes are a local file, which pydicom reopens to read them; from
    another storage every value before the Pixel Data is read; ``specific_tags``: only
    those, as pydicom's ``read_dataset``).

    A deflated data set (PS3.5 A.5) is read from its :func:`inflated` copy (up to
    ``inflated_limit`` bytes), values over ``defer_size`` left unread there: the copy
    stays open while the data set lives (its values are read from it on access), and
    is closed (gone) with it, or at once when no value was left unread. Its pixels are
    located in that copy (read them from :func:`opened`'s).
    """
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    if deflated:
        held = ExitStack()
        try:
            fp, _size = held.enter_context(inflated(storage, key, inflated_limit))
            found = _read_header(fp, implicit, little, defer_size, specific_tags)
        except BaseException:
            held.close()
            raise
        _close_once_read(held, found.dataset)
        return found
    name, defer = _named(storage, key, defer_size)
    with storage.open(key) as fp:
        fp.seek(dataset_offset(fp))
        return _read_header(fp, implicit, little, defer, specific_tags, name)


def _close_once_read(held: ExitStack, ds: Dataset) -> None:
    """Close ``held`` (an inflated copy) when ``ds`` goes, or now if it left no value
    unread there."""
    if any_unread(ds):
        weakref.finalize(ds, held.close)
    else:
        held.close()


def _read_once(
    storage: Storage,
    key: str,
    held: ExitStack,
    inflated_limit: int,
    defer_size: int | None,
    specific_tags: list[int] | None,
) -> tuple[Stored, bytes | None, FileMetaDataset]:
    """(:func:`read_stored` of ``key``, its preamble, its File Meta Information), the
    stored file opened once: the transfer syntax is its file meta's; a deflated data
    set's inflated copy is entered into ``held``."""
    with storage.open(key) as fp:
        start, preamble, meta = meta_from(fp)
        implicit, little, deflated = encoding_of(str(meta.get("TransferSyntaxUID", "")))
        if deflated:
            copy, _size = held.enter_context(inflating(storage, fp, start, inflated_limit))
            return _read_header(copy, implicit, little, defer_size, specific_tags), preamble, meta
        fp.seek(start)
        name, defer = _named(storage, key, defer_size)
        return _read_header(fp, implicit, little, defer, specific_tags, name), preamble, meta


@contextmanager
def opened_header(
    storage: Storage,
    key: str,
    *,
    inflated_limit: int,
    defer_size: int = DEFER_SIZE,
    specific_tags: list[int] | None = None,
) -> Iterator[tuple[Stored, bytes | None, FileMetaDataset]]:
    """(:func:`read_stored` of ``key``, its preamble, its File Meta Information) from
    one opening of the stored file, its transfer syntax the file meta's (a deflated
    data set's inflated copy open until the block ends); raises as
    :func:`read_file_header`."""
    with ExitStack() as held:
        yield _read_once(storage, key, held, inflated_limit, defer_size, specific_tags)


def any_unread(ds: Dataset) -> bool:
    """True when a top-level value of ``ds`` was left unread by its reader."""
    return any(
        isinstance(raw := ds.get_item(tag, keep_deferred=True), RawDataElement)
        and raw.value is None
        and raw.length
        for tag in list(ds.keys())
    )


def header_of(
    fp: BinaryIO,
    implicit: bool,
    little: bool,
    defer_size: int | None = None,
    specific_tags: list[int] | None = None,
) -> tuple[Dataset, PixelValue | None]:
    """The data set from ``fp``'s position up to the Pixel Data (values over
    ``defer_size`` left unread; ``specific_tags``: only those), and where that Pixel
    Data is."""
    wanted: list[BaseTag | int] | None = None if specific_tags is None else [*specific_tags]
    read = read_dataset(
        fp, implicit, little, stop_when=_at_pixels, defer_size=defer_size, specific_tags=wanted
    )
    return read, pixel_value(fp, implicit, little)


def meta_from(fp: BinaryIO) -> tuple[int, bytes | None, FileMetaDataset]:
    """(where the data set starts, the preamble (None when the file has no 'DICM'), the
    File Meta Information, PS3.10 7.1) of the open stored file ``fp``; ValueError for a
    file meta pydicom cannot read."""
    offset = dataset_offset(fp)
    fp.seek(0)
    head = fp.read(offset)
    preamble, body = (head[:128], head[132:]) if head[128:132] == b"DICM" else (None, head)
    return offset, preamble, FileMetaDataset(read_dataset(io.BytesIO(body), False, True))


def read_file_header(
    storage: Storage,
    key: str,
    *,
    inflated_limit: int,
    defer_size: int | None = None,
) -> FileDataset:
    """The stored file at ``key`` up to its Pixel Data as pydicom's ``dcmread(...,
    stop_before_pixels=True, defer_size=...)`` gives it (File Meta Information and
    data set), a deflated data set read from its :func:`inflated` copy (up to
    ``inflated_limit`` bytes) rather than inflated whole in memory as pydicom does.
    Raises as :func:`read_stored`, and ValueError for a file meta pydicom cannot read.
    The stored file is opened once (its file meta read from the same opening)."""
    held = ExitStack()
    try:
        stored, preamble, meta = _read_once(storage, key, held, inflated_limit, defer_size, None)
    except BaseException:
        held.close()
        raise
    _close_once_read(held, stored.dataset)
    ds = stored.dataset
    assert isinstance(ds, FileDataset)  # (read_stored's, knowing where its values are)
    ds.preamble, ds.file_meta = preamble, meta
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
            raise OSError(f"{name} is shorter than its value's header says")
        left -= len(block)
        yield block
