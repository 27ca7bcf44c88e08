"""Several nodes on one archive (issue 17): archives open on one root, each with its
own index connection (as ``dicomstore serve`` processes are), storing the same SOP
Instance UID at the same moment; a starting node and the temporaries of the others;
``check`` and ``reindex`` beside running nodes. Run on both engines (conftest)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
from archive_testlib import (
    EXPLICIT_LE,
    dataset,
    dcm_files,
    digest_of,
    race,
    settled,
    store,
    stored_dataset,
)

from dicomstore.archive import SUCCESS, WARNING_COERCION, Archive, StoreOutcome, nodes
from dicomstore.archive.maintenance import run_check, run_reindex
from dicomstore.archive.recovery import ArchiveBusyError

NODES = 3
ROUNDS = 4


def _uid(n: int) -> str:
    return f"1.2.3.4.5.6.{n}"


def _race(nodes: list[Archive], payloads: list[bytes], uid: str) -> list[StoreOutcome]:
    """Node ``i`` receives ``payloads[i]``; all commit at the same moment."""
    return race(nodes, payloads, uid)


def _nodes(root: Path, **options: object) -> list[Archive]:
    return [Archive(root, fsync=False, **options) for _ in range(NODES)]  # type: ignore[arg-type]


def _close(nodes: list[Archive]) -> None:
    for node in nodes:
        node.close()


def _one_file_one_row(node: Archive, uid: str) -> bytes:
    """The data set of the one file of ``uid``: it hashes to its one row's digest."""
    (path,) = [p for p in dcm_files(node.root) if ".tmp" not in p.parts and uid in p.name]
    (row,) = node.instances(sop_instance_uid=uid)
    data = stored_dataset(path)
    assert digest_of(data) == row["digest"]
    assert row["path"] == path.relative_to(node.root).as_posix()
    return data


def test_nodes_storing_one_identical_instance_store_it_once(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path / "root")
    try:
        for n in range(ROUNDS):
            data = dataset(_uid(n))
            outcomes = _race(nodes, [data] * NODES, _uid(n))
            assert {o.status for o in outcomes} == {SUCCESS}
            assert _one_file_one_row(nodes[0], _uid(n)) == data
        assert nodes[1].check() == []
        assert all(settled(node) for node in nodes)
    finally:
        _close(nodes)


def test_nodes_storing_different_versions_keep_the_first_committed(tmp_path: Path) -> None:
    nodes = _nodes(tmp_path / "root")
    try:
        for n in range(ROUNDS):
            versions = [dataset(_uid(n), patient_name=f"Node{i}") for i in range(NODES)]
            outcomes = _race(nodes, versions, _uid(n))
            statuses = Counter(o.status for o in outcomes)
            assert statuses == {SUCCESS: 1, WARNING_COERCION: NODES - 1}
            (winner,) = [i for i, o in enumerate(outcomes) if o.status == SUCCESS]
            assert _one_file_one_row(nodes[0], _uid(n)) == versions[winner]
        assert nodes[2].check() == []
    finally:
        _close(nodes)


@pytest.mark.parametrize("moving", [False, True], ids=["same-place", "moving"])
def test_nodes_replacing_at_once_leave_the_file_of_the_winning_row(
    tmp_path: Path, moving: bool
) -> None:
    nodes = _nodes(tmp_path / "root", on_duplicate="replace")
    try:
        for n in range(ROUNDS):
            versions = [
                dataset(
                    _uid(n),
                    patient_name=f"Node{i}",
                    study=f"1.2.3.{i + 1 if moving else 1}",
                    series=f"1.2.3.{i + 1 if moving else 1}.1",
                )
                for i in range(NODES)
            ]
            outcomes = _race(nodes, versions, _uid(n))
            assert {o.status for o in outcomes} == {SUCCESS}
            assert _one_file_one_row(nodes[0], _uid(n)) in versions
        assert nodes[1].check() == []
    finally:
        _close(nodes)


def test_a_starting_node_settles_dead_nodes_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    live = Archive(root, fsync=False)
    dead = Archive(root, fsync=False)
    try:
        receiving = live.begin(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=_uid(1),
            transfer_syntax_uid=EXPLICIT_LE,
        )
        receiving.write(dataset(_uid(1)))
        left = dead.begin(
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=_uid(2),
            transfer_syntax_uid=EXPLICIT_LE,
        )
        left.write(dataset(_uid(2))[:40])
        dead._node.close()  # the process died: its lock went, its folder stays
        assert left.temp.exists()
        with Archive(root, fsync=False) as starting:
            assert not dead.tmp_dir.exists()  # settled and emptied
            assert receiving.temp.exists()  # a live node's: untouched
            assert receiving.commit().status == SUCCESS
            assert [r["sop_instance_uid"] for r in starting.instances()] == [_uid(1)]
    finally:
        dead.close()
        live.close()


def test_check_beside_nodes_reports_only_what_stays_wrong(tmp_path: Path, monkeypatch) -> None:
    """(One problem per hold of the index write lock here: review50 #7, the lock held
    over them all stalled every node's stores, A700.)"""
    from dicomstore.archive import maintenance
    from dicomstore.archive.index import Index

    monkeypatch.setattr(maintenance, "RECHECK_HELD", 1)
    holds = []
    real_begin = Index.begin
    monkeypatch.setattr(Index, "begin", lambda self, *a: holds.append(1) or real_begin(self, *a))
    root = tmp_path / "root"
    with Archive(root, fsync=False) as node:
        assert store(node, dataset(_uid(1)), sop_uid=_uid(1)).status == SUCCESS
        stray = root / "1.2.3.4" / "1.2.3.4.5" / "stray.dcm"
        stray.write_bytes(b"put here by hand")
        # a file a delete has committed and is unlinking (its removal intent links it)
        going = root / "1.2.3.4" / "1.2.3.4.5" / "going.dcm"
        going.write_bytes(b"deleted, not yet unlinked")
        os.link(going, node.tmp_dir / "x=going.rm")
        index = None if node.index.engine.dialect == "sqlite" else node.index.engine.url
        holds.clear()
        assert run_check(root, fsync=False, index=index) == [
            "1.2.3.4/1.2.3.4.5/stray.dcm: not indexed"
        ]
        assert len(holds) == 2  # (stray, going: each looked at again on its own)


def test_check_beside_nodes_reports_the_file_a_dead_node_left(tmp_path: Path) -> None:
    """review50 #10: renamed into place, never committed, its trace in the dead node's
    folder: a second name, taken for a removal intent of a delete in progress."""
    root = tmp_path / "root"
    with Archive(root, fsync=False) as node:
        assert store(node, dataset(_uid(1)), sop_uid=_uid(1)).status == SUCCESS
        dead = Archive(root, fsync=False)
        orphan = root / "1.2.3.4" / "1.2.3.4.5" / f"{_uid(2)}.dcm"
        orphan.write_bytes(b"renamed into place, then the node was killed")
        os.link(orphan, dead._node.folder / "0a1b2c3d-0.part.pub")
        live = Archive(root, fsync=False)  # (a node alive, whose folder holds a trace too)
        placing = root / "1.2.3.4" / "1.2.3.4.5" / "placing.dcm"
        placing.write_bytes(b"a live node's")
        os.link(placing, live._node.folder / "9f8e7d6c-0.part.pub")
        dead._node.close()  # the process died: its lock went, its folder stays
        index = None if node.index.engine.dialect == "sqlite" else node.index.engine.url
        try:
            assert run_check(root, fsync=False, index=index) == [
                f"1.2.3.4/1.2.3.4.5/{_uid(2)}.dcm: not indexed (a node that died left it:"
                " the next start settles it)"
            ]
        finally:
            dead.close()
            live.close()


def test_reindex_is_refused_while_a_node_on_another_host_runs(
    tmp_path: Path, index_engine: str
) -> None:
    if index_engine != "postgresql":
        pytest.skip("one host: the flock of .tmp says it (test_archive_crash)")
    with Archive(tmp_path / "here", fsync=False) as node:
        url = node.index.engine.url
        # another host: its own mount of the storage (no flock shared), one index
        with pytest.raises(ArchiveBusyError, match="in use by a server"):
            run_reindex(tmp_path / "there", [], fsync=False, index=url)
    assert run_reindex(tmp_path / "there", [], fsync=False, index=url) == 0


def test_a_storage_without_the_instances_of_its_index_is_refused(
    tmp_path: Path, index_engine: str, capsys
) -> None:
    """review50 #3: a node on an empty --storage (a share not mounted) answered 0000
    for instances it did not hold, and `reindex` from it emptied the shared index."""
    if index_engine != "postgresql":
        pytest.skip("the SQLite index is in the storage root: of that root")
    from dicomstore.archive.identity import StorageMismatchError
    from dicomstore.cli import main

    with Archive(tmp_path / "here", fsync=False) as node:
        url = node.index.engine.url
        assert store(node, dataset(_uid(1)), sop_uid=_uid(1)).status == SUCCESS
    empty = tmp_path / "unmounted"
    empty.mkdir()
    with pytest.raises(StorageMismatchError, match="holds no instance, but the index"):
        Archive(empty, fsync=False, index=url)
    assert main(["reindex", "--storage", str(empty), "--index", url]) == 1
    assert "the wrong --storage, or a share not mounted?" in capsys.readouterr().err
    with Archive(tmp_path / "here", fsync=False) as node:  # (the index as it was)
        assert [r["sop_instance_uid"] for r in node.instances()] == [_uid(1)]


def test_a_storage_of_another_index_is_refused(tmp_path: Path, index_engine: str, capsys) -> None:
    """review50 #3, #12: another archive's folder as --storage (a second archive in one
    schema; the wrong mount) was served, and `reindex` from it replaced the index (or
    was refused as 'in use by a server' beside the index's own nodes)."""
    if index_engine != "postgresql":
        pytest.skip("the SQLite index is in the storage root: of that root")
    from dicomstore.archive.identity import MARK, StorageMismatchError, _recorded
    from dicomstore.cli import main

    here, other = tmp_path / "here", tmp_path / "other"
    with Archive(here, fsync=False) as node:
        url = node.index.engine.url
        assert store(node, dataset(_uid(1)), sop_uid=_uid(1)).status == SUCCESS
        ours = (here / MARK).read_text().strip()
        assert _recorded(node.index, None) == ours
        with Archive(other, fsync=False) as elsewhere:  # (an index of its own)
            assert store(elsewhere, dataset(_uid(2)), sop_uid=_uid(2)).status == SUCCESS
        theirs = (other / MARK).read_text().strip()
        assert theirs != ours
        with pytest.raises(StorageMismatchError, match=f"is the storage {theirs}, but the"):
            Archive(other, fsync=False, index=url)
        # beside the index's own node: refused for what it is, not as "in use"
        assert main(["reindex", "--storage", str(other), "--index", url]) == 1
        err = capsys.readouterr().err
        assert f"the index {node.index.engine.where} is of the storage {ours}" in err
        assert "nothing changed" in err and "in use" not in err
    (here / MARK).unlink()  # lost (a copy without its hidden files)
    with pytest.raises(StorageMismatchError, match=f"write {ours} into"):
        Archive(here, fsync=False, index=url)
    (here / MARK).write_text("\n")
    with pytest.raises(StorageMismatchError, match="is empty: write the storage's id in it"):
        Archive(here, fsync=False, index=url)
    (here / MARK).write_text(ours + "\n")
    with Archive(here, fsync=False, index=url) as node:  # (the index as it was)
        assert [r["sop_instance_uid"] for r in node.instances()] == [_uid(1)]


def test_check_of_a_storage_not_the_index_s_is_refused_and_writes_no_id(
    tmp_path: Path, index_engine: str, capsys
) -> None:
    """`check` with the wrong --storage (another archive's folder, a share not mounted)
    listed every file of both as a problem, after running recovery on that folder
    against this index; and it gave an unmarked folder the index's id."""
    if index_engine != "postgresql":
        pytest.skip("the SQLite index is in the storage root: of that root")
    from dicomstore.archive.identity import MARK
    from dicomstore.cli import main

    here, other, empty = tmp_path / "here", tmp_path / "other", tmp_path / "unmounted"
    with Archive(here, fsync=False) as node:
        url = node.index.engine.url
        assert store(node, dataset(_uid(1)), sop_uid=_uid(1)).status == SUCCESS
    with Archive(other, fsync=False) as elsewhere:  # (an index of its own)
        assert store(elsewhere, dataset(_uid(2)), sop_uid=_uid(2)).status == SUCCESS
    empty.mkdir()
    capsys.readouterr()
    assert main(["check", "--storage", str(other), "--index", url]) == 1
    err = capsys.readouterr().err
    assert "but the index" in err and "the wrong --storage or --index?" in err
    assert main(["check", "--storage", str(empty), "--index", url]) == 1
    assert "holds no instance, but the index" in capsys.readouterr().err
    assert sorted(p.name for p in empty.iterdir()) == []  # (no id, no .tmp)
    assert main(["check", "--storage", str(here), "--index", url]) == 0
    assert "checked 1 instance(s): 0 problem(s)" in capsys.readouterr().out
    assert (here / MARK).exists() and not (empty / MARK).exists()


def test_an_idle_node_takes_the_archive_lock_again_after_its_session_ended(
    tmp_path: Path, index_engine: str
) -> None:
    """review50 #13: a PostgreSQL restart ended every node's session, and the lock
    that keeps `reindex` off went with it until the node's next store."""
    if index_engine != "postgresql":
        pytest.skip("SQLite's lock is the flock of .tmp")
    import psycopg

    from dicomstore.archive.engine import engine_for
    from dicomstore.archive.index import Index

    with Archive(tmp_path / "root", fsync=False) as node:
        url = node.index.engine.url
        backend = node.index._db.conn.info.backend_pid
        with psycopg.connect(url, autocommit=True) as admin:  # (as a restart ends it)
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        other = Index(engine_for(node.root, url))
        try:
            assert other.hold(exclusive=True)  # the guard lapsed
            other.release(exclusive=True)
            node.keep_held()
            assert not other.hold(exclusive=True)  # held again
            node.keep_held()  # (a session alive: nothing to do)
            assert not other.hold(exclusive=True)
        finally:
            other.close()
        assert store(node, dataset(_uid(1)), sop_uid=_uid(1)).status == SUCCESS


def test_service_lock_one_holder_named_until_it_lets_go(tmp_path: Path) -> None:
    """The one node of a storage root running a service (forwarding, events)."""
    from dicomstore.archive.nodes import ServiceLock

    first, second = ServiceLock(tmp_path, "forward"), ServiceLock(tmp_path, "forward")
    assert first.take() and first.take() and first.held
    assert not second.take() and not second.held
    assert second.holder == f"host {os.uname().nodename}, pid {os.getpid()}"
    events = ServiceLock(tmp_path, "events")
    assert events.take()  # another service, another lock
    events.close()
    first.close()
    assert second.take() and (tmp_path / ".forward.lock").exists()
    second.close()


def test_a_service_lock_file_goes_with_its_holder_and_a_stale_one_is_not_taken(
    tmp_path: Path,
) -> None:
    """The holder removes the lock file as it lets go; one who locked the removed file
    meanwhile is not its holder (another inode is at the path): no two holders."""
    import fcntl

    first = nodes.ServiceLock(tmp_path, "events")
    assert first.take()
    stale = os.open(first.path, os.O_RDWR)  # opened before the holder let go
    first.close()
    assert not first.path.exists()
    fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the removed file's lock is free...
    assert not nodes.same_inode(stale, first.path)  # ...but it is not the lock any more
    second, third = nodes.ServiceLock(tmp_path, "events"), nodes.ServiceLock(tmp_path, "events")
    assert second.take() and not third.take() and f"pid {os.getpid()}" in third.holder
    os.close(stale)
    second.close()
    assert third.take()
    third.close()


def test_a_node_forgets_its_cache_when_another_node_rewrote_only(tmp_path: Path) -> None:
    """The writer's cache of parent rows is emptied at a transaction's start when
    another connection has rewritten rows since (deleted here: ``parentcache.py``),
    not for its own commits, another's additions, nor another's rollback."""
    one, two = _nodes(tmp_path)[:2]
    try:
        forgot: list[int] = []
        cache = one.index._cache
        forget = cache.forget
        cache.forget = lambda: (forgot.append(1), forget())[1]  # type: ignore[method-assign]

        def stored(node: Archive, n: int) -> None:
            assert store(node, dataset(_uid(n)), sop_uid=_uid(n)).status == SUCCESS

        stored(one, 1)
        forgot.clear()  # (its first transaction: nothing known of it yet)
        stored(one, 2)
        assert forgot == []  # its own commit
        stored(two, 3)
        stored(one, 4)
        assert forgot == []  # another node's instance of the same series
        with two.index.lock:
            two.index.begin()
            two.index.remove(_uid(3))
            two.index.rollback()
        stored(one, 5)
        assert forgot == []  # a rollback changes nothing
        with two.index.lock:
            two.index.begin()
            two.index.remove(_uid(3))
            two.index.commit()
        stored(one, 6)
        assert forgot == [1]  # another node's delete
    finally:
        _close([one, two])


def test_an_instance_moved_back_by_another_node_after_a_replace_keeps_its_file(
    tmp_path: Path, monkeypatch
) -> None:
    """review36b #3: a replace that moved an instance to another series unlinked the
    old path by name after its COMMIT: a node that stored it back there in that
    moment (Success) lost its file."""
    from dicomstore.archive import crashpoints

    root = tmp_path / "archive"
    a = Archive(root, fsync=False, on_duplicate="replace")
    b = Archive(root, fsync=False, on_duplicate="replace")
    uid, old, new = _uid(70), "1.2.3.4.5", "1.2.3.4.6"
    back = dataset(uid, series=old, patient_name="Back^")
    outcomes: list[StoreOutcome] = []
    armed = {"publish.after-commit"}

    def reached(point: str) -> None:
        if point in armed:  # (b stores it back now)
            armed.clear()
            outcomes.append(store(b, back, sop_uid=uid))

    try:
        assert store(a, dataset(uid, series=old), sop_uid=uid).status == SUCCESS
        monkeypatch.setattr(crashpoints, "ENABLED", True)
        monkeypatch.setattr(crashpoints, "reached", reached)
        assert store(a, dataset(uid, series=new), sop_uid=uid).status == SUCCESS
        monkeypatch.setattr(crashpoints, "ENABLED", False)
        assert [o.status for o in outcomes] == [SUCCESS]
        (row,) = a.instances()
        assert row["series_uid"] == old and a.path_of(uid).exists()
        assert _one_file_one_row(a, uid) == back
        assert a.check() == [] and b.check() == []
    finally:
        a.close()
        b.close()


def test_a_moved_replace_whose_old_file_cannot_be_looked_up_is_still_stored(
    tmp_path: Path, monkeypatch
) -> None:
    """review36c M2: after the COMMIT, a database error looking up the old key made
    every member of the batch fail (a RuntimeError) though their rows were committed."""
    from dicomstore.archive.engine import OperationalError
    from dicomstore.archive.index import Index

    root = tmp_path / "archive"
    uid = _uid(71)
    with Archive(root, fsync=False, on_duplicate="replace") as a:
        assert store(a, dataset(uid, series="1.2.3.4.5"), sop_uid=uid).status == SUCCESS

        def unavailable(self: Index, filters: dict) -> list:
            raise OperationalError[0]("the index is unreachable")

        monkeypatch.setattr(Index, "query", unavailable)
        assert store(a, dataset(uid, series="1.2.3.4.6"), sop_uid=uid).status == SUCCESS
        monkeypatch.undo()
        (row,) = a.instances()
        assert row["series_uid"] == "1.2.3.4.6" and a.path_of(uid).exists()
    with Archive(root, fsync=False) as a:  # (the next start removes the old file)
        assert a.check() == []


def test_a_dead_node_s_instance_whose_study_another_patient_took_meanwhile_is_dropped(
    tmp_path: Path, caplog
) -> None:
    """review54 F3: a node killed between the rename and the COMMIT left an instance of
    study S for patient P2 (never answered); a live node then stored S for P1 (0000);
    the next start adopted the dead node's file without the relational check: S under
    two patients, and `check` said nothing. It is dropped now (its sender saw no
    answer: it sends again, and the policy judges it then)."""
    from crash_driver import crash_child

    root = tmp_path / "root"
    with Archive(root, fsync=False) as live:

        def conflicting() -> None:
            with Archive(root, fsync=False) as dying:
                store(dying, dataset(_uid(2), patient_id="P2"), sop_uid=_uid(2))

        crash_child(root, "publish.after-rename", conflicting)
        ours = dataset(_uid(1), patient_id="P1", series="1.2.3.4.6")
        assert store(live, ours, sop_uid=_uid(1)).status == SUCCESS
        with (
            caplog.at_level("WARNING", logger="dicomstore.archive"),
            Archive(root, fsync=False) as starting,
        ):
            assert [r["sop_instance_uid"] for r in starting.instances()] == [_uid(1)]
            assert starting.check() == []
    assert (
        "dropped, never committed: Study Instance UID is already filed under another" in caplog.text
    )
