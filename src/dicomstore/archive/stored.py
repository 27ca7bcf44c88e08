"""Reading a stored instance without loading its bulk data (read-only helper).

:func:`read_stored` gives the data set up to the Pixel Data (large values
left unread, PS3.5 7.1 element by element) and where the Pixel Data value
lies in the file, so WADO-RS can send metadata, bulk data and frames by
seeking, never holding the pixels in memory. Both read an instance by its key
in the archive's :class:`~dicomstore.archive.storage.Storage`.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import read_dataset

from dicomstore.archive.dicomfile import PIXEL_TAGS, dataset_offset, encoding_of
from dicomstore.archive.storage import Storage
from dicomstore.vr import LONG_VRS

_IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}


@dataclass(frozen=True, slots=True)
class PixelValue:
    """The Pixel Data element: tag, VR, value offset in the file, length (None: undefined,
    i.e. encapsulated)."""

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


def read_stored(
    storage: Storage, key: str, transfer_syntax_uid: str, *, defer_size: int = 1024
) -> Stored:
    """The data set at ``key`` before the Pixel Data (values over ``defer_size`` left
    unread when the bytes are a local file, which pydicom reopens to read them; from
    another storage every value before the Pixel Data is read).

    A deflated data set (PS3.5 A.5) is read whole by pydicom instead, and its
    pixels are not located (they cannot be reached by seeking).
    """
    implicit, little, deflated = encoding_of(transfer_syntax_uid)
    path = storage.local_path(key)
    defer = defer_size if path is not None else None
    if deflated:
        if path is not None:
            ds = dcmread(path, stop_before_pixels=True, defer_size=defer)
        else:
            with storage.open(key) as fp:
                ds = dcmread(fp, stop_before_pixels=True)
        return Stored(ds, implicit, little, True, None)
    with storage.open(key) as fp:
        fp.seek(dataset_offset(fp))
        read = read_dataset(fp, implicit, little, stop_when=_at_pixels, defer_size=defer)
        pixels = _pixel_value(fp, implicit, little)
    # A FileDataset knows its file, so deferred values load on access.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        name = str(path) if path is not None else key
        ds = FileDataset(name, read, is_implicit_VR=implicit, is_little_endian=little)
    return Stored(ds, implicit, little, False, pixels)


def _pixel_value(fp: BinaryIO, implicit: bool, little: bool) -> PixelValue | None:
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
        fp.seek(offset)
        left = length
        while left > 0:
            block = fp.read(min(chunk, left))
            if not block:
                raise OSError(f"{key} is shorter than its Pixel Data header says")
            left -= len(block)
            yield block
