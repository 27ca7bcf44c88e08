"""What the forwarding tests share (issue 16): a server with forwarding rules on an
archive, instances sent to it through its C-STORE door, and waits on conditions."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from tests.services.test_scu_support import uid_of

sys.path.insert(0, str(Path(__file__).parent.parent / "http"))
from http_testlib import make_dataset  # noqa: E402

from dicomstore.archive import Archive  # noqa: E402
from dicomstore.services.forward_queue import queue_status  # noqa: E402
from dicomstore.services.forward_rules import parse_rule  # noqa: E402
from dicomstore.services.scu_send import send  # noqa: E402
from dicomstore.services.server import Server, ServerConfig  # noqa: E402
from dicomstore.services.serving import running  # noqa: E402

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
#: seconds: quick retries, and a quick quiet time for study-complete events
RETRY = {"forward_retry_delay": 0.02, "forward_retry_max": 0.1}


def instance(sop: str, *, study: str = "1.2.77.1", **kwargs: Any) -> Dataset:
    """A small image of ``study`` (series ``study.1`` unless given) in Explicit VR LE."""
    kwargs.setdefault("series", f"{study}.1")
    ds = make_dataset(sop, study=study, frames=1, **kwargs)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def config(*rules: str, **options: Any) -> ServerConfig:
    """A server on a free port forwarding by ``rules``, retrying quickly, without
    study-complete events unless ``stable_age`` is given."""
    base = ServerConfig(port=0, forward=tuple(parse_rule(r) for r in rules), stable_age=0)
    return dataclasses.replace(base, **{**RETRY, **options})


@asynccontextmanager
async def serving(root: Path, cfg: ServerConfig) -> AsyncIterator[Server]:
    """The archive at ``root`` served with ``cfg`` (``serving.running``)."""
    archive = Archive(root, fsync=False)
    try:
        async with running(archive, cfg) as server:
            yield server
    finally:
        archive.close()


async def store(
    port: int, items: Iterable[Any], calling_ae: str = "MODALITY", *, every: bool = True
) -> set[str]:
    """C-STORE data sets or files to our server; the SOP Instance UIDs stored (with
    ``every``, each must be)."""
    results = await send(
        "127.0.0.1", port, list(items), called_ae="DICOMSTORE", calling_ae=calling_ae
    )
    if every:
        assert all(r.stored for r in results), [(r.outcome, r.status) for r in results]
    return {str(r.sop_instance_uid) for r in results if r.stored}


def status(root: Path, destination: str) -> dict[str, Any]:
    """The queue's counts for ``destination`` (``dicomstore stats``'s source)."""
    for row in queue_status(root) or []:
        if row["destination"] == destination:
            return row
    return {"pending": 0, "sent": 0, "failed": 0, "skipped": 0, "last_error": None}


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until ``condition()`` holds (polled with a deadline: the queue is a file
    another thread writes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def received_counts(folder: Path) -> Counter[str]:
    """How many files a receiver wrote per SOP Instance UID."""
    return Counter(uid_of(p) for p in folder.rglob("*") if p.is_file())
