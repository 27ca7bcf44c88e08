"""Decompressing an instance for a peer that accepts no compressed syntax of it: a
frame at a time (PS3.5 8.2, A.4), never the whole instance in memory.

The data set is re-encoded element by element (``framing.reencoding``) into the
uncompressed syntax; its encapsulated Pixel Data is replaced by the native one, each
frame decoded by pydicom's decoders (pydicom's RLE; JPEG and JPEG 2000 with the
pylibjpeg plugins) and written before the next is decoded. What decoding changes is
changed as pydicom's ``decompress`` does: Photometric Interpretation (YBR to RGB),
Planar Configuration, Number of Frames; Pixel Data is OB for 8 bits allocated or
less, else OW. The Extended Offset Table, and the Icon Image Sequence (0088,0200),
whose Pixel Data may be encapsulated too, are left out. Memory: one decoded frame,
which must be at most a limit (its size read from the header first).
"""

from __future__ import annotations

import array
import struct
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from dicomstore import uids
from dicomstore.framing import FileSource, FramingError, file_pread
from dicomstore.framing.reencoding import Edits, reencode
from dicomstore.inflation import temporary_file
from dicomstore.services.sources import Instance, NotDicom, one_line

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset


class TooLargeToConvert(NotDicom):
    """Converting the instance would hold more than the limit (a frame decoded, or
    through pydicom the data set)."""


#: What decoding leaves out: the Extended Offset Table and its lengths (of encapsulated
#: frames only, PS3.3 C.7.6.3.1.8), the Icon Image Sequence (its Pixel Data may be
#: encapsulated too; Type 3, PS3.3 C.7.6.1).
_LEFT_OUT = (0x7FE00001, 0x7FE00002, 0x00880200)
_PHOTOMETRIC, _PLANAR, _FRAMES = 0x00280004, 0x00280006, 0x00280008
_UNDEFINED = b"\xff\xff\xff\xff"
#: Every compressed transfer syntax encodes Explicit VR Little Endian (PS3.5 A.4).
EXPLICIT = (False, True)


def decompressed(
    instance: Instance, ts: str, target: tuple[bool, bool], limit: int, where: str | None
) -> tuple[BinaryIO, int] | None:
    """``instance``'s file decoded and encoded in the uncompressed ``ts`` (``target``:
    its (implicit, little)) into an unnamed temporary file in ``where`` (rewound), and
    its size; None when it cannot be done a frame at a time (1 bit allocated, Pixel
    Data not as PS3.5 A.4 says: the caller decodes it whole). Raises
    :class:`NotDicom` when a frame would be over ``limit`` bytes or does not decode, or
    the data set does not frame; ``OSError``."""
    with _opened(instance) as f, _opened(instance) as g:
        found = _decoder(instance, ts, f, limit)
        if found is None:
            return None
        header, first, image, decoded = found
        frames = int(header.get("NumberOfFrames", 1) or 1)
        little = target[1]
        vr = b"OB" if int(header.get("BitsAllocated", 8) or 8) <= 8 else b"OW"
        length = frames * first.nbytes
        if length >= 0xFFFFFFFE:
            raise NotDicom(f"its Pixel Data decoded is {length} bytes, too long for one element")
        edits = Edits(replace=_changes(header, image, frames, little))
        chunks = _frames(first, decoded, frames, little, vr == b"OW")
        edits.pixels = lambda: (vr, length + length % 2, chunks)
        data_set = FileSource(file_pread(g), instance.offset + instance.size)
        return written(
            where, ts, lambda out: reencode(data_set, instance.offset, EXPLICIT, target, out, edits)
        )


def written(where: str | None, ts: str, write: Callable[[BinaryIO], int]) -> tuple[BinaryIO, int]:
    """(an unnamed temporary file in ``where``, rewound, that ``write`` wrote the data set
    encoded in ``ts`` into; the size it returned). A data set that does not frame is
    :class:`NotDicom`; on any error the file goes."""
    out = temporary_file(where)
    try:
        size = write(out)
        out.seek(0)
    except FramingError as exc:
        out.close()
        raise NotDicom(f"cannot convert to {uids.uid_name(ts)}: {exc}") from None
    except BaseException:
        out.close()
        raise
    return out, size


def _opened(instance: Instance) -> IO[bytes]:
    """The instance's file (or stream) from its start."""
    if instance.path is not None:
        return open(instance.path, "rb")  # noqa: SIM115 - the caller's with
    assert instance.opener is not None
    return instance.opener()


def _decoder(
    instance: Instance, ts: str, f: IO[bytes], limit: int
) -> tuple[Dataset, np.ndarray, dict[str, Any], Iterator[tuple[np.ndarray, Any]]] | None:
    """(its header, its first frame decoded, what decoding makes of the Image Pixel
    module, the frames that follow) of the Part-10 file ``f``; None for 1 bit, or a
    Pixel Data that is not encapsulated as PS3.5 A.4 says."""
    from pydicom import dcmread
    from pydicom.pixels import as_pixel_options, get_decoder

    header = dcmread(f, stop_before_pixels=True, force=True, defer_size=1024)
    rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    bits = int(header.get("BitsAllocated", 8) or 8)
    if bits == 1:
        return None
    frame_size = rows * columns * samples * max(bits, 8) // 8
    if frame_size > limit:
        raise TooLargeToConvert(
            f"converting it to {uids.uid_name(ts)} would hold a frame of {frame_size} bytes,"
            f" over the limit of {limit}: not converted"
        )
    head = f.read(12)  # (pydicom stopped at the Pixel Data's tag)
    if head[:6] not in (b"\xe0\x7f\x10\x00OB", b"\xe0\x7f\x10\x00OW") or head[8:] != _UNDEFINED:
        return None  # (not Explicit VR, encapsulated, PS3.5 A.4: pydicom's lenience)
    source = uids.as_uid(instance.transfer_syntax)
    try:
        opts = as_pixel_options(header, transfer_syntax_uid=source)
        decoded = get_decoder(source).iter_array(cast(BinaryIO, f), **opts)
        first, image = next(decoded)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything
        raise NotDicom(f"cannot convert to {uids.uid_name(ts)}: {one_line(exc)}") from None
    return header, first, image, decoded


def _changes(
    header: Dataset, image: dict[str, Any], frames: int, little: bool
) -> dict[int, tuple[bytes, bytes] | None]:
    """The top-level elements decoding changes (as pydicom's ``decompress``)."""
    changes: dict[int, tuple[bytes, bytes] | None] = dict.fromkeys(_LEFT_OUT)
    changes[_PHOTOMETRIC] = (b"CS", _text(str(image["photometric_interpretation"])))
    if int(image.get("samples_per_pixel", 1)) > 1:
        order = "<H" if little else ">H"
        changes[_PLANAR] = (b"US", struct.pack(order, int(image["planar_configuration"])))
    if "NumberOfFrames" in header or frames > 1:
        changes[_FRAMES] = (b"IS", _text(str(frames)))
    return changes


def _text(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b" " * (len(data) % 2)


def _frames(
    first: np.ndarray,
    rest: Iterator[tuple[np.ndarray, Any]],
    count: int,
    little: bool,
    words: bool,
) -> Iterator[bytes]:
    """Each frame's bytes in the target's byte order (``words``: OW, swapped by its 16-bit
    words whatever the bits allocated, PS3.5 6.2), the first one given; a pad byte after
    an odd length (PS3.5 7.1.1)."""
    shape, dtype = first.shape, first.dtype
    frame: np.ndarray | None = first
    n = 0
    while frame is not None:
        if frame.shape != shape or frame.dtype != dtype:
            raise FramingError(f"frame {n + 1} decodes to {frame.shape}, not {shape} as frame 1")
        data = frame.astype(dtype.newbyteorder("<"), copy=False).tobytes()
        if words and not little:
            swapped = array.array("H", data)
            swapped.byteswap()
            data = swapped.tobytes()
        yield data
        n += 1
        frame = None
        if n < count:
            try:
                frame = next(rest)[0]
            except StopIteration:
                raise FramingError(f"{n} frames decoded of the {count} it says") from None
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - decoders raise anything
                raise FramingError(f"frame {n + 1} does not decode: {one_line(exc)}") from None
    if first.nbytes * count % 2:
        yield b"\0"
