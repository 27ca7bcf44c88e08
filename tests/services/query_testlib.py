"""An archive to query (issue 15): three patients, four studies, five series, nine instances."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from tests.archive.archive_testlib import CT, MR, dataset, store
from tests.conftest import free_port, serve_command, wait_listening

from dicomstore.archive import Archive

PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"

#: (patient id, name, study uid, date, series uid, modality, instances)
LAYOUT = [
    ("PID1", "Doe^Jane", "1.2.9.1", "20240102", "1.2.9.1.1", "CT", 3),
    ("PID1", "Doe^Jane", "1.2.9.1", "20240102", "1.2.9.1.2", "MR", 2),
    ("PID1", "Doe^Jane", "1.2.9.2", "20230615", "1.2.9.2.1", "CT", 1),
    ("PID2", "Smith^John", "1.2.9.3", "20240310", "1.2.9.3.1", "US", 2),
    ("PID3", "Müller^Hans", "1.2.9.4", "20220101", "1.2.9.4.1", "CT", 1),
]

#: Attributes the index does not hold, per study (C-FIND reads them from a header).
HEADER_ONLY: dict[str, dict[int, tuple[str, str]]] = {
    "1.2.9.1": {0x00101010: ("AS", "042Y")},  # Patient's Age
    "1.2.9.4": {0x00101001: ("PN", "Müller^Johann")},  # Other Patient Names, ISO_IR 100
}
#: Study Time per study (1.2.9.4 has none), for time range matching.
STUDY_TIMES = {"1.2.9.1": "093000", "1.2.9.2": "141500", "1.2.9.3": "2359"}


def sop_uids(series: str) -> list[str]:
    count = next(n for *_, uid, _m, n in LAYOUT if uid == series)
    return [f"{series}.{n + 1}" for n in range(count)]


def fill(root: Path) -> None:
    """Store LAYOUT into a new archive at ``root`` (closed again)."""
    archive = Archive(root, fsync=False)
    try:
        for pid, name, study, date, series, modality, _count in LAYOUT:
            for uid in sop_uids(series):
                extra = {0x00080020: ("DA", date), **HEADER_ONLY.get(study, {})}
                if study in STUDY_TIMES:
                    extra[0x00080030] = ("TM", STUDY_TIMES[study])
                extra[0x00080008] = ("CS", f"ORIGINAL\\PRIMARY\\{uid[-5:]}")  # ImageType
                extra[0x00080070] = ("LO", f"Maker {series}")  # Manufacturer
                if not name.isascii():
                    extra[0x00080005] = ("CS", "ISO_IR 100")
                data = dataset(
                    uid,
                    sop_class=MR if modality == "MR" else CT,
                    study=study,
                    series=series,
                    patient_id=pid,
                    patient_name=name,
                    modality=modality,
                    extra=extra,
                )
                outcome = store(
                    archive, data, sop_uid=uid, sop_class=MR if modality == "MR" else CT
                )
                assert outcome.status == 0, outcome
    finally:
        archive.close()


class Audit:
    """An audit sink keeping the Q/R records: C-FIND (query), C-MOVE and C-GET (retrieve)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def association(self, record: dict[str, Any]) -> None:
        pass

    def instance(self, record: dict[str, Any]) -> None:
        pass

    def query(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def retrieve(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def identifier(level: str, **keys: Any) -> Dataset:
    """A Q/R Identifier: Query/Retrieve Level and the keys given by keyword."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@contextmanager
def serving_cli(root: Path) -> Iterator[int]:
    """`dicomstore serve --fsync off` on the archive at ``root``: its port."""
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, root, "--fsync", "off"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
