"""Start-up recovery and who owns ``.tmp``: what a crash left is settled.

:func:`hold` takes ``<root>/.tmp`` (flock: shared by each open ``Archive``,
exclusive for ``reindex`` and the recovering ``check``); :func:`recover` runs
at start-up, before anything is published: a file published but not indexed
is adopted, an uncommitted replace undone, and the removal intents of a
replace or a delete (``removal.py``) settled, so that ``check`` is clean and
the index serves the last acknowledged version (see ``publish.py`` for the
order of the steps and the crash points).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from dicomstore.archive import digests, journal, layout, nodes
from dicomstore.archive.commit import Staged
from dicomstore.archive.dicomfile import HeaderError
from dicomstore.archive.fields import received_now
from dicomstore.archive.filepublish import UNFLUSHED
from dicomstore.archive.index import Index
from dicomstore.archive.layout import INTENT, intent_target
from dicomstore.archive.relations import Relations
from dicomstore.archive.removal import settle_intents

log = logging.getLogger("dicomstore.archive")

#: Held (flock) by a start while it recovers: one start at a time (:func:`recover`).
RECOVERY_LOCK = ".recovery.lock"


class ArchiveBusyError(OSError):
    """``.tmp`` is held by another process in a way that excludes this one."""


def hold(root: Path, *, exclusive: bool) -> int:
    """Take ``root/.tmp`` (a descriptor to close to let go): shared by each
    :class:`~dicomstore.archive.Archive` (a server) for its life, exclusive for
    ``reindex`` and for the recovery ``check`` runs (flock(2), so a process that
    dies lets go). Raises :class:`ArchiveBusyError` when the other kind holds it,
    without waiting."""
    tmp = root / layout.TMP_DIR
    fd = layout.open_folder(tmp)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = "a server or another archive" if exclusive else "a reindex or a check"
        raise ArchiveBusyError(errno.EBUSY, f"in use by {who}", str(tmp)) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


#: The names a trace can have (``FileStorage.place``): a temporary placed by a
#: hard link, the second name of one placed by a rename, or of one placed before
#: its data was flushed (``<temp>.<digest>.new``).
TRACES = (".part", ".pub", UNFLUSHED)


def recover(root: Path, index: Index, *, fsync: bool) -> int:
    """Start-up: settle what a crash left in ``.tmp`` (its own files, those of older
    dicomstores) and in the folders of dead nodes (``nodes.py``: never a live
    node's), then empty them; the number of instances adopted into the index.

    A trace (a temporary ``<temp>`` linked to its final name, or ``<temp>.pub``,
    a second name of a file renamed there; see ``filestorage.FileStorage.place``:
    either way a link count over 1) outlives its batch only when the COMMIT, or
    the clean-up after it, did not happen. If the final name still holds that
    file:

    - the index does not know the instance: it is adopted, indexed as
      ``reindex`` would (its data was durable before it was renamed; a ``.new``
      trace's file, placed before its flush, only if it still has the digest
      in the trace's name, else it goes: ``publish.py``), an arrival now: its
      ``received_at`` the time of the adoption, not of its file (review88 F7: the
      forwarding and events node, which reads other nodes' arrivals by that
      time, ``services/arrivals.py``, missed one adopted by a node down longer
      than its slack, and the sender's resend, a duplicate, was no arrival);
    - the index holds it with other bytes at the same name (a replace that did
      not commit): the old file, kept as ``<temp>.bak``, is put back;
    - the index holds it at another name (a replace, which puts the new version at
      the other of the instance's two places or in another series): the new file
      goes.

    All three are decided and done under the index write lock, which every node
    takes from its decision to its COMMIT (``publish.py``): another node storing
    the same instance meanwhile renames its file there only before or after.

    Then the removal intents (``<temp>=<path>.rm``: the old file of a replace that
    moved the instance; ``del-…``: the files of a delete) are settled: a file
    the index no longer names goes (``removal.settle_intents``).

    Then the rows committed before their flush and still listed ``unflushed``
    are verified (:func:`verify_unflushed`).

    Everything else is an incomplete instance or a backup no longer needed, and
    goes, except the removal intents made since in ``.tmp`` (a ``delete``
    running now owns them). Best effort: what cannot be settled stays where it
    is, for ``check`` to report (and a dead node's folder for the next start).
    """
    tmp = root / layout.TMP_DIR
    # one start at a time (a blocking flock): a node another start is settling
    # still holds its lock, and would pass for live (``verify_unflushed``)
    # (read-only: a flock needs no more, and another user's service may start here)
    lock = os.open(root / RECOVERY_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for another start's recovery to end", root)
            fcntl.flock(lock, fcntl.LOCK_EX)
        adopted = _settle_folder(root, index, tmp, fsync=fsync)
        with nodes.dead(root) as folders:
            for folder in folders:
                adopted += _settle_folder(root, index, folder, fsync=fsync)
        verify_unflushed(root, index, fsync=fsync)  # (after a replace undone: its old file)
    finally:
        os.close(lock)
    return adopted


def _settle_folder(root: Path, index: Index, folder: Path, *, fsync: bool) -> int:
    """:func:`recover` for ``.tmp`` itself or a dead node's folder in it."""
    from dicomstore.archive.maintenance import read_row  # (it imports the index too)

    adopted = 0
    unsettled: set[str] = set()  # traces (and their backups) left for the next start
    replay(root, index, folder)  # (its traces then settled as any)
    for entry in os.scandir(folder):
        if entry.name.endswith(TRACES) and entry.is_file(follow_symlinks=False):
            try:
                if entry.stat(follow_symlinks=False).st_nlink > 1:
                    adopted += _settle(root, index, Path(entry.path), read_row, fsync=fsync)
            except Exception:  # noqa: BLE001 - an unreadable leftover: check() reports it
                unsettled |= {entry.name, _backup_of(entry.name)}
    tmp = root / layout.TMP_DIR
    if folder == tmp:
        settle_intents(root, index, fsync=fsync)
    else:
        names = [f"{folder.name}/{n}" for n in os.listdir(folder) if intent_target(n)]
        settle_intents(root, index, names, fsync=fsync)
    for entry in os.scandir(folder):
        if entry.name.endswith(INTENT) or entry.is_dir(follow_symlinks=False):
            continue
        if entry.name in unsettled:
            continue  # undecided: its backup may be the committed version
        if folder == tmp and entry.name.lstrip(".").startswith(nodes.PREFIX):
            continue  # a node's lock file (nodes.py)
        layout.remove_quietly(Path(entry.path))
    return adopted


def replay(root: Path, index: Index, folder: Path) -> None:
    """Put back what a node's journal (``journal.py``) holds and the disk may have
    lost: its records still count when its last flush may not have covered them.
    Each is an instance answered Success (a record is written after its COMMIT
    and only a durable one is answered), in order.

    - Its row is there, with the record's key and digest: its file is written
      again from the record (what is read of it now may be in memory only: after
      a failed writeback, Linux keeps the pages and reports the error once, to
      the node that is gone).
    - No row, and its batch still listed ``unflushed``: its COMMIT is durable, so
      the row went since (a ``delete``; a batch is struck off only after the
      checkpoint that made its records obsolete): nothing comes back.
    - No row, batch not listed: the COMMIT was lost with the power (SQLite's WAL
      is durable in order: nothing after it is either). The file is written
      again and its ``.new`` trace linked to it: the settling of the traces that
      follows adopts it (its digest matches).
    - A row with another key or digest: stored again since; the record is stale.

    Done under the index write lock (a live node storing the same instance waits),
    then one syncfs through a descriptor opened before the writes (so it reports
    their errors) makes it all durable before the journal may go; where syncfs
    cannot be trusted (``layout.SYNCFS_AVAILABLE``: a journal carried to an older
    kernel), each file and folder is fsynced instead. ``OSError``, naming the
    journal, when that failed: the start stops there (the journal stays, and
    nothing of it is adopted).
    """
    path = folder / journal.NAME
    if not path.exists():
        return
    each = not layout.SYNCFS_AVAILABLE  # (then an fsync of each file and folder)
    try:
        fd = layout.open_folder(folder)
        try:
            with index.lock:
                index.begin()
                try:
                    written = _replay_records(root, index, folder, each=each)
                finally:
                    index.rollback()
            if each:
                layout.fsync_dir(folder)  # (the traces linked)
            else:
                layout.syncfs(fd)  # (the one flush of it all)
        finally:
            os.close(fd)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        room = ", after freeing space" if exc.errno in _NO_ROOM else ""
        again = f"start again{room}"
        if str(exc.strerror).startswith(journal.DAMAGED):  # (starting again cannot help)
            again = "move it aside to start without it: what it alone held is dropped, named"
        raise OSError(
            exc.errno,
            f"{exc.strerror or exc}{where}, while making what this journal holds durable"
            f" (it is kept and this start stops: {again})",
            str(path),
        ) from exc
    log.info("%s: %d instances of its journal made durable", folder, written)


def _replay_records(root: Path, index: Index, folder: Path, *, each: bool) -> int:
    """(Under the index write lock.) :func:`replay`'s writes: each record that
    still counts, written again; how many."""
    listed = {batch for batch, _ in index.unflushed_batches()}
    written, in_place = 0, []

    def stored(meta: dict[str, Any]) -> bool:  # (the index holds that instance)
        return journal.is_version(index.find(meta["uid"]), meta) or meta["batch"] in listed

    for record in journal.records(folder / journal.NAME, stored):  # (one at a time)
        meta = record.meta
        rel = meta["key"]
        row = index.find(meta["uid"])
        if row is not None and not journal.is_version(row, meta):
            continue
        if row is None and meta["batch"] in listed:
            continue
        final = layout.resolve(root, rel)
        if not _write_again(root, final, record.data, folder / f"{meta['trace']}.tmp", each=each):
            in_place.append(final)
        written += 1
        if row is None:
            trace = folder / meta["trace"]
            layout.remove_quietly(trace)
            os.link(final, trace)
    if in_place:  # (one line, however many)
        log.warning(
            "no room to write %d files again from the journal: written over in place (%s%s)",
            len(in_place),
            in_place[0],
            ", ..." if len(in_place) > 1 else "",
        )
    return written


#: A new copy cannot be written: the record goes over the file in place instead.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)


def _write_again(root: Path, final: Path, data: bytes, temp: Path, *, each: bool) -> bool:
    """Write ``data`` to ``final``: a temporary renamed there (so the data and the
    name are written again even where the cache holds them, clean, after a failed
    writeback), flushed by the caller's syncfs, or here when ``each``. Where there
    is no room for the temporary, over the file in place (weaker: its name is not
    written again; it needs room too where the file's blocks were lost): False."""
    renamed = True
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_all(fd, data, each)
        finally:
            os.close(fd)
        parent = final.parent.relative_to(root)
        layout.make_dirs(root, PurePosixPath(parent), durable=each)
        os.rename(temp, final)
    except OSError as exc:
        layout.remove_quietly(temp)
        if exc.errno not in _NO_ROOM or not final.is_file():
            raise
        renamed = False
        fd = os.open(final, os.O_WRONLY | os.O_CLOEXEC)
        try:
            _write_all(fd, data, each)
        finally:
            os.close(fd)
    if each:
        layout.fsync_dir(final.parent)
    return renamed


def _write_all(fd: int, data: bytes, each: bool) -> None:
    """Write ``data`` from the start of the file ``fd`` and cut it there; fsync
    when ``each``."""
    view, offset = memoryview(data), 0
    while offset < len(data):
        offset += os.pwrite(fd, view[offset:], offset)
    os.ftruncate(fd, len(data))
    if each:
        os.fsync(fd)


def _settle(root: Path, index: Index, trace: Path, read_row: Any, *, fsync: bool) -> int:
    unflushed = trace.name.endswith(UNFLUSHED)
    try:
        row = read_row(root, trace)  # reads the header, for the final name
    except OSError:
        raise  # (not a sign of lost data: left for the next start)
    except Exception:
        if unflushed:  # its data never all reached the disk (a power cut): never answered
            trace.unlink()  # (what is at its final name, check reports: see publish.py)
            return 0
        raise
    place = layout.instance_relstr(row["study_uid"], row["series_uid"], row["sop_instance_uid"])
    backup = trace.with_name(_backup_of(trace.name))
    with index.lock:
        index.begin()
        try:  # (a replace puts it at the other place: layout.other_place)
            places = (place, layout.other_place(place))
            rel = next((r for r in places if _holds(root, r, trace)), "")
            if not rel:
                return 0  # renamed over since, or never renamed
            final = root / rel
            existing = index.find(row["sop_instance_uid"])
            if (
                existing is None
                and unflushed
                and not digests.same(_digest_of(trace.name), row["digest"], final)
            ):
                log.warning("%s: dropped, its data was lost before it was committed", rel)
                os.unlink(final)  # (never answered)
                if fsync:
                    layout.fsync_dir(final.parent)
                return 0
            refused = Relations(index).check(row) if existing is None else None
            if refused is not None:  # never answered 0000; its study or series is filed
                # elsewhere since (review54 F3: adopted, one Study UID under two patients):
                # its sender saw no answer and sends it again, judged by the policy then
                why = refused.error_comment
                log.warning("%s: dropped, never committed: %s (relations.py)", rel, why)
                os.unlink(final)
                if fsync:
                    layout.fsync_dir(final.parent)
                return 0
            if existing is None:
                if fsync:  # its name may not be durable yet (unflushed: nor its data,
                    if unflushed:  # nor its folders, maybe new)
                        layout.fsync_file(final)
                    up = layout.folders_up_to(root, final) if unflushed else [final.parent]
                    for folder in up:
                        layout.fsync_dir(folder)
                index.put({**row, "path": rel, "received_at": received_now()})
                index.commit()
                return 1
            if existing["path"] != rel:
                os.unlink(final)  # an uncommitted replace that moved the instance
            elif backup.exists() and (
                existing["file_size"] != row["file_size"]
                or not digests.same(existing["digest"], row["digest"], final)
            ):
                os.replace(backup, final)  # an uncommitted replace: the old file comes back
            else:
                return 0
            if fsync:
                layout.fsync_dir(final.parent)
            return 0
        finally:
            index.rollback()  # (nothing left to roll back after the COMMIT)


def verify_unflushed(root: Path, index: Index, *, fsync: bool) -> int:
    """Verify the instances committed before their files were flushed and not yet
    struck off (``Index.unflushed``: ``publish.py``); the number dropped.

    Such a row was answered Success only after a flush that made its file
    durable, and that flush strikes its batch off in the next COMMIT; so a row
    whose file is missing or does not match its digest (a power cut before the
    flush) was never acknowledged: it goes, with its file. The others are made
    durable before their batches are struck off. A live node's batches (its
    name in theirs, its lock file in ``.tmp``: ``nodes.live``) are left to it:
    made durable by its journal, they are struck off only after its checkpoint,
    which tells its next start's replay a lost COMMIT from a delete since. The
    files are read outside the index write lock (a large batch must not hold
    other nodes past their lock timeout); one is dropped under it only if its row
    and its file are still those read."""
    with index.lock:
        index.begin()
        try:
            live = nodes.live(root)  # (their batches are theirs: see the docstring)
            listed = [p for p in index.unflushed_batches() if nodes.batch_node(p[0]) not in live]
            rows = {uid: index.find(uid) for uid in {uid for _, uid in listed}}
        finally:
            index.rollback()
    if not listed:
        return 0
    bad: dict[str, tuple[dict[str, Any], int]] = {}  # the row read, its file's inode
    unsure: set[str] = set()  # UIDs whose files could not be read now
    folders: set[Path] = set()
    for uid, row in rows.items():
        if row is None:
            continue  # deleted since
        path = root / row["path"]
        inode = -1
        try:  # (only what shows its data lost drops it: not a passing read error)
            stat = path.stat()
            inode = stat.st_ino
            good = stat.st_size == row["file_size"] and digests.matches(row["digest"], path)
            if good and fsync:
                layout.fsync_file(path)
                folders.update(layout.folders_up_to(root, path))
        except (FileNotFoundError, HeaderError):
            good = False
        except (OSError, ValueError) as exc:  # (ValueError: a digest this version cannot
            # compute, which says nothing of the file)
            log.warning("%s: not verified now (%s): left for the next start", path, exc)
            unsure.add(uid)
            continue
        if not good:
            bad[uid] = (row, inode)
    dropped = 0
    with index.lock:
        index.begin()
        try:
            for uid, (read, inode) in bad.items():
                row, path = index.find(uid), root / read["path"]
                if row is None or (row["path"], row["digest"]) != (read["path"], read["digest"]):
                    continue  # stored again since
                if _inode(path) != inode:
                    continue  # (another file renamed there since)
                log.warning("%s: dropped, its data was lost before it was flushed", path)
                index.remove(uid)
                index.prune(row["series_uid"], row["study_uid"], row["patient_id"])
                layout.remove_quietly(path)
                folders.add(path.parent)
                dropped += 1
            for folder in folders if fsync else ():
                layout.fsync_dir(folder)
            index.flushed(
                list({batch for batch, uid in listed} - {b for b, u in listed if u in unsure})
            )
            index.commit()
        finally:
            index.rollback()  # (nothing left to roll back after the COMMIT)
    return dropped


def settle_placed(root: Path, index: Index, placed: list[Staged], *, fsync: bool) -> None:
    """The placements of a batch whose COMMIT was in doubt (``publish.py``), settled
    by the rows once the index answers, as a start settles a dead node's: each
    file adopted or, where the index names another (the version it was to
    replace), gone; then the removal intents (the replaced file goes if the
    index no longer names it). Raises ``DatabaseError`` or ``OSError`` when that
    cannot be done now: what is left stays for the next try, or a start."""
    from dicomstore.archive.maintenance import read_row  # (it imports the index too)

    for member in placed:
        if member.trace is not None:
            _settle(root, index, Path(member.trace), read_row, fsync=fsync)
            for name in (member.trace, member.backup):
                if name is not None:
                    layout.remove_quietly(name)
            member.trace = member.backup = None
    tmp = root / layout.TMP_DIR
    intents = [os.path.relpath(m.intent, tmp) for m in placed if m.intent is not None]
    if intents:
        settle_intents(root, index, intents, fsync=fsync)


def _holds(root: Path, rel: str, trace: Path) -> bool:
    """Whether the file at ``rel`` is the one ``trace`` is a second name of."""
    try:
        return os.path.samefile(root / rel, trace)
    except FileNotFoundError:
        return False


def _inode(path: Path) -> int:
    """The inode of the file at ``path``; -1 when there is none."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


def _digest_of(trace: str) -> str:
    """The digest in the name of a trace ``<temp>.<digest>.new``."""
    return trace.removesuffix(UNFLUSHED).rpartition(".")[2].replace("_", ":")


def _backup_of(trace: str) -> str:
    """The name ``FileStorage.place`` gives the kept old file of a trace's replace."""
    return f"{trace.removesuffix('.pub')}.bak"
