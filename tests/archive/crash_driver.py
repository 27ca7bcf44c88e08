"""Crash-injection rounds, run by ``test_archive_crash.py`` in a process of their own.

A publish round replaces an instance (two in three) or stores a new one beside it.

``python crash_driver.py POINT ROUNDS WORKDIR`` prints one JSON line: the
rounds run and the failures found. Each round forks a child from this
single-threaded process (no server, no thread: the group commit runs in the
caller's thread); the child arms the crash point (``crashpoints.enable``) and
is SIGKILLed there. This process then recovers the archive as a start-up or
the next ``delete`` would, and checks it: ``check()`` clean, ``.tmp`` empty,
the index serving the last committed version byte for byte, ``reindex()``
giving the same rows.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from archive_testlib import dataset, digest_of, store, stored_dataset

from dicomstore.archive import SUCCESS, Archive, crashpoints
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.removal import remove

UID = "1.2.3.4.5.6.7"
#: the row columns a recovery or a reindex must give back unchanged
KEPT = ("sop_instance_uid", "series_uid", "study_uid", "path", "file_size", "digest")
SERIES = "1.2.3.4.77"
OTHER = "1.2.3.4.5.6.99"  # an instance no delete round touches


class Failed(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


def crash_child(root: Path, spec: str, action: Any) -> None:
    """Fork; the child arms ``spec`` and runs ``action``: it must die of SIGKILL."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3  # the point was not reached
        try:
            crashpoints.enable(spec)
            action()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    expect(killed, f"{spec}: the child was not killed there (status {status:#x})")


def rows_of(archive: Archive) -> dict[str, dict[str, Any]]:
    return {r["sop_instance_uid"]: {k: r[k] for k in KEPT} for r in archive.instances()}


def assert_recovered(archive: Archive) -> dict[str, dict[str, Any]]:
    """check() clean and .tmp empty; reindex() gives the same rows; those rows."""
    expect(archive.check() == [], f"check after recovery: {archive.check()}")
    leftover = sorted(p.name for p in archive.tmp_dir.iterdir())
    expect(not leftover, f".tmp not emptied: {leftover}")
    before = rows_of(archive)
    left_out: list[str] = []
    archive.reindex(left_out)
    expect(left_out == [], f"reindex left out {left_out}")
    expect(rows_of(archive) == before, f"reindex changed {before} to {rows_of(archive)}")
    expect(archive.check() == [], f"check after reindex: {archive.check()}")
    return before


def publish_round(point: str, n: int, work: Path) -> None:
    """Replace ``UID`` by version 2 (moved to another study in odd rounds), dying at
    ``point``; version 2 must be served if the COMMIT happened, else version 1.
    Every fourth round version 2 has the same data set from another calling AE:
    only its File Meta Information (and size) differs."""
    root = work / f"r{n}"
    moving = n % 2 == 1
    v1 = dataset(UID, patient_name="One")
    where = {"study": "1.2.9", "series": "1.2.9.1"} if moving else {}
    v2 = dataset(UID, patient_name="Two", **where)  # type: ignore[arg-type]
    caller = "SCU"
    if n % 4 == 2:
        v2, caller = v1, "ANOTHER-SCU-AE"
    with Archive(root) as archive:
        first = store(archive, v1, sop_uid=UID)
        expect(first.status == SUCCESS, f"version 1: {first}")
        v1_file = first.path.read_bytes()
        v1_row = {k: first.instance[k] for k in KEPT}

    def replace() -> None:
        archive = Archive(root, on_duplicate="replace")
        store(archive, v2, sop_uid=UID, calling_ae=caller)

    crash_child(root, point, replace)
    committed = crashpoints.POINTS.index(point) >= crashpoints.POINTS.index("publish.after-commit")
    version = v2 if committed else v1
    # before any start settles it, another node serves the committed version
    # (review50 #2: version 2, never answered, was at version 1's path)
    (row,) = ArchiveReader(root).instances()
    expect(stored_dataset(root / row["path"]) == version, "the index's path holds another")
    with Archive(root) as archive:
        rows = assert_recovered(archive)
        expect(list(rows) == [UID], f"rows {list(rows)}")
        row = rows[UID]
        expect(row["digest"] == digest_of(version), "digest of the wrong version")
        path = root / row["path"]
        expect(stored_dataset(path) == version, "the file holds the wrong version")
        if committed:
            moved = row["path"].startswith("1.2.9/1.2.9.1/")
            expect(moved == moving, f"version 2 at {row['path']}")
        else:
            expect(row == v1_row and path.read_bytes() == v1_file, "version 1 altered")


#: The points a new instance's store passes (no old version: no ``.bak``, no old file)
NEW_INSTANCE_POINTS = tuple(
    p for p in crashpoints.POINTS if p.startswith("publish.") and "-old-" not in p
)
#: The points only a new instance passes (committed before its flush: ``publish.py``;
#: made durable by the journal, flushed where it belongs at the close)
NEW_ONLY = ("publish.after-journal", "publish.after-flush")


def new_instance_round(point: str, n: int, work: Path) -> None:
    """Store a new instance beside a stored one, dying at ``point``: once renamed
    into place (its data flushed before, or its digest in its trace's name) it is
    adopted at the next start, or kept if committed (its row verified when it was
    committed before its flush); before, it is not there; the other is untouched."""
    root = work / f"r{n}"
    new = dataset(OTHER, patient_name="New")
    with Archive(root) as archive:
        first = store(archive, dataset(UID, patient_name="One"), sop_uid=UID)
        expect(first.status == SUCCESS, f"the stored one: {first}")
        before = rows_of(archive)
        kept = first.path.read_bytes()

    # (every other round without the journal: the batch's own syncfs)
    journal = point == "publish.after-journal" or n % 2 == 0

    def store_new() -> None:
        with Archive(root, journal=journal) as archive:  # (its close: the checkpoint)
            store(archive, new, sop_uid=OTHER)

    crash_child(root, point, store_new)
    placed = crashpoints.POINTS.index(point) >= crashpoints.POINTS.index("publish.after-rename")
    with Archive(root) as archive:
        rows = assert_recovered(archive)
        expect(rows[UID] == before[UID], "the stored one altered")
        expect(archive.path_of(UID).read_bytes() == kept, "the stored one's file altered")  # type: ignore[union-attr]
        if placed:
            expect(OTHER in rows, f"not adopted: {list(rows)}")
            row = rows[OTHER]
            expect(row["digest"] == digest_of(new), "digest of the new one")
            expect(stored_dataset(root / row["path"]) == new, "the new one's bytes")
        else:
            expect(list(rows) == [UID], f"rows {list(rows)}")


def delete_round(point: str, n: int, work: Path) -> None:
    """Delete a series of three, dying at ``point`` (after the 1st, 2nd or 3rd unlink
    for ``delete.after-unlink``); settled at the next start (even rounds) or by
    the next delete while an archive stays open (odd rounds: a server running)."""
    root = work / f"r{n}"
    uids = [f"1.2.3.4.5.6.{10 + i}" for i in range(3)]
    with Archive(root) as archive:
        for uid in uids:
            out = store(archive, dataset(uid, series=SERIES), sop_uid=uid)
            expect(out.status == SUCCESS, f"{uid}: {out}")
        expect(store(archive, dataset(OTHER), sop_uid=OTHER).status == SUCCESS, "other")
        files = {uid: archive.path_of(uid).read_bytes() for uid in uids}  # type: ignore[union-attr]
        before = rows_of(archive)
    unlinks = n % 3 + 1
    spec = f"{point}:{unlinks}" if point == "delete.after-unlink" else point
    committed = point != "delete.after-intent"
    unlinked = {
        "delete.after-intent": 0,
        "delete.after-commit": 0,
        "delete.after-unlink": unlinks,
        "delete.after-intents-dropped": 3,
    }[point]
    server = Archive(root) if n % 2 else None  # a server running through the crash
    try:
        crash_child(root, spec, lambda: remove(root, SERIES))
        if server is not None:
            # the next delete settles the interrupted one first, with the server running
            result = remove(root, OTHER)
            expect(result.instances == 1, f"the next delete: {result}")
            expect(result.settled == (3 - unlinked if committed else 0), f"settled {result}")
            before.pop(OTHER)
            expect(server.check() == [], f"check with the server: {server.check()}")
            if committed:  # the server stores into the series the delete emptied
                again = store(server, dataset(uids[0], series=SERIES), sop_uid=uids[0])
                expect(again.status == SUCCESS, f"store after: {again}")
                expect(server.check() == [], f"check after a store: {server.check()}")
                remove(root, uids[0])
        with Archive(root) as archive:
            rows = assert_recovered(archive)
            if committed:
                expect(list(rows) == [OTHER] if server is None else not rows, f"rows {rows}")
                folder = root / "1.2.3.4" / SERIES
                expect(not folder.exists() or not any(folder.iterdir()), "files left")
            else:
                expect(rows == before, f"rows {rows}, expected {before}")
                for uid in uids:
                    expect(archive.path_of(uid).read_bytes() == files[uid], f"{uid} altered")  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.close()


def main(point: str, rounds: int, work: Path) -> dict[str, Any]:
    one = publish_round if point.startswith("publish.") else delete_round
    failures = []
    for n in range(rounds):
        try:
            if point in NEW_ONLY or (point in NEW_INSTANCE_POINTS and n % 3 == 2):
                new_instance_round(point, n, work)
            else:
                one(point, n, work)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            failures.append(f"round {n}: {type(exc).__name__}: {exc}")
    return {"point": point, "rounds": rounds, "failures": failures}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
