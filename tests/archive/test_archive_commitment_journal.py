"""Stranded Storage Commitment requests in the journal of several nodes
(archive/commitment_journal.py, review90 N1): let go by the node that could not report
them, replaced by their requester asking again on any node, taken back at a start."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from tests.archive.archive_testlib import CT

from dicomstore.archive.commitment import Reference
from dicomstore.archive.commitment_journal import (
    CommitmentJournal,
    CommitmentRequest,
    DuplicateTransaction,
)

TX = "1.2.17.10"


def node(root: Path) -> CommitmentJournal:
    return CommitmentJournal(root, fsync=False, node=True)


def stranded(root: Path) -> tuple[CommitmentJournal, int]:
    """A live node holding TX, which it could not report: stranded."""
    first = node(root)
    first.add(CommitmentRequest(TX, [], "MODALITY"))
    inode = first.strand(TX)
    assert inode is not None
    return first, inode


def files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".commitments").iterdir() if p.name != ".lock-writer")


def test_a_request_stranded_on_a_live_node_is_replaced_asked_again_on_another(
    tmp_path: Path,
) -> None:
    """review90 N1: the node that stranded a request kept its lock: asked again on
    any other node it was 0115 for that node's life."""
    first, _inode = stranded(tmp_path)
    assert files(tmp_path) == [f"{TX}.stranded"]
    second = node(tmp_path)
    again = CommitmentRequest(TX, [Reference(CT, "1.2.17.11")], "MODALITY")
    assert second.add(again) is True  # (it replaced a stranded one)
    assert files(tmp_path) == [f"{TX}.json"] and list(CommitmentJournal(tmp_path).pending()) == [
        again
    ]
    with pytest.raises(DuplicateTransaction):  # (the second reports it now)
        first.add(CommitmentRequest(TX, [], "MODALITY"))
    second.done(TX)
    assert files(tmp_path) == []
    first.close()


def test_another_ae_title_does_not_replace_a_stranded_request(tmp_path: Path) -> None:
    """review52 L2, on every node: only the requester's AE title asks again."""
    first, _inode = stranded(tmp_path)
    with pytest.raises(DuplicateTransaction):
        node(tmp_path).add(CommitmentRequest(TX, [], "INTRUDER"))
    assert files(tmp_path) == [f"{TX}.stranded"]
    first.close()


def test_a_stranded_request_is_taken_at_a_start_not_by_a_look_for_dead_nodes(
    tmp_path: Path,
) -> None:
    """A live node's look every 30 s takes what dead nodes held, not what is stranded
    (it would be tried and stranded again, every 30 s, on every node); a start does."""
    first, _inode = stranded(tmp_path)
    looking = node(tmp_path)
    assert not looking.unheld() and looking.take() == []
    starting = node(tmp_path)
    (taken,) = starting.take(stranded=True)
    assert taken.transaction_uid == TX and files(tmp_path) == [f"{TX}.json"]
    with pytest.raises(DuplicateTransaction):  # (held by the node reporting it)
        looking.add(CommitmentRequest(TX, [], "MODALITY"))
    assert node(tmp_path).take(stranded=True) == []
    starting.done(TX)
    for journal in (first, looking, starting):
        journal.close()


def test_a_stranded_request_asked_again_since_is_not_dropped_nor_taken_back(
    tmp_path: Path,
) -> None:
    """The oldest stranded request beyond the bound is dropped only if it is still the
    one the node stranded; a start finding both a request asked again and a stranded
    leftover (a node died between the two) keeps the newer."""
    first, inode = stranded(tmp_path)
    second = node(tmp_path)
    second.add(CommitmentRequest(TX, [], "MODALITY"))
    second.strand(TX)  # (asked again, stranded again: another file)
    first.drop(TX, inode)
    assert files(tmp_path) == [f"{TX}.stranded"]
    folder = tmp_path / ".commitments"
    newer = CommitmentRequest(TX, [Reference(CT, "1.2.17.12")], "MODALITY")
    for mtime in (1, 2**31):  # (the leftover read before or after the request)
        (folder / f"{TX}.json").write_text(newer.to_json())
        os.utime(folder / f"{TX}.json", (mtime, mtime))
        if not (folder / f"{TX}.stranded").exists():
            (folder / f"{TX}.stranded").write_text(CommitmentRequest(TX, [], "M").to_json())
        starting = node(tmp_path)
        assert starting.take(stranded=True) == [newer]
        assert files(tmp_path) == [f"{TX}.json"]
        starting.close()
    for journal in (first, second):
        journal.close()


def test_a_re_ask_while_a_start_takes_the_request_back_leaves_one_node_reporting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review91 C1: the re-ask claimed the request's name, then the stranded one; a
    start taking it back between the two moved it to the first name, and the re-ask
    replaced the file the start held: both nodes reported it."""
    first, _inode = stranded(tmp_path)
    asking, starting = node(tmp_path), node(tmp_path)
    monkeypatch.setattr(starting, "_turn", contextlib.nullcontext)  # (the locks alone)
    claim = CommitmentJournal._claim
    taken: list[list[CommitmentRequest]] = []

    def meanwhile(self: CommitmentJournal, path: Path, calling_ae: str) -> int | None:
        fd = claim(self, path, calling_ae)
        if self is asking and not taken:
            taken.append(starting.take(stranded=True))  # (between the two claims)
        return fd

    monkeypatch.setattr(CommitmentJournal, "_claim", meanwhile)
    again = CommitmentRequest(TX, [Reference(CT, "1.2.17.13")], "MODALITY")
    asking.add(again)
    monkeypatch.undo()
    assert taken == [[]] and TX not in starting._held and TX in asking._held
    assert files(tmp_path) == [f"{TX}.json"]
    for journal in (first, asking, starting):
        journal.close()


@pytest.mark.parametrize("left", ["taking it back", "replacing it"])
def test_a_stranded_copy_a_killed_node_left_goes_with_the_report(tmp_path: Path, left: str) -> None:
    """review91 C2, C3: a node killed between the link and the unlink of a take-back
    (the same file under both names), or between the replace and the unlink of a
    re-ask (the older request under the stranded name), left a stranded copy that a
    later start reported again."""
    folder = tmp_path / ".commitments"
    holder = node(tmp_path)
    holder.add(CommitmentRequest(TX, [Reference(CT, "1.2.17.14")], "MODALITY"))
    if left == "taking it back":
        os.link(folder / f"{TX}.json", folder / f"{TX}.stranded")
    else:
        (folder / f"{TX}.stranded").write_text(CommitmentRequest(TX, [], "MODALITY").to_json())
    holder.done(TX)  # (reported by the node holding it)
    assert files(tmp_path) == []
    assert node(tmp_path).take(stranded=True) == []


def test_no_change_of_the_journal_runs_within_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review92 C4: between a re-ask's two claims its node stranded the request, and a
    start took it back before the re-ask's replace: two nodes reported it (the old
    request and the new). The journal's changes take turns across nodes."""
    from dicomstore.archive import commitment_journal

    monkeypatch.setattr(commitment_journal, "TURN_WAIT", 0.05)
    holding = node(tmp_path)  # (it holds the request and cannot report it)
    holding.add(CommitmentRequest(TX, [], "MODALITY"))
    asking, starting = node(tmp_path), node(tmp_path)
    claim = CommitmentJournal._claim

    def meanwhile(self: CommitmentJournal, path: Path, calling_ae: str) -> int | None:
        fd = claim(self, path, calling_ae)
        if self is asking:
            try:
                if path.suffix == ".stranded":
                    holding.strand(TX)
                else:
                    starting.take(stranded=True)
            except OSError as exc:
                assert "the journal is busy" in str(exc)
        return fd

    monkeypatch.setattr(CommitmentJournal, "_claim", meanwhile)
    try:
        asking.add(CommitmentRequest(TX, [Reference(CT, "1.2.17.15")], "MODALITY"))
    except DuplicateTransaction:
        pass  # (held by its node: 0115, asked again a moment later it replaces it)
    monkeypatch.undo()
    assert not (TX in asking._held and TX in starting._held)
    for journal in (holding, asking, starting):
        journal.close()


def test_a_re_ask_recorded_is_held_whatever_befalls_the_old_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review91 C6: the stranded copy could not be removed once the new request was in
    place: the re-ask was answered 0110 while the request stayed recorded, held by no
    node (a look reported it to a requester told it failed). It is held; its report
    removes the old copy."""
    from dicomstore.archive import commitment_journal

    first, _inode = stranded(tmp_path)

    def failing(path: Path, fd: int) -> bool:
        raise OSError(5, "Input/output error")

    asking = node(tmp_path)
    monkeypatch.setattr(commitment_journal, "_unlink_if", failing)
    assert asking.add(CommitmentRequest(TX, [Reference(CT, "1.2.17.16")], "MODALITY"))
    monkeypatch.undo()
    assert TX in asking._held
    assert files(tmp_path) == [f"{TX}.json", f"{TX}.stranded"]
    asking.done(TX)
    assert files(tmp_path) == []
    first.close()
