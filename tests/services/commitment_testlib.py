"""What the Storage Commitment tests share (issue 16, PS3.4 J.3): an archive with
stored, altered and missing instances, the Action Information of a request, and
pynetdicom as the Storage Commitment SCU's report listener (an SCU accepting an
association on which the archive is SCP by role selection)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from tests.archive.archive_testlib import CT, dataset, store

from dicomstore import uids
from dicomstore.archive import Archive

SC = uids.STORAGE_COMMITMENT_PUSH
SC_INSTANCE = uids.STORAGE_COMMITMENT_PUSH_INSTANCE
#: stored and intact
HELD = ["1.2.8.1", "1.2.8.2"]
#: stored, then a byte of its file changed (same size: the digest tells)
ALTERED = "1.2.8.3"
#: never stored
MISSING = "1.2.8.9"


def fill(root: Path) -> dict[str, Path]:
    """An archive at ``root`` with HELD and ALTERED stored, ALTERED's file changed
    afterwards; the file of each, by SOP Instance UID."""
    archive = Archive(root, fsync=False)
    paths = {}
    try:
        for uid in (*HELD, ALTERED):
            outcome = store(archive, dataset(uid, pixels=256), sop_uid=uid)
            assert outcome.status == 0 and outcome.path is not None
            paths[uid] = outcome.path
    finally:
        archive.close()
    data = bytearray(paths[ALTERED].read_bytes())
    data[-5] ^= 0xFF
    paths[ALTERED].write_bytes(bytes(data))
    return paths


def action_information(transaction: str, *sop_uids: str, sop_class: str = CT) -> Dataset:
    """A Storage Commitment Request (PS3.4 Table J.3-1), for pynetdicom to send."""
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for uid in sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


@dataclass
class Report:
    """One N-EVENT-REPORT received: its Event Type ID and Event Information."""

    event_type: int
    info: Dataset
    #: the association's requestor was the archive (a new association)
    new_association: bool

    @property
    def committed(self) -> list[str]:
        return [str(i.ReferencedSOPInstanceUID) for i in self.info.get("ReferencedSOPSequence", [])]

    @property
    def failed(self) -> dict[str, int]:
        return {
            str(i.ReferencedSOPInstanceUID): int(i.FailureReason)
            for i in self.info.get("FailedSOPSequence", [])
        }


@dataclass
class Reports:
    """The reports a pynetdicom SCU received, with an event to wait on."""

    received: list[Report] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    status: int = 0x0000
    #: pynetdicom's threads answering them (each sends its N-EVENT-REPORT-RSP, then ends)
    answering: list[threading.Thread] = field(default_factory=list)

    def on_report(self, event: Any) -> tuple[int, None]:
        rq = event.request
        new = event.assoc.is_acceptor
        self.answering.append(threading.current_thread())
        self.received.append(Report(int(rq.EventTypeID), event.event_information, new))
        self.arrived.set()
        return self.status, None

    def wait(self, count: int = 1, timeout: float = 30) -> list[Report]:
        """The reports once ``count`` have arrived (polled with a deadline)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            self.arrived.wait(0.1)
            self.arrived.clear()
        assert len(self.received) >= count, f"{len(self.received)} of {count} reports"
        return self.received

    def answered(self, timeout: float = 30) -> None:
        """Until every N-EVENT-REPORT-RSP is on its way: the handler returns before
        pynetdicom sends it (an A-RELEASE-RQ queued before it, the archive never
        hears the answer)."""
        for thread in self.answering:
            thread.join(timeout)
            assert not thread.is_alive(), "an N-EVENT-REPORT-RSP was never sent"


@contextmanager
def report_listener(
    ae_title: str = "MODALITY", port: int = 0, syntaxes: list[str] | None = None
) -> Iterator[tuple[int, Reports]]:
    """pynetdicom accepting the archive's association for a report (SCP role
    proposed by the archive, accepted; in ``syntaxes``, else pynetdicom's), on ``port``
    (0: one free): its port and what it received."""
    reports = Reports()
    ae = AE(ae_title=ae_title)
    if syntaxes:
        ae.add_supported_context(SC, syntaxes, scu_role=False, scp_role=True)
    else:
        ae.add_supported_context(SC, scu_role=False, scp_role=True)
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.on_report)],
    )
    try:
        yield server.server_address[1], reports
    finally:
        server.shutdown()


def settled(server: Any, timeout: float = 20) -> bool:
    """Poll (with a deadline) until ``server`` (a ServerThread) has no request
    accepted and not reported; True if so."""
    commitments = server.server.commitments
    assert commitments is not None
    deadline = time.monotonic() + timeout
    while commitments.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    return not commitments.pending
