"""Re-encoding what the SCU sends when the SCP accepts none of its transfer syntaxes
(``send --convert``): a data set encoded in another uncompressed syntax (PS3.5
A.1-A.5), decompressing encapsulated Pixel Data first (pydicom's decoders)."""

from __future__ import annotations

import array
import copy
import zlib
from typing import TYPE_CHECKING, Any

from dicomstore import uids
from dicomstore.services.sources import Instance, NotDicom, one_line

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


def converted(instance: Instance, ts: str) -> bytes:
    """The instance decoded with pydicom and encoded in the uncompressed ``ts``.

    Decompresses encapsulated pixel data (pydicom's RLE decoder; JPEG and
    JPEG 2000 need the pylibjpeg plugins).  The SOP Instance UID is kept:
    only the transfer syntax changes.  Raises :class:`NotDicom` when the
    data set cannot be decoded.
    """
    from pydicom import dcmread

    try:
        if instance.dataset is not None:
            ds = copy.deepcopy(instance.dataset)
        elif instance.path is not None:
            ds = dcmread(instance.path, force=True)
        elif instance.opener is not None:
            with instance.opener() as f:
                ds = dcmread(f, force=True)
        else:
            raise NotDicom("no data set and no file to read it from")
        source = uids.as_uid(instance.transfer_syntax)
        if "PixelData" in ds and source.is_encapsulated:
            if not hasattr(ds, "file_meta"):
                raise NotDicom("no file meta to tell the compressed transfer syntax")
            ds.file_meta.TransferSyntaxUID = source
            ds.decompress(generate_instance_uid=False)
        for _elem in ds.iterall():  # decode every element: its VR is needed to re-encode
            pass
        if (instance.transfer_syntax == uids.EXPLICIT_VR_BE) != (ts == uids.EXPLICIT_VR_BE):
            ds.walk(_swap_words)
        return encode_dataset(ds, ts)
    except NotDicom:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise anything
        raise NotDicom(f"cannot convert to {uids.uid_name(ts)}: {one_line(exc)}") from None


#: Word size of the VRs whose value pydicom keeps as raw bytes (PS3.5 Table 6.2-1).
_WORD_SIZE = {"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}


def _swap_words(_ds: Dataset, elem: Any) -> None:
    """Swap byte order of OW/OF/OL/OD/OV values: pydicom writes their bytes as is."""
    code = _WORD_SIZE.get(str(elem.VR))
    value = elem.value
    if code is not None and isinstance(value, bytes | bytearray):
        words = array.array(code)
        if len(value) % words.itemsize == 0:
            words.frombytes(value)
            words.byteswap()
            elem.value = words.tobytes()
