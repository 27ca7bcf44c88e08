"""Which rows a reindex (``maintenance.reindex_archive``) puts in the index it makes
anew from the files: the index's own record of an instance it held whose file can no
longer be read, and the rows of the files in order of arrival, judged by the
relational check where put in by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicomstore.archive.index import Index
from dicomstore.archive.relations import Relations

#: Instances looked up in one query (a parameter each: SQLite's bound is 32,766, an
#: older one's 999; thousands of files may be unreadable after a bad restore).
FIND_AT_ONCE = 500


#: Why a file the index held is not read (``unreadable``): it was, but it is no longer
#: the data set recorded when it was stored.
DAMAGED = "not as recorded"


def keep_records(
    root: Path,
    index: Index,
    recorded: dict[str, tuple[str, int, str]],
    chosen: dict[str, dict[str, Any]],
    unreadable: dict[str, str],
    told: list[str],
    damaged: list[str] | None,
) -> None:
    """Of each instance the index held and no file gave (review77 F1, F2: its record
    vanished, told nowhere, exit 0): where its recorded file cannot be read
    (truncated, overwritten), the index's own row, kept in ``chosen`` as a file damaged
    since keeps its recorded size and digest (so ``check`` goes on reporting it);
    where the file is gone, the row dropped (the index is what the files hold). Both
    told in ``damaged`` (the command exits 1). Other unreadable files (``unreadable``:
    path -> why) are left out, told in ``damaged`` too (after an index lost, exit 0 was
    followed by a check that failed on them: review100 W6)."""
    kept: list[str] = []
    for uid in sorted(uid for uid in recorded if uid not in chosen):
        path = recorded[uid][0]
        why = unreadable.pop(path, None)
        if why is None:
            try:
                if (root / path).exists():
                    continue  # (its file is there, left out for another reason: told)
            except OSError as exc:  # (a folder it may not read: review115 F5, it stopped)
                why = str(exc.strerror or exc)
        if why is not None:
            kept.append(uid)
            if why == DAMAGED:
                line = f"{path}: damaged: it differs from the size and digest recorded when it"
                line += " was stored; the index's record is kept"
            else:
                line = f"{path}: damaged: it cannot be read ({why}); the index's record is kept"
            line += " (check reports it): restore the file from a copy, or delete the instance"
        else:
            line = f"{path}: missing: SOP Instance {uid}, indexed, has no file; its record is"
            line += " dropped: restore the file from a copy first, and reindex again, to keep it"
        if damaged is not None:
            damaged.append(line)
    for first in range(0, len(kept), FIND_AT_ONCE):  # (the rows of those kept only)
        chosen.update(index.find_many(kept[first : first + FIND_AT_ONCE]))
    for path, why in unreadable.items():  # (damaged too: check fails on it, review100 W6)
        (damaged if damaged is not None else told).append(
            f"{path}: left out: cannot be read: {why}"
        )


def put_judged(
    index: Index,
    chosen: dict[str, dict[str, Any]],
    recorded: dict[str, Any] | None,
    told: list[str],
) -> int:
    """Index the rows ``chosen``, in order of arrival (:func:`_arrival`): those of
    files the index held first, as they were (stored under the policy of their
    time); then the others (put in by hand), each
    left out when the rows before it file its series under another study or its
    study under another patient (review54 F7: a study of two patients, ``check``
    clean). ``recorded`` None (the policy "accept") or empty (an index lost, or of
    an older schema: its files were taken in by the policy of their time, which the
    files do not say; review55 M2): none judged."""
    if not recorded:
        for row in sorted(chosen.values(), key=_arrival):
            index.put(row)
        return len(chosen)
    held = [row for uid, row in chosen.items() if recorded.get(uid, (None,))[0] == row["path"]]
    new = [row for uid, row in chosen.items() if recorded.get(uid, (None,))[0] != row["path"]]
    for row in sorted(held, key=_arrival):
        index.put(row)
    put = len(held)
    relations = Relations(index)
    for row in sorted(new, key=_arrival):
        refused = relations.check(row)
        if refused is not None:
            told.append(
                f"{row['path']}: left out: {refused.error_comment} (store it with `dicomstore"
                " send`: the server's --on-relational-mismatch judges it)"
            )
            continue
        index.put(row)
        relations.add(row)
        put += 1
    return put


def _arrival(row: dict[str, Any]) -> tuple[str, str]:
    """The order rows are put in: of arrival, then of path (review58 H2: the order of
    the folders gave each patient the attributes of the file whose study sorted last)."""
    return row["received_at"], row["path"]
