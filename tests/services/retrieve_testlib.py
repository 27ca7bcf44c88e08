"""What the C-MOVE tests share (issue 15): a destination Storage SCP in this process
(pynetdicom) that counts, blocks or aborts on demand, and the data set bytes of files."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from tests.conftest import dcmtk_storescp, free_port
from tests.services.query_testlib import serving_cli
from tests.services.test_scu_support import dataset_bytes

__all__ = [
    "Destination",
    "dataset_bytes",
    "destination",
    "pynetdicom_move",
    "serving_to_storescp",
]


@dataclass
class Destination:
    """A pynetdicom Storage SCP: what it received, and knobs for the next C-STOREs."""

    port: int = 0
    received: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    #: abort the association when this many instances have arrived
    abort_after: int | None = None
    #: set when a C-STORE arrives; the handler then waits for ``release`` (if given)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event | None = None
    #: the statuses of the next C-STOREs (then 0000); one that is not 0000 stores nothing
    answers: list[int] = field(default_factory=list)
    #: once this many are stored, the next C-STORE waits for ``resume`` (set ``holding``)
    hold_at: int | None = None
    holding: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)

    def on_store(self, event) -> int:
        rq = event.request
        self.arrived.set()
        if self.release is not None:
            self.release.wait(30)
        if self.hold_at is not None and len(self.received) == self.hold_at:
            self.holding.set()
            self.resume.wait(30)
        if self.answers:
            return self.answers.pop(0)
        self.received.append(
            (
                rq.AffectedSOPInstanceUID,
                rq.MoveOriginatorApplicationEntityTitle,
                rq.MoveOriginatorMessageID,
            )
        )
        if self.abort_after is not None and len(self.received) >= self.abort_after:
            event.assoc.abort()
        return 0x0000


@contextmanager
def destination(
    ae_title: str = "DEST",
    *,
    require_called_aet: bool = False,
    classes: tuple[str, ...] | None = None,
    **knobs,
) -> Iterator[Destination]:
    """A pynetdicom Storage SCP on the ``port`` knob, else a free port (``knobs``:
    :class:`Destination` fields); ``require_called_aet``: it rejects an
    association called another AE title; ``classes``: the only SOP classes it takes."""
    dest = Destination(**knobs)
    ae = AE(ae_title=ae_title)
    ae.require_called_aet = require_called_aet
    ae.supported_contexts = [
        c for c in AllStoragePresentationContexts if classes is None or c.abstract_syntax in classes
    ]
    server = ae.start_server(
        ("127.0.0.1", dest.port), block=False, evt_handlers=[(evt.EVT_C_STORE, dest.on_store)]
    )
    dest.port = server.server_address[1]
    try:
        yield dest
    finally:
        if dest.release is not None:
            dest.release.set()
        dest.resume.set()
        server.shutdown()


def pynetdicom_move(
    port: int, model: str, ds: Dataset, move_aet: str, calling: str = "MOVER"
) -> list[tuple[int, Dataset, Dataset | None]]:
    """Every (status, response, identifier) of one C-MOVE by pynetdicom."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMSTORE")
    assert assoc.is_established
    try:
        return [(rsp.Status, rsp, ident) for rsp, ident in assoc.send_c_move(ds, move_aet, model)]
    finally:
        assoc.release()


@contextmanager
def serving_to_storescp(
    root: Path, received: Path, out: Any = subprocess.DEVNULL, *storescp: str
) -> Iterator[int]:
    """`dicomstore serve --fsync off` on the archive at ``root`` (its output to
    ``out``), DCMTK storescp (``storescp`` options) its move destination STORESCP
    storing into ``received``: its port."""
    dest_port = free_port()
    with dcmtk_storescp(dest_port, received, *storescp, "--aetitle", "STORESCP"):
        destination = f"STORESCP=127.0.0.1:{dest_port}"
        with serving_cli(root, "--move-destination", destination, out=out) as port:
            yield port


def read_tree(root: Path) -> dict[str, bytes]:
    """The data set bytes of every file under ``root``, by file name."""
    return {p.name: dataset_bytes(p) for p in sorted(root.rglob("*")) if p.is_file()}
