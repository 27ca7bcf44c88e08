"""Storage Commitment, the archive's side (PS3.4 J.3, issue 16): the verdict on
each referenced instance and the journal of requests not yet reported."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest
from tests.archive.archive_testlib import CT, MR, dataset, in_meta, store

from dicomstore.archive import Archive, removal
from dicomstore.archive.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    Reference,
    verify,
)
from dicomstore.archive.commitment_journal import (
    CommitmentJournal,
    CommitmentRequest,
    DuplicateTransaction,
)
from dicomstore.archive.reader import ArchiveReader

UIDS = [f"1.2.7.{n}" for n in range(1, 7)]


@pytest.fixture
def stored(tmp_path: Path) -> tuple[ArchiveReader, dict[str, Path]]:
    root = tmp_path / "archive"
    archive = Archive(root, fsync=False)
    paths = {}
    try:
        for uid in UIDS:
            outcome = store(archive, dataset(uid, pixels=512), sop_uid=uid)
            assert outcome.status == 0 and outcome.path is not None
            paths[uid] = outcome.path
    finally:
        archive.close()
    return ArchiveReader(root), paths


def test_verdicts_for_each_failure_reason(stored) -> None:
    reader, paths = stored
    flipped = bytearray(paths[UIDS[2]].read_bytes())
    flipped[-10] ^= 0xFF  # same size, other pixel bytes
    paths[UIDS[2]].write_bytes(bytes(flipped))
    paths[UIDS[3]].unlink()
    with open(paths[UIDS[4]], "ab") as fp:
        fp.write(b"\0\0")
    refs = [
        Reference(CT, UIDS[0]),  # held: committed
        Reference(MR, UIDS[1]),  # held as CT
        Reference(CT, UIDS[2]),  # altered on disk
        Reference(CT, UIDS[3]),  # file gone
        Reference(CT, UIDS[4]),  # grown on disk
        Reference(CT, "1.2.7.99"),  # never stored
    ]
    verdicts = verify(reader, refs)
    assert [v.reference for v in verdicts] == refs
    assert [v.failure_reason for v in verdicts] == [
        None,
        CLASS_INSTANCE_CONFLICT,
        PROCESSING_FAILURE,
        NO_SUCH_OBJECT_INSTANCE,
        PROCESSING_FAILURE,
        NO_SUCH_OBJECT_INSTANCE,
    ]
    assert verdicts[0].committed and not any(v.committed for v in verdicts[1:])
    assert "differs" in verdicts[2].why and "missing" in verdicts[3].why
    assert "size" in verdicts[4].why


@pytest.mark.parametrize("then", ["as-is", "replaced", "deleted-and-sent-again"])
def test_an_instance_sent_again_different_and_kept_is_not_committed(
    tmp_path: Path, then: str
) -> None:
    """review101 H2: a data set sent again under a stored SOP Instance UID, different,
    is answered B000 and the copy stored first kept (``--on-duplicate keep``); it was
    then committed, so a modality deleted the one copy of what it sent. It is not
    committed (0110, saying why) until the UID is stored again."""
    root = tmp_path / "archive"
    uid = UIDS[0]
    first, other = dataset(uid, pixels=512), dataset(uid, pixels=514)
    with Archive(root, fsync=False) as archive:
        assert store(archive, first, sop_uid=uid).status == 0
        assert verify(ArchiveReader(root), [Reference(CT, uid)])[0].committed
        assert store(archive, first, sop_uid=uid).status == 0  # (identical: no conflict)
        assert verify(ArchiveReader(root), [Reference(CT, uid)])[0].committed
        kept = store(archive, other, sop_uid=uid, calling_ae="MODALITY")
        assert kept.status == 0xB000 and kept.kept
    (verdict,) = verify(ArchiveReader(root), [Reference(CT, uid)])
    assert verdict.failure_reason == PROCESSING_FAILURE
    assert "another data set was sent under this SOP Instance UID" in verdict.why
    assert "from MODALITY" in verdict.why
    if then == "as-is":
        return
    if then == "replaced":
        with Archive(root, fsync=False, on_duplicate="replace") as archive:
            assert store(archive, other, sop_uid=uid).status == 0
    else:
        assert not removal.remove(root, uid).problems
        with Archive(root, fsync=False) as archive:
            assert store(archive, first, sop_uid=uid).status == 0
    assert verify(ArchiveReader(root), [Reference(CT, uid)])[0].committed


@pytest.mark.parametrize(
    "moved",
    [{"patient_id": "PID2"}, {"study": "1.2.3.9", "series": "1.2.3.9.5"}, {"sop_class": MR}],
    ids=["patient", "study", "class"],
)
def test_an_instance_sent_again_filed_elsewhere_and_refused_is_not_committed(
    tmp_path: Path, moved: dict
) -> None:
    """review91 D1: a copy of a stored SOP Instance UID sent again under another
    patient (a demographics correction), study, series or SOP Class is refused A900, the
    copy stored first kept; a Storage Commitment of the UID then said committed, so a
    modality could delete the only copy of the corrected image. As for B000 (review101
    H2): not committed (0110, saying why) until the UID is stored again."""
    root = tmp_path / "archive"
    uid = UIDS[0]
    sop_class = moved.get("sop_class", CT)
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset(uid, pixels=512), sop_uid=uid).status == 0
        again = dataset(uid, pixels=512, **moved)
        refused = store(archive, again, sop_uid=uid, sop_class=sop_class, calling_ae="MODALITY")
        assert refused.status == 0xA900, refused
    for ref in (Reference(CT, uid), Reference(sop_class, uid)):
        (verdict,) = verify(ArchiveReader(root), [ref])
        assert not verdict.committed, verdict
        if ref.sop_class_uid == CT:
            assert verdict.failure_reason == PROCESSING_FAILURE, verdict.why
            assert "another data set was sent under this SOP Instance UID" in verdict.why
            assert "from MODALITY" in verdict.why
    assert not removal.remove(root, uid).problems
    with Archive(root, fsync=False) as archive:  # (the corrected copy, stored at last)
        assert store(archive, again, sop_uid=uid, sop_class=sop_class).status == 0
    assert verify(ArchiveReader(root), [Reference(sop_class, uid)])[0].committed


def test_a_replacing_copy_refused_for_its_filing_is_not_committed(tmp_path: Path) -> None:
    """review109 M2: with ``--on-duplicate replace``, a corrected copy (another Patient ID)
    of one instance of a study of two is refused A900 by ``--on-relational-mismatch
    reject`` (its study is filed under the first patient), the stored copy kept:
    committed, as review91 D1 was under keep. Not committed until stored again."""
    root, uid = tmp_path / "archive", UIDS[0]
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        for each in UIDS[:2]:
            assert store(archive, dataset(each, pixels=64), sop_uid=each).status == 0
        corrected = dataset(uid, pixels=64, patient_id="PID2")
        refused = store(archive, corrected, sop_uid=uid, calling_ae="MODALITY")
        assert refused.status == 0xA900, refused
        (verdict,) = verify(ArchiveReader(root), [Reference(CT, uid)])
        assert verdict.failure_reason == PROCESSING_FAILURE, verdict.why
        assert "from MODALITY" in verdict.why
        assert verify(ArchiveReader(root), [Reference(CT, UIDS[1])])[0].committed
        assert store(archive, dataset(uid, pixels=64), sop_uid=uid).status == 0  # (again)
    assert verify(ArchiveReader(root), [Reference(CT, uid)])[0].committed


def test_a_new_instance_refused_for_its_filing_is_no_conflict(tmp_path: Path) -> None:
    """What was never stored is answered 0112 (no such instance), not as a conflict."""
    from dicomstore.archive.commitment import NO_SUCH_OBJECT_INSTANCE

    root = tmp_path / "archive"
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset(UIDS[0], pixels=64), sop_uid=UIDS[0]).status == 0
        other = dataset(UIDS[1], pixels=64, patient_id="PID2")  # (the study: PID1's)
        assert store(archive, other, sop_uid=UIDS[1]).status == 0xA900
    (verdict,) = verify(ArchiveReader(root), [Reference(CT, UIDS[1])])
    assert verdict.failure_reason == NO_SUCH_OBJECT_INSTANCE, verdict.why


def test_a_conflict_is_told_whatever_the_clocks_say(tmp_path: Path, monkeypatch) -> None:
    """review102 H1: the conflict was judged by comparing times (the resend's against
    the row's arrival): a node whose clock was behind the one that stored the copy
    recorded a conflict that commitment then ignored. It is struck off when the UID is
    stored again, never judged by a clock."""
    from tests.archive.archive_testlib import Behind

    from dicomstore.archive import fields

    root, uid = tmp_path / "archive", UIDS[0]
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset(uid, pixels=512), sop_uid=uid).status == 0
        monkeypatch.setattr(fields, "datetime", Behind)  # (the resend's node: 30 s behind)
        assert store(archive, dataset(uid, pixels=514), sop_uid=uid).status == 0xB000
    (verdict,) = verify(ArchiveReader(root), [Reference(CT, uid)])
    assert verdict.failure_reason == PROCESSING_FAILURE, verdict.why
    with Archive(root, fsync=False, on_duplicate="replace") as archive:  # (still behind)
        assert store(archive, dataset(uid, pixels=514), sop_uid=uid).status == 0
    assert verify(ArchiveReader(root), [Reference(CT, uid)])[0].committed


def test_a_reindex_keeps_a_conflict(tmp_path: Path) -> None:
    """review102 L4: an index made anew from the files has no record of a conflict; an
    in-place reindex keeps it (README, Storage Commitment)."""
    root, uid = tmp_path / "archive", UIDS[0]
    with Archive(root, fsync=False) as archive:
        assert store(archive, dataset(uid, pixels=512), sop_uid=uid).status == 0
        assert store(archive, dataset(uid, pixels=514), sop_uid=uid).status == 0xB000
        assert archive.reindex() == 1
    (verdict,) = verify(ArchiveReader(root), [Reference(CT, uid)])
    assert verdict.failure_reason == PROCESSING_FAILURE, verdict.why


def test_an_instance_replaced_while_judged_is_committed(tmp_path: Path, monkeypatch) -> None:
    """review88 F6: the rows were read, then a replace committed (its old file gone),
    then the files were hashed: 0112 and "archive damage" for an instance stored all
    along. A failure of a row changed since is judged again on the row now."""
    root, uid = tmp_path / "archive", UIDS[0]
    with Archive(root, fsync=False, on_duplicate="replace") as archive:
        assert store(archive, dataset(uid, pixels=512), sop_uid=uid).status == 0
        reader = ArchiveReader(root)
        before = reader.instance_rows([uid])  # (read, then the replace commits)
        assert store(archive, dataset(uid, pixels=514), sop_uid=uid).status == 0
        assert not (root / before[uid]["path"]).exists()
        read = reader.instance_rows
        reads = iter([before])
        monkeypatch.setattr(
            reader, "instance_rows", lambda uids, **kw: next(reads, None) or read(uids, **kw)
        )
        (verdict,) = verify(reader, [Reference(CT, uid)])
        assert verdict.committed, verdict.why
        before = read([uid])
        removal.remove(root, uid, fsync=False)  # deleted since: not in the archive, not damage
        reads = iter([before])
        (verdict,) = verify(reader, [Reference(CT, uid)])
        assert (verdict.failure_reason, verdict.why) == (
            NO_SUCH_OBJECT_INSTANCE,
            "not in the archive",
        )


def test_journal_keeps_requests_until_done_across_restarts(tmp_path: Path) -> None:
    journal = CommitmentJournal(tmp_path)
    first = CommitmentRequest("1.2.99.1", [Reference(CT, UIDS[0])], "MODALITY", "10.0.0.7")
    second = CommitmentRequest("1.2.99.2", [Reference(MR, UIDS[1])], "OTHER")
    journal.add(first)
    journal.add(second)
    with pytest.raises(DuplicateTransaction):
        journal.add(CommitmentRequest("1.2.99.1", [], "MODALITY"))
    reopened = CommitmentJournal(tmp_path)  # a restart reads what was promised
    assert {r.transaction_uid for r in reopened.pending()} == {"1.2.99.1", "1.2.99.2"}
    assert next(r for r in reopened.pending() if r.transaction_uid == "1.2.99.1") == first
    reopened.done("1.2.99.1")
    assert [r.transaction_uid for r in CommitmentJournal(tmp_path).pending()] == ["1.2.99.2"]
    reopened.done("1.2.99.1")  # twice is harmless


def test_journal_refuses_a_transaction_uid_that_is_no_uid_and_skips_strays(
    tmp_path: Path,
) -> None:
    journal = CommitmentJournal(tmp_path, fsync=False)
    for bad in ("../../etc/passwd", "1.2/3", "", "1." * 40):
        with pytest.raises(ValueError, match="Transaction UID"):
            journal.add(CommitmentRequest(bad, [], "X"))
    journal.add(CommitmentRequest("1.2.3", [], "X"))
    (journal.folder / "1.2.4.json").write_text("{not json")
    (journal.folder / "1.2.5.tmp").write_text("half written")
    assert [r.transaction_uid for r in journal.pending()] == ["1.2.3"]
    assert list(CommitmentJournal(tmp_path / "none").pending()) == []


def test_a_node_takes_only_the_requests_no_live_node_holds(tmp_path: Path) -> None:
    """Several nodes, one journal (issue 17): each reports what it holds."""
    first = CommitmentJournal(tmp_path, fsync=False, node=True)
    first.add(CommitmentRequest("1.2.17.1", [], "MODALITY"))
    CommitmentJournal(tmp_path, fsync=False).add(CommitmentRequest("1.2.17.2", [], "X"))
    second = CommitmentJournal(tmp_path, fsync=False, node=True)
    assert [r.transaction_uid for r in second.take()] == ["1.2.17.2"]  # (nobody held it)
    third = CommitmentJournal(tmp_path, fsync=False, node=True)
    assert third.take() == []  # the first and the second report theirs
    first.close()  # (as when its node ends, SIGKILL included: the kernel lets go)
    assert [r.transaction_uid for r in third.take()] == ["1.2.17.1"]
    third.done("1.2.17.1")
    second.close()
    assert [r.transaction_uid for r in CommitmentJournal(tmp_path).pending()] == ["1.2.17.2"]


def test_a_request_no_live_node_holds_may_be_asked_again_on_another_node(
    tmp_path: Path,
) -> None:
    """review88 F3: asked again on another node, a request whose node died was 0115
    for good; one a live node holds still is."""
    first = CommitmentJournal(tmp_path, fsync=False, node=True)
    first.add(CommitmentRequest("1.2.17.3", [], "MODALITY"))
    second = CommitmentJournal(tmp_path, fsync=False, node=True)
    with pytest.raises(DuplicateTransaction):  # (its node lives: it reports it)
        second.add(CommitmentRequest("1.2.17.3", [], "MODALITY"))
    first.close()  # (its node died: the kernel lets go of its locks)
    again = CommitmentRequest("1.2.17.3", [Reference(CT, UIDS[0])], "MODALITY")
    second.add(again)  # asked again: replaces it, held by this node now
    assert list(CommitmentJournal(tmp_path).pending()) == [again]
    assert CommitmentJournal(tmp_path, fsync=False, node=True).take() == []
    second.close()


def test_a_re_ask_and_a_takeover_at_once_leave_one_node_reporting(
    tmp_path: Path, monkeypatch
) -> None:
    """review90 N2: a node taking over a dead node's request while another node wrote
    the request asked again: both reported it, and the first done removed the other's
    file. The re-ask holds the old file's lock until it is replaced; a done removes
    only the file it holds."""
    from dicomstore.archive import commitment_journal as commitment

    dead = CommitmentJournal(tmp_path, fsync=True, node=True)
    dead.add(CommitmentRequest("1.2.17.4", [], "MODALITY"))
    dead.close()  # (its node died)
    asking = CommitmentJournal(tmp_path, fsync=True, node=True)
    taking = CommitmentJournal(tmp_path, fsync=False, node=True)
    monkeypatch.setattr(taking, "_turn", contextlib.nullcontext)  # (the locks alone)
    taken: list[list[CommitmentRequest]] = []
    fsync = os.fsync

    def meanwhile(fd: int) -> None:  # (the takeover runs while the re-ask is written)
        if not taken:
            taken.append(taking.take())
        fsync(fd)

    monkeypatch.setattr(commitment.os, "fsync", meanwhile)
    asking.add(CommitmentRequest("1.2.17.4", [Reference(CT, UIDS[0])], "MODALITY"))
    monkeypatch.undo()
    assert taken == [[]]  # (the re-ask held it)
    path = tmp_path / ".commitments" / "1.2.17.4.json"
    replaced = path.with_name("other")
    replaced.write_text(path.read_text())
    os.replace(replaced, path)  # (as if another node's since)
    asking.done("1.2.17.4")
    assert path.exists()  # (not the file it held: left)
    taking.close()


def test_a_file_whose_meta_is_broken_is_a_processing_failure(stored) -> None:
    """Same size, its File Meta Information unreadable: 0110, not an exception."""
    reader, paths = stored
    data = bytearray(paths[UIDS[0]].read_bytes())
    data[128:132] = b"XXXX"  # no "DICM" prefix (PS3.10 7.1)
    paths[UIDS[0]].write_bytes(bytes(data))
    (verdict,) = verify(reader, [Reference(CT, UIDS[0])])
    assert verdict.failure_reason == PROCESSING_FAILURE
    assert "cannot be read" in verdict.why


def test_each_distinct_instance_is_hashed_once_per_request(stored, monkeypatch) -> None:
    """review53 #4: 1000 references to one 200 MiB instance hashed its file 1000 times
    (26 s; 65,535 would take half an hour)."""
    from dicomstore.archive import digests

    reader, paths = stored
    hashed: list[Path] = []
    real = digests.matches

    def counted(digest: str, path: Path) -> bool:
        hashed.append(Path(path))
        return real(digest, path)

    monkeypatch.setattr(digests, "matches", counted)
    flipped = bytearray(paths[UIDS[2]].read_bytes())
    flipped[-10] ^= 0xFF
    paths[UIDS[2]].write_bytes(bytes(flipped))
    refs = [Reference(CT, UIDS[0])] * 1000 + [Reference(CT, UIDS[2])] * 1000
    refs += [Reference(MR, UIDS[0]), Reference(CT, f" {UIDS[0]} "), Reference(CT, UIDS[1])]
    verdicts = verify(reader, refs)
    assert sorted(hashed) == sorted([paths[UIDS[0]], paths[UIDS[2]], paths[UIDS[1]]])
    assert [v.reference for v in verdicts] == refs
    assert all(v.committed for v in verdicts[:1000])
    assert {(v.failure_reason, v.why) for v in verdicts[1000:2000]} == {
        (PROCESSING_FAILURE, "file content differs from what was stored")
    }
    assert [v.failure_reason for v in verdicts[2000:]] == [CLASS_INSTANCE_CONFLICT, None, None]


def test_a_file_meta_naming_another_syntax_is_not_committed(stored) -> None:
    """review104 F2: the digest does not cover the File Meta Information; retrieval
    refuses a meta naming another transfer syntax than the index, so the archive does
    not commit to it either (0110, saying why)."""
    reader, paths = stored
    data = paths[UIDS[1]].read_bytes()
    explicit, big = b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.2\0"
    paths[UIDS[1]].write_bytes(in_meta(data, explicit, big))
    held, relabelled = verify(reader, [Reference(CT, UIDS[0]), Reference(CT, UIDS[1])])
    assert held.committed
    assert (relabelled.failure_reason, relabelled.why) == (
        PROCESSING_FAILURE,
        "its File Meta Information names transfer syntax 1.2.840.10008.1.2.2;"
        " stored 1.2.840.10008.1.2.1",
    )


def test_the_journal_text_is_that_of_the_dataclass() -> None:
    """``to_json`` writes what ``dataclasses.asdict`` did (without its deep copy), and
    ``from_json`` reads it back."""
    request = CommitmentRequest("1.2.3", [Reference(CT, "1.2.4"), Reference(MR, "1.2.5")], "M")
    assert request.to_json() == json.dumps(asdict(request), sort_keys=True)
    assert CommitmentRequest.from_json(request.to_json()) == request
