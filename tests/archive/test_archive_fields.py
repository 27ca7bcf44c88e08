"""Reading pydicom's state while another thread is still importing pydicom (review35b
F1): a freshly started server answered 0110 to valid instances committed at once,
the first ones whose values need pydicom (a non-ASCII name), with "partially
initialized module 'pydicom.config' has no attribute 'settings'"."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from tests.conftest import free_port, serve_command, wait_listening

from dicomstore.archive import fields
from dicomstore.services import sources


def test_a_module_still_being_imported_is_read_as_not_loaded(monkeypatch) -> None:
    partial = types.ModuleType("pydicom.config")  # (what another thread's import shows)
    monkeypatch.setitem(sys.modules, "pydicom.config", partial)
    assert fields.validating() is False
    monkeypatch.setitem(sys.modules, "pydicom.dataset", types.ModuleType("pydicom.dataset"))
    assert sources.is_dataset(object()) is False


def test_a_fresh_server_stores_the_first_instances_that_need_pydicom(tmp_path: Path) -> None:
    """Nine instances whose Patient's Name only pydicom decodes (ISO_IR 100), sent with
    send's window of 16 into a server that has not loaded pydicom: all 0000."""
    folder = tmp_path / "na"
    folder.mkdir()
    for n in range(9):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "MÜLLER^JÖRG"
        ds.PatientID = f"NA{n // 3}"
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.7777.{n // 3}"
        ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.9.7777.{n // 3}.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7777.{n // 3}.1.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{n}.dcm")
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, tmp_path / "store", "--fsync", "off"),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_listening(port, proc)
        report = tmp_path / "report.jsonl"
        command = [*serve_command(port, tmp_path)[:3], "send", "127.0.0.1", str(port)]
        done = subprocess.run(
            [*command, str(folder), "--report", str(report)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    statuses = [json.loads(line).get("status") for line in report.read_text().splitlines()]
    assert done.returncode == 0 and statuses == [0] * 9, (done.stdout, err)
    assert "partially initialized" not in err
