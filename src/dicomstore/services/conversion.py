"""Re-encoding what the SCU sends when the SCP accepts none of its transfer syntaxes
(``send --convert``): a data set encoded in another uncompressed syntax (PS3.5
A.1-A.5).

An uncompressed data set is re-encoded element by element (:func:`reencoded`,
``framing.reencoding``), in bounded memory whatever its size. A deflated one (PS3.5
A.5) is inflated into a temporary file first (``inflation.inflate_to_temporary``, up
to a limit): to Explicit VR Little Endian that copy is the converted data set
(:func:`inflated`), to another syntax it is re-encoded from there. A compressed one
is decoded a frame at a time (``decompression.py``). Only a pydicom Dataset given as
such, and the odd file ``decompression`` leaves, go through pydicom, which holds the
data set whole (:func:`converted`: up to a limit)."""

from __future__ import annotations

import copy
import zlib
from typing import TYPE_CHECKING, Any, BinaryIO

from dicomstore import uids
from dicomstore.framing import FileSource, file_pread
from dicomstore.framing.headers import NATIVE, byteswapped
from dicomstore.framing.reencoding import reencode
from dicomstore.inflation import (
    DEFAULT_MAX_INFLATED,
    InflateError,
    inflate_to_temporary,
    temporary_file,
)
from dicomstore.services.decompression import EXPLICIT, decompressed, header_number, written
from dicomstore.services.decompression import TooLargeToConvert as TooLargeToConvert
from dicomstore.services.sources import Instance, NotDicom, one_line, open_dataset

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def encode_dataset(ds: Dataset, ts: str) -> bytes:
    """``ds`` without group 0002 encoded in ``ts`` (PS3.5 A.1-A.5).

    Encapsulated pixel data is written as it is: the caller decompresses
    first when ``ts`` is not the data set's own syntax.
    """
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian = ts != uids.EXPLICIT_VR_BE
    fp.is_implicit_VR = ts == uids.IMPLICIT_VR_LE
    body = ds[0x00030000:] if len(ds.group_dataset(0x0002)) else ds
    write_dataset(fp, body)
    data = fp.getvalue()
    if ts == uids.DEFLATED_EXPLICIT_VR_LE:  # PS3.5 A.5: raw deflate, no zlib header
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = deflater.compress(data) + deflater.flush()
    return data


def streams_inflated(instance: Instance, ts: str) -> bool:
    """Whether converting ``instance`` to ``ts`` is inflating it: a deflated file's data
    set to Explicit VR Little Endian (PS3.5 A.5), sent from :func:`inflated`."""
    deflated = instance.transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LE
    return deflated and instance.dataset is None and ts == uids.EXPLICIT_VR_LE


def inflated(
    instance: Instance, limit: int = DEFAULT_MAX_INFLATED, where: str | None = None
) -> tuple[BinaryIO, int]:
    """(the deflated data set of ``instance``'s file inflated into an unnamed temporary
    file, rewound; its size): Explicit VR Little Endian (PS3.5 A.5), the caller closes
    it. Raises :class:`NotDicom` when it does not inflate or inflates to over
    ``limit`` bytes, ``OSError``."""
    with open_dataset(instance) as f:
        try:
            return inflate_to_temporary(f, limit, where)  # type: ignore[arg-type]
        except InflateError as exc:
            raise NotDicom(str(exc)) from None


#: The most a conversion holds (its data set, compressed frames counted decoded) unless
#: the caller's limit is higher (``serve --max-instance-size``).
MAX_CONVERTED = 1 << 30


def converted(
    instance: Instance,
    ts: str,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
    where: str | None = None,
    frame_limit: int | None = None,
) -> tuple[BinaryIO, int]:
    """The instance encoded in the uncompressed ``ts``, written into an unnamed temporary
    file (rewound; the caller closes it), and its size.

    Re-encoded streaming from an uncompressed or deflated file (:func:`reencoded`),
    a compressed file decoded a frame at a time (``decompression.decompressed``; RLE
    by pydicom, JPEG and JPEG 2000 with the pylibjpeg plugins). Else decoded whole
    by pydicom (a Dataset; 1 bit allocated; Pixel Data not as PS3.5 A.4 says).
    The SOP Instance UID is kept: only the transfer syntax changes (temporary files in
    ``where``, else the system's folder). Raises :class:`NotDicom` when the data set
    cannot be decoded or does not frame, or when it would hold (a frame decoded;
    through pydicom, the data set, frames decoded) more than ``inflated_limit`` bytes
    or :data:`MAX_CONVERTED`, whichever is more (review38mem
    D1: a 1 GiB instance moved to an Implicit-only SCP took 3.1 GiB; review39 #3: not
    below 1 GiB, or a 300 MiB tomosynthesis decoded could not go); ``frame_limit``, if
    given, is the most a frame decoded a frame at a time may hold instead. Decoded a
    frame at a time, all of its frames decoded are bounded so too, by its header, before
    one is decoded (review103 F3: a 5 KB JPEG 2000 instance of seven 512 MiB frames
    wrote 3.5 GiB into ``.tmp`` for each C-MOVE or WADO-RS answer of it).
    """
    if instance.dataset is None and ts in NATIVE:
        if instance.transfer_syntax in _REENCODED:
            return reencoded(instance, ts, inflated_limit, where)
        whole = max(inflated_limit, MAX_CONVERTED)
        try:  # (every frame counted, before one is decoded)
            _check_size(instance, ts, whole)
        except NotDicom:
            raise
        except Exception as exc:  # noqa: BLE001 - a header pydicom cannot read, values
            # that are no numbers: its sub-operation alone fails (review104 F3)
            raise NotDicom(f"cannot convert to {uids.uid_name(ts)}: {one_line(exc)}") from None
        limit = whole if frame_limit is None else frame_limit
        done = decompressed(instance, ts, NATIVE[ts], limit, where)
        if done is not None:
            return done
    from pydicom import dcmread
    from pydicom.filereader import read_dataset

    try:
        _check_size(instance, ts, max(inflated_limit, MAX_CONVERTED))
        if instance.dataset is not None:
            ds = copy.deepcopy(instance.dataset)
        elif instance.transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LE:
            spool, _size = inflated(instance, inflated_limit, where)
            with spool:
                ds = read_dataset(spool, False, True)
        elif instance.path is not None:
            ds = dcmread(instance.path, force=True)
        elif instance.opener is not None:
            with instance.opener() as f:
                ds = dcmread(f, force=True)
        else:
            raise NotDicom("no data set and no file to read it from")
        if "PixelData" in ds and uids.is_encapsulated(instance.transfer_syntax):
            if not hasattr(ds, "file_meta"):
                raise NotDicom("no file meta to tell the compressed transfer syntax")
            ds.file_meta.TransferSyntaxUID = uids.as_uid(instance.transfer_syntax)
            ds.decompress(generate_instance_uid=False)
        for _elem in ds.iterall():  # decode every element: its VR is needed to re-encode
            pass
        if (instance.transfer_syntax == uids.EXPLICIT_VR_BE) != (ts == uids.EXPLICIT_VR_BE):
            ds.walk(_swap_words)
        return encode_to_file(ds, ts, where)
    except NotDicom:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - decoders raise anything (a panic too)
        raise NotDicom(f"cannot convert to {uids.uid_name(ts)}: {one_line(exc)}") from None


#: What :func:`reencoded` converts from: the uncompressed, and the deflated once inflated.
_REENCODED = {*NATIVE, uids.DEFLATED_EXPLICIT_VR_LE}


def decodes(instance: Instance, ts: str) -> bool:
    """Whether converting ``instance`` to ``ts`` holds decoded pixels: a frame of its
    compressed Pixel Data (``decompression.py``), or, through pydicom, the whole data
    set (a Dataset, a target that is not native). A file re-encoded holds neither."""
    streams = instance.dataset is None and ts in NATIVE
    return not streams or instance.transfer_syntax not in _REENCODED


def reencoded(
    instance: Instance,
    ts: str,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
    where: str | None = None,
) -> tuple[BinaryIO, int]:
    """The data set of ``instance``'s file, uncompressed (or deflated: inflated first,
    up to ``inflated_limit`` bytes), re-encoded in the uncompressed ``ts`` element by
    element (``framing.reencoding``: bounded memory, whatever its size) into an unnamed
    temporary file in ``where`` (rewound; the caller closes it), and its size. Raises
    :class:`NotDicom` when it does not frame, ``OSError``."""

    def write(out: BinaryIO) -> int:
        if instance.transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LE:
            spool, size = inflated(instance, inflated_limit, where)
            with spool:
                return reencode(FileSource(file_pread(spool), size), 0, EXPLICIT, target, out)
        with open_dataset(instance) as f:
            source = FileSource(file_pread(f), instance.offset + instance.size)
            return reencode(source, instance.offset, NATIVE[instance.transfer_syntax], target, out)

    target = NATIVE[ts]
    return written(where, ts, write, instance.size)


def _check_size(instance: Instance, ts: str, limit: int) -> None:
    """NotDicom when converting ``instance`` would hold more than ``limit`` bytes: its
    data set, or, compressed, its frames decoded (read from its header alone)."""
    if instance.dataset is not None or instance.transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LE:
        return  # (in memory already; inflated within the limit)
    size = instance.size
    if uids.is_encapsulated(instance.transfer_syntax):
        from pydicom import dcmread

        if instance.opener is not None:
            with instance.opener() as opened:
                header = dcmread(opened, stop_before_pixels=True, force=True)
        elif instance.path is not None:
            header = dcmread(instance.path, stop_before_pixels=True, force=True)
        else:
            return
        frames = max(header_number(header, "NumberOfFrames", 1, ts), 1)
        samples = max(header_number(header, "SamplesPerPixel", 1, ts), 1)
        bits = max(header_number(header, "BitsAllocated", 8, ts), 8)
        rows = max(header_number(header, "Rows", 0, ts), 0)
        columns = max(header_number(header, "Columns", 0, ts), 0)
        size += frames * rows * columns * samples * bits // 8
    if size > limit:
        raise TooLargeToConvert(
            f"converting it to {uids.uid_name(ts)} would hold {size} bytes, over the limit"
            f" of {limit}: not converted"
        )


def encode_to_file(ds: Dataset, ts: str, where: str | None = None) -> tuple[BinaryIO, int]:
    """:func:`encode_dataset` into an unnamed temporary file (rewound) in folder
    ``where`` (None, or one that cannot take it: the system's) and its size."""
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    out = temporary_file(where)
    try:
        body = ds[0x00030000:] if len(ds.group_dataset(0x0002)) else ds
        if ts == uids.DEFLATED_EXPLICIT_VR_LE:  # PS3.5 A.5: raw deflate, no zlib header
            out.write(encode_dataset(body, ts))
        else:
            fp = DicomFileLike(out)
            fp.is_little_endian = ts != uids.EXPLICIT_VR_BE
            fp.is_implicit_VR = ts == uids.IMPLICIT_VR_LE
            write_dataset(fp, body)
        size = out.tell()
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out, size


#: Word size of the VRs whose value pydicom keeps as raw bytes (PS3.5 Table 6.2-1).
_WORD_SIZE = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _swap_words(_ds: Dataset, elem: Any) -> None:
    """Swap byte order of OW/OF/OL/OD/OV values: pydicom writes their bytes as is."""
    width = _WORD_SIZE.get(str(elem.VR))
    value = elem.value
    if width is not None and isinstance(value, bytes | bytearray) and len(value) % width == 0:
        elem.value = byteswapped(value, width).tobytes()
