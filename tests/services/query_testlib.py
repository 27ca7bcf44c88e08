"""An archive to query (issue 15): three patients, four studies, five series, nine instances;
`dicomstore serve` on it; pynetdicom FIND SCPs: one that waits for a C-CANCEL-RQ, one
whose matches are large."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from tests.archive.archive_testlib import CT, MR, dataset, dcm_files, store, stored_dataset
from tests.conftest import ServerThread, free_port, serve_command, wait_listening

from dicomstore.archive import Archive
from dicomstore.services.server import ServerConfig

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


def stored_datasets(root: Path) -> dict[str, bytes]:
    """The data set bytes of each instance stored under ``root``, by SOP Instance UID."""
    return {
        str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): stored_dataset(path)
        for path in dcm_files(root)
    }


class Audit:
    """An audit sink keeping the Q/R records, C-FIND (query), C-MOVE and C-GET
    (retrieve), and the Storage Commitment ones (commitment)."""

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

    def commitment(self, record: dict[str, Any]) -> None:
        self.records.append(record)


def identifier(level: str, **keys: Any) -> Dataset:
    """A Q/R Identifier: Query/Retrieve Level and the keys given by keyword."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@contextmanager
def audited_server(root: Path) -> Iterator[tuple[ServerThread, Audit]]:
    """Our Server in a thread on the archive at ``root``, and its audit records."""
    archive = Archive(root, fsync=False)
    audit = Audit()
    try:
        with ServerThread(ServerConfig(port=0), archive, audit=audit) as srv:
            yield srv, audit
    finally:
        archive.close()


@contextmanager
def serving_cli(root: Path, *extra: str, out: Any = subprocess.DEVNULL) -> Iterator[int]:
    """`dicomstore serve --fsync off` (and ``extra`` options) on the archive at
    ``root``, its output (and log) to ``out``: its port."""
    port = free_port()
    proc = subprocess.Popen(
        serve_command(port, root, "--fsync", "off", *extra),
        stdout=out,
        stderr=subprocess.STDOUT if out is not subprocess.DEVNULL else out,
    )
    try:
        wait_listening(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


@contextmanager
def serving_layout(root: Path) -> Iterator[int]:
    """`dicomstore serve` on a new archive at ``root`` holding LAYOUT: its port."""
    fill(root)
    with serving_cli(root) as port:
        yield port


class _FindSCP:
    """A pynetdicom Study Root and Patient Root FIND SCP running while in ``with``
    (its port), answering by :meth:`handle`; ``aborted`` once the association ends
    by an A-ABORT (either side's) or the connection's loss."""

    def __init__(self, ae_title: str) -> None:
        self.aborted = threading.Event()
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(STUDY_ROOT)
        self.ae.add_supported_context(PATIENT_ROOT)

    def handle(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        raise NotImplementedError

    def __enter__(self) -> int:
        server = self.ae.start_server(
            ("127.0.0.1", 0),
            block=False,
            evt_handlers=[
                (evt.EVT_C_FIND, self.handle),
                (evt.EVT_ABORTED, lambda _event: self.aborted.set()),
            ],
        )
        self.server = server
        return server.server_address[1]

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


class WaitingSCP(_FindSCP):
    """A FIND SCP that sends one match, then waits (at most 10 s) for a C-CANCEL-RQ:
    FE00 if one came, else a second match and 0000."""

    def __init__(self) -> None:
        super().__init__("WAITING")
        self.cancelled = threading.Event()

    def handle(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in (1, 2):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.3.{n}"
            yield 0xFF00, ds
            deadline = time.monotonic() + 10
            cancelled = False  # (is_cancelled is True once: it forgets the C-CANCEL-RQ)
            while not cancelled and time.monotonic() < deadline:
                cancelled = event.is_cancelled
                time.sleep(0.005)
            if cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return


class BulkySCP(_FindSCP):
    """A FIND SCP answering ``count`` matches, each Identifier carrying a private OB
    value of ``size`` bytes, then 0000; ``sent`` once it gave its last match."""

    def __init__(self, count: int, size: int) -> None:
        super().__init__("BULKY")
        self.count = count
        self.value = b"\0" * size
        self.sent = threading.Event()

    def handle(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for n in range(self.count):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.3.{n + 1}"
            ds.add_new(0x00091010, "LO", "BULKY")  # private creator of (0009,10xx)
            ds.add_new(0x00091001, "OB", self.value)
            yield 0xFF00, ds
        self.sent.set()
        yield 0x0000, None
