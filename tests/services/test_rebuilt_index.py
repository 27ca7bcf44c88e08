"""A rebuilt index makes no arrivals (review58 H1, archive/rebuild.py): after a
``reindex`` in place, or a restore of the files (their times reset, the index lost)
and a ``reindex``, a start forwards nothing again, to a rule configured before or
added after, and makes no study stable again (nor unstable); what arrives after
is forwarded and reported as ever, by a node whose clock is behind too (review59
M2)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from tests.archive.archive_testlib import Behind, dataset
from tests.archive.archive_testlib import store as store_in
from tests.services.forward_testlib import config, instance, serving, status, store, until
from tests.services.retrieve_testlib import destination

from dicomstore.archive import SUCCESS, Archive, fields
from dicomstore.archive.maintenance import run_reindex
from dicomstore.archive.reader import ArchiveReader
from dicomstore.services.arrivals import OtherArrivals
from dicomstore.services.server import Server
from dicomstore.services.stability import StudyStability
from dicomstore.services.stable_log import StableLog
from dicomstore.services.stable_search import stable_states

#: On both index engines (issue 17).
pytestmark = pytest.mark.usefixtures("index_engine")

STUDY = "1.2.78.1"
#: seconds of quiet time: not between two instances of one C-STORE, even loaded
QUIET = 1.0


def _instances(*numbers: int) -> list:
    return [instance(f"{STUDY}.1.{n}", study=STUDY) for n in numbers]


def _events(root: Path) -> list[str]:
    return [event.study_uid for event in StableLog(root).read()]


def _touch(root: Path) -> None:
    """Every stored file's time set to now (as a copy that does not keep them)."""
    now = time.time()
    for path in root.rglob("*.dcm"):
        os.utime(path, (now, now))


async def _caught_up(server: Server) -> None:
    """The events have read the index for the studies to wait for again (``catch_up``);
    forwarding's recovery ran before the server listened."""
    assert server.stability is not None and server.stability._catching_up is not None
    await server.stability._catching_up


def test_an_in_place_reindex_sends_nothing_again_and_makes_no_study_stable_again(
    tmp_path: Path,
) -> None:
    """review58 H1: the instances stored within the minute before went again (new
    queue entries: the key holds the arrival, which the reindex made the file's
    time), and the study's event ran again. The files' times are touched here
    (a copy in place), so that each would be new."""
    root = tmp_path / "archive"
    with destination("DEST") as dest:
        cfg = config(f"DEST=127.0.0.1:{dest.port}", stable_age=QUIET)

        async def first() -> None:
            async with serving(root, cfg) as server:
                await store(server.port, _instances(1, 2))
                await until(lambda: status(root, "DEST")["sent"] == 2 and _events(root) != [])

        async def again() -> None:
            async with serving(root, cfg) as server:
                await _caught_up(server)
                assert server.stability is not None and server.stability.pending == {}
                assert status(root, "DEST")["pending"] == 0

        asyncio.run(first())
        _touch(root)
        assert run_reindex(root, [], fsync=False) == 2
        asyncio.run(again())
    assert len(dest.received) == 2 and _events(root) == [STUDY]
    assert (status(root, "DEST")["sent"], status(root, "DEST")["pending"]) == (2, 0)


def test_a_restore_and_a_reindex_send_nothing_to_rules_old_or_new_nor_make_studies_stable(
    tmp_path: Path,
) -> None:
    """review58 H1: the storage restored by a copy that keeps no times, the index lost
    and rebuilt by ``reindex``: the whole archive went again to every destination (to
    RESEARCH, added after it was stored, too), the study was stable again, its command
    run again. Now nothing goes, neither to a rule added after the restore (LATER);
    the study is stable as its event said; a new instance goes where it should."""
    root, restored = tmp_path / "archive", tmp_path / "restored"
    with destination("DEST") as dest:
        at = f"127.0.0.1:{dest.port}"
        before = [f"DEST={at}", f"STABLE={at};when=stable"]
        rules = [*before, f"RESEARCH={at}", f"LATER={at}"]
        every = ("DEST", "STABLE", "RESEARCH", "LATER")

        async def first() -> None:
            async with serving(root, config(*before, stable_age=QUIET)) as server:
                await store(server.port, _instances(1, 2))
                await until(lambda: [status(root, ae)["sent"] for ae in every[:2]] == [2, 2])
            async with serving(root, config(*rules[:3], stable_age=QUIET)):
                pass  # (RESEARCH: configured after the store, before the restore)

        async def after() -> None:
            async with serving(restored, config(*rules, stable_age=QUIET)) as server:
                await _caught_up(server)
                assert server.stability is not None and server.stability.pending == {}
                assert [status(restored, ae)["pending"] for ae in every] == [0, 0, 0, 0]
                await store(server.port, _instances(3))
                await until(
                    lambda: (
                        _events(restored) == [STUDY, STUDY]
                        and all(status(restored, ae)["pending"] == 0 for ae in every)
                        and sum(status(restored, ae)["sent"] for ae in every) >= 8
                    )
                )

        asyncio.run(first())
        (event,) = StableLog(root).read()
        shutil.copytree(root, restored, copy_function=shutil.copy)  # (no times kept)
        for suffix in ("", "-wal", "-shm"):  # (the index lost: PostgreSQL's is new)
            (restored / f"index.sqlite{suffix}").unlink(missing_ok=True)
        _touch(restored)
        assert run_reindex(restored, [], fsync=False) == 2
        assert stable_states(ArchiveReader(restored), [STUDY]) == {STUDY: event.stable_at}
        asyncio.run(after())
    sent = {ae: status(restored, ae)["sent"] for ae in every}
    assert sent == {"DEST": 3, "STABLE": 3, "RESEARCH": 1, "LATER": 1}
    assert len(dest.received) == 8


def test_a_store_after_a_reindex_by_a_node_whose_clock_is_behind_is_an_arrival(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review59 M2: the mark of the rebuild was a time, the latest file's: a node whose
    clock was behind the host that ran ``reindex`` (a shared index) stored instances
    at or before it, never forwarded by recovery or the other nodes' arrivals nor
    waited for to be stable. Now they are arrivals; the rebuilt ones are not."""
    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        old = dataset(f"{STUDY}.1.1", study=STUDY, series=f"{STUDY}.1")
        assert store_in(archive, old, sop_uid=f"{STUDY}.1.1").status == SUCCESS
        with archive.index.lock:  # (the index lost: on either engine)
            archive.index.begin()
            archive.index.clear()
            archive.index.commit()
    _touch(root)
    assert run_reindex(root, [], fsync=False) == 1
    monkeypatch.setattr(fields, "datetime", Behind)
    with Archive(root, fsync=False) as node:
        new = dataset("1.2.78.2.1.1", study="1.2.78.2", series="1.2.78.2.1")
        assert store_in(node, new, sop_uid="1.2.78.2.1.1").status == SUCCESS
    reader = ArchiveReader(root)
    stability = StudyStability(reader, 5, fsync=False)
    assert [found[0] for found in stability._unreported()] == ["1.2.78.2"]
    arrivals = OtherArrivals(reader, lambda rows: None, clock=lambda: time.time() - 60)
    assert [row["sop_instance_uid"] for row in arrivals.look()] == ["1.2.78.2.1.1"]
