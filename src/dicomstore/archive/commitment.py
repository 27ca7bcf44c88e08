"""Storage Commitment, the archive's side (PS3.4 J.3): does the archive hold each
referenced instance.

:func:`verify` answers one request: an instance is committed when the index
holds it under the same SOP Class, its file is present with the indexed size
and its data set hashes to the indexed digest. Otherwise it fails with a Failure
Reason of PS3.4 J.3.3.1.1:

- 0112 *No such object instance*: not in the index, or its file is gone;
- 0119 *Class / Instance conflict*: held under another SOP Class;
- 0110 *Processing failure*: its file differs from what was stored (size or
  digest), or cannot be read; or another data set was sent under its UID since it
  was stored, answered B000 with the stored copy kept (``schema.CONFLICTS``,
  review101 H2: the sender may hold the only copy of it).

The journal of requests not yet reported: ``commitment_journal.py``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dicomstore.archive import layout

if TYPE_CHECKING:
    from dicomstore.archive.reader import ArchiveReader, Conflicts

#: Failure Reasons (0008,1197), PS3.4 J.3.3.1.1
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
DUPLICATE_TRANSACTION_UID = 0x0131
#: The verdict's words for an indexed instance whose file is gone.
MISSING = "its file is missing"
#: Why an instance another data set was sent under since it was stored is not committed.
CONFLICT = "another data set was sent under this SOP Instance UID"


@dataclass(frozen=True, slots=True)
class Reference:
    """One item of the Referenced SOP Sequence (0008,1199)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Verdict:
    """Committed (``failure_reason`` None) or not, and why (for the operator)."""

    reference: Reference
    failure_reason: int | None = None
    why: str = ""

    @property
    def committed(self) -> bool:
        return self.failure_reason is None


def verify_one(
    reader: ArchiveReader,
    ref: Reference,
    row: dict[str, Any] | None,
    files: dict[str, tuple[int, str] | None] | None = None,
) -> Verdict:
    """The verdict on one referenced instance whose index row is ``row`` (module notes);
    ``files``: the verdicts on the files checked already, by key (each file is read
    once, then its verdict is reused)."""
    if row is None:
        return Verdict(ref, NO_SUCH_OBJECT_INSTANCE, "not in the archive")
    if row["sop_class_uid"] != layout.normalize_uid(ref.sop_class_uid):
        return Verdict(ref, CLASS_INSTANCE_CONFLICT, f"stored as {row['sop_class_uid']}")
    files = {} if files is None else files
    key = str(row["path"])
    if key not in files:
        files[key] = file_failure(reader, row)
    failure = files[key]
    return Verdict(ref) if failure is None else Verdict(ref, *failure)


def file_failure(
    reader: ArchiveReader, row: Mapping[str, Any], *, unreadable_raises: bool = False
) -> tuple[int, str] | None:
    """Why the file of the instance ``row`` is not what was stored (Failure Reason, in
    words), or None: present, with the indexed size and digest (``path``, ``file_size``
    and ``digest`` of the row are read), its File Meta Information naming the indexed
    transfer syntax (``checked.meta_differs``: what retrieval would refuse is not
    committed). Storage Commitment's check, and forwarding's before it
    sends (review101 M1). ``LookupError``: the storage keeps no local file;
    ``unreadable_raises``: an ``OSError`` reading it (but its absence) propagates (a
    cause that may pass: review102 M3)."""
    # (here, not at the top: a sender making References loads no reader nor pydicom)
    from dicomstore.archive import digests
    from dicomstore.archive.checked import file_meta_differs
    from dicomstore.archive.dicomfile import HeaderError

    try:
        path = reader.path(row)
        size = path.stat().st_size
        if size != row["file_size"]:
            return PROCESSING_FAILURE, f"file size {size}, stored {row['file_size']}"
        if not digests.matches(row["digest"], path):
            return PROCESSING_FAILURE, "file content differs from what was stored"
        wrong = file_meta_differs(path, row)  # (the meta, which retrieval judges too)
        if wrong is not None:
            return PROCESSING_FAILURE, wrong
    except FileNotFoundError:
        return NO_SUCH_OBJECT_INSTANCE, MISSING
    except (OSError, ValueError, HeaderError) as exc:  # unreadable, broken meta, bad path
        if unreadable_raises and isinstance(exc, OSError):
            raise
        return PROCESSING_FAILURE, f"its file cannot be read: {exc}"
    return None


def verify(reader: ArchiveReader, refs: Iterable[Reference]) -> list[Verdict]:
    """The verdicts on every referenced instance, in order; those found committed
    are made durable first (``ArchiveReader.make_durable``: one may be committed
    before its flush), else they are not. Each distinct file is read (hashed) once
    per request, however many references name it (review53 #4: 1000 references to
    one 200 MiB instance read it 1000 times, 26 s)."""
    refs = list(refs)
    conflicts: Conflicts = {}
    uids = list(dict.fromkeys(ref.sop_instance_uid for ref in refs))
    rows = reader.instance_rows(uids, conflicts=conflicts)
    files: dict[str, tuple[int, str] | None] = {}
    verdicts = [verify_one(reader, ref, rows.get(_key(ref)), files) for ref in refs]
    verdicts = _looked_again(reader, verdicts, rows)
    verdicts = _conflicted(verdicts, conflicts)
    found = list(dict.fromkeys(v.reference.sop_instance_uid for v in verdicts if v.committed))
    try:
        reader.make_durable(found)
    except OSError as exc:
        why = f"it cannot be made durable: {exc}"
        return [
            Verdict(v.reference, PROCESSING_FAILURE, why) if v.committed else v for v in verdicts
        ]
    return verdicts


#: What a report's committed instances were when verified: by SOP Instance UID, the
#: path and digest of the row, and the file's size, mtime and inode.
Held = dict[str, tuple[str, str, int, int, int]]


def held(reader: ArchiveReader, verdicts: Iterable[Verdict]) -> Held:
    """The instances ``verdicts`` found committed, as they are now (:data:`Held`; one
    whose file cannot be looked at is left out)."""
    uids = list(dict.fromkeys(_key(v.reference) for v in verdicts if v.committed))
    out: Held = {}
    for uid, row in reader.instance_rows(uids).items():
        try:
            st = reader.path(row).stat()
        except (OSError, LookupError, ValueError):
            continue  # (then not still held: verified again)
        out[uid] = (str(row["path"]), str(row["digest"]), st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def still_held(reader: ArchiveReader, then: Held, verdicts: Iterable[Verdict]) -> bool:
    """Whether the instances ``verdicts`` found committed are indexed and their files
    unchanged since ``then`` (:func:`held`): a look (no file read) before a report
    made earlier is sent again (review117 F1: one deleted or damaged while its report
    was tried again was reported committed); False: verify again."""
    return held(reader, verdicts) == then


def _key(ref: Reference) -> str:
    return layout.normalize_uid(ref.sop_instance_uid.strip())


def _looked_again(
    reader: ArchiveReader, verdicts: list[Verdict], rows: dict[str, dict[str, Any]]
) -> list[Verdict]:
    """The verdicts on files gone or unlike their row judged again on the rows now,
    where those changed since they were read (review88 F6: a replace committed
    meanwhile removes the file the row read before named; it was 0112 and "archive
    damage" for an instance stored all along). Unchanged rows keep their verdict, as
    ``check`` judges under the index lock."""
    doubt = [
        _key(v.reference)
        for v in verdicts
        if v.why == MISSING or v.failure_reason == PROCESSING_FAILURE
    ]
    if not doubt:
        return verdicts
    now = reader.instance_rows(list(dict.fromkeys(doubt)))
    moved = {uid for uid in doubt if _place(rows.get(uid)) != _place(now.get(uid))}
    files: dict[str, tuple[int, str] | None] = {}
    return [
        verify_one(reader, v.reference, now.get(_key(v.reference)), files)
        if _key(v.reference) in moved
        else v
        for v in verdicts
    ]


def _conflicted(verdicts: list[Verdict], conflicts: Conflicts) -> list[Verdict]:
    """The committed verdicts on instances another data set was sent under since they
    were stored, answered B000 or A900 and not stored (``schema.CONFLICTS``), as 0110:
    the sender may hold the only copy of what it sent (review101 H2, review91 D1)."""
    out = []
    for v in verdicts:
        uid = _key(v.reference)
        sent = conflicts.get(uid)
        if v.committed and sent is not None:
            why = (
                f"{CONFLICT} and not stored (the copy stored first kept): not"
                f" committed; sent {sent[0]}{' from ' + sent[1] if sent[1] else ''}"
            )
            v = Verdict(v.reference, PROCESSING_FAILURE, why)
        out.append(v)
    return out


def _place(row: dict[str, Any] | None) -> tuple[Any, Any] | None:
    return None if row is None else (row["path"], row["digest"])


#: Damaged instances named one by one in the log, per report.
NAMED_DAMAGED = 20


def log_failures(log: logging.Logger, transaction_uid: str, verdicts: list[Verdict]) -> None:
    """A WARNING when references are not committed (their reasons, counted), and one
    per instance whose file is gone or differs from what was stored: damage to the
    archive the operator must see (review49 #5: only the requester was told)."""
    failed = [v for v in verdicts if not v.committed]
    if not failed:
        return
    kinds = Counter(f"{v.failure_reason:04X} {v.why.split(':')[0]}" for v in failed)
    log.warning(
        "storage commitment %s: %d of %d not committed: %s",
        transaction_uid,
        len(failed),
        len(verdicts),
        ", ".join(f"{why} x{n}" for why, n in kinds.most_common(5)),
    )
    damaged = [
        v
        for v in failed
        if (v.failure_reason == PROCESSING_FAILURE and not v.why.startswith(CONFLICT))
        or v.why == MISSING
    ]
    for v in damaged[:NAMED_DAMAGED]:
        log.warning("archive damage: instance %s: %s", v.reference.sop_instance_uid, v.why)
