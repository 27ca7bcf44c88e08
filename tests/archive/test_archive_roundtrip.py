"""Every pydicom test file goes through begin/write/commit and comes out bit-identical."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pytest
from archive_testlib import settled, stored_dataset
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomstore.archive import CANNOT_UNDERSTAND, DATASET_MISMATCH, SUCCESS, Archive
from dicomstore.archive.dicomfile import HeaderError, dataset_offset

#: Files pydicom ships broken on purpose: the value they end in is cut short.
TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}
#: Files whose data set is not encoded as their meta says (Implicit VR behind JPEG
#: Baseline): refused, since the stored meta would lie (archive/encoding.py).
MISENCODED = {"SC_rgb_jpeg.dcm": "data set is Implicit VR, context is Explicit VR LE (compressed)"}
_TS = {
    (True, True): "1.2.840.10008.1.2",
    (False, True): "1.2.840.10008.1.2.1",
    (False, False): "1.2.840.10008.1.2.2",
}


def _candidates() -> list[str]:
    files = []
    for name in sorted(get_testdata_files()):
        if os.path.isfile(name) and not name.endswith((".txt", ".json", ".dump", ".gz", ".icc")):
            files.append(name)
    return files


def _id(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("test_files") + 1 :]) if "test_files" in parts else path


def _as_received(path: str) -> tuple[bytes, str, object]:
    """(data set bytes, transfer syntax, header) as an SCU would send the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(path).read_bytes()
        try:
            offset = dataset_offset(io.BytesIO(raw))
        except HeaderError:
            offset = None
        ds = dcmread(path, force=True)
        if len(ds) == 0:
            pytest.skip("not a DICOM data set")
        ts = ds.file_meta.get("TransferSyntaxUID") if offset is not None else None
        if ts is None:  # no meta (or no transfer syntax in it): re-encode as pydicom read it
            implicit, little = ds.original_encoding
            ts = _TS[(bool(implicit), bool(little))]
            if offset is None:
                buffer = DicomBytesIO()
                buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
                write_dataset(buffer, ds)
                return buffer.getvalue(), ts, ds
        return raw[offset:], str(ts), ds


@pytest.mark.parametrize("path", _candidates(), ids=_id)
def test_pydicom_file_round_trip(path: str, tmp_path: Path) -> None:
    data, ts, ds = _as_received(path)
    sop_class = str(ds.get("SOPClassUID", ""))
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    if Path(path).name in TRUNCATED or Path(path).name in MISENCODED:
        expected = CANNOT_UNDERSTAND
    elif not sop_class or not sop_uid:
        expected = DATASET_MISMATCH  # DICOMDIRs and fragments: no SOP Common
    elif not ds.get("StudyInstanceUID") or not ds.get("SeriesInstanceUID"):
        expected = DATASET_MISMATCH  # no Study or Series IE (PS3.4 B.1.1)
    else:
        expected = SUCCESS
    chunks = [None, 16378, 997] + ([1] if len(data) < 4096 else [])
    for chunk in chunks:
        archive = Archive(tmp_path / f"chunk-{chunk}", fsync=False)
        ingest = archive.begin(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_uid,
            transfer_syntax_uid=ts,
            calling_ae="ROUNDTRIP",
            called_ae="ARCHIVE",
        )
        step = chunk or len(data)
        for start in range(0, len(data), step):
            ingest.write(data[start : start + step])
        outcome = ingest.commit()
        assert outcome.status == expected, (chunk, outcome)
        if expected != SUCCESS:
            assert outcome.error_comment
            if Path(path).name in MISENCODED:
                assert outcome.error_comment == MISENCODED[Path(path).name]
            assert outcome.path is None
            assert settled(archive)
            assert archive.instances() == []
            continue
        assert stored_dataset(outcome.path) == data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = dcmread(outcome.path)
        assert again.file_meta.TransferSyntaxUID == ts
        assert again.file_meta.MediaStorageSOPInstanceUID == sop_uid
        assert again.SOPInstanceUID == sop_uid
        assert archive.get_instance(sop_uid) == outcome.instance
        assert outcome.instance["file_size"] == outcome.path.stat().st_size
        archive.close()
