"""`dicomstore get` of compressed instances (PS3.4 C.4.3, PS3.8 9.3.2.2): the acceptor
picks one transfer syntax per presentation context, so each compressed syntax has a
context of its own per class (review34b F2). A Q/R SCP that does not transcode
(pynetdicom) sends each instance as stored; `dicomstore serve` sends the stored file
unchanged, so what arrives is bit for bit what was stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet
from tests.archive.archive_testlib import stored_dataset
from tests.conftest import free_port
from tests.services.query_testlib import serving_cli

from dicomstore.cli import main
from dicomstore.services.retrieve_scu import (
    GET_COMPRESSED_SYNTAXES,
    GET_STORAGE_CLASSES,
    GET_TRANSFER_SYNTAXES,
    get_contexts,
)

#: pydicom test files: CT, MR and SC in RLE, JPEG 2000 and JPEG baseline, and one
#: uncompressed CT, which still arrives uncompressed.
FILES = ["MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "693_J2KI.dcm"]
FILES += ["CT_small.dcm"]


def _paths() -> dict[str, Path]:
    """The files by SOP Instance UID."""
    paths = [Path(get_testdata_file(name)) for name in FILES]
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}


def _studies(paths: dict[str, Path]) -> str:
    read = (pydicom.dcmread(p, stop_before_pixels=True) for p in paths.values())
    return "\\".join(sorted({str(ds.StudyInstanceUID) for ds in read}))


def _get(capsys, port: int, aec: str, out: Path, studies: str) -> dict:
    argv = ["get", "127.0.0.1", str(port), "--aec", aec, "--log-level", "error", "--json"]
    assert main([*argv, "-od", str(out), "-k", f"StudyInstanceUID={studies}"]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_compressed_syntax_has_a_context_of_its_own() -> None:
    specs, roles = get_contexts()
    assert len(specs) == 128 and len(roles) == len(GET_STORAGE_CLASSES)
    # every class: one context of every syntax, uncompressed first
    assert [s for s in specs[1:] if s[1] == GET_TRANSFER_SYNTAXES] == [
        (c, GET_TRANSFER_SYNTAXES) for c in GET_STORAGE_CLASSES
    ]
    # then one per compressed syntax, the classes in order, as far as 128 go
    singles = specs[1 + len(GET_STORAGE_CLASSES) :]
    assert singles[: 8 * len(GET_COMPRESSED_SYNTAXES)] == [
        (c, (ts,)) for c in GET_STORAGE_CLASSES[:8] for ts in GET_COMPRESSED_SYNTAXES
    ]
    # a short list: every class gets them all, and `most` leaves room for others
    few, _ = get_contexts(sop_classes=GET_STORAGE_CLASSES[:3])
    assert len(few) == 1 + 3 * (1 + len(GET_COMPRESSED_SYNTAXES))
    assert len(get_contexts(most=100)[0]) == 100


@pytest.fixture
def pynetdicom_get_scp() -> Iterator[int]:
    """pynetdicom as a C-GET SCP that sends the files as read, in their own transfer
    syntax (it does not transcode): its port."""
    paths = _paths()

    def on_get(event):
        yield len(paths)
        for path in paths.values():
            yield 0xFF00, pydicom.dcmread(path)

    ae = AE(ae_title="PYQRSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    syntaxes = [*GET_TRANSFER_SYNTAXES]
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)]
    )
    try:
        yield port
    finally:
        server.shutdown()


def test_get_from_an_scp_that_does_not_transcode(pynetdicom_get_scp, capsys, tmp_path) -> None:
    paths = _paths()
    result = _get(capsys, pynetdicom_get_scp, "PYQRSCP", tmp_path, _studies(paths))
    assert (result["status"], result["completed"], result["failed"]) == ("0000", len(paths), 0)
    for uid, path in paths.items():
        got, sent = pydicom.dcmread(tmp_path / f"{uid}.dcm"), pydicom.dcmread(path)
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got.PixelData == sent.PixelData


def test_get_from_serve_bit_for_bit(capsys, tmp_path) -> None:
    paths = _paths()
    with serving_cli(tmp_path / "archive") as port:
        argv = ["send", "127.0.0.1", str(port), "--log-level", "error", "--progress", "off"]
        assert main([*argv, *map(str, paths.values())]) == 0
        capsys.readouterr()
        result = _get(capsys, port, "DICOMSTORE", tmp_path / "got", _studies(paths))
    assert (result["status"], result["completed"], result["failed"]) == ("0000", len(paths), 0)
    for uid, path in paths.items():
        assert stored_dataset(tmp_path / "got" / f"{uid}.dcm") == stored_dataset(path)
