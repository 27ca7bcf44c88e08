"""Refused associations in the audit trail, counted past the first few of a peer
(audit_refusals.py, review113 I2: a client that can reach the port grew the audit
trail by a record per refusal, without bound)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from dicomstore import audit as audit_module
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.audit import AuditLog
from dicomstore.audit_refusals import OTHERS, PER_WINDOW, RefusalDigest
from dicomstore.errors import AssociationRejected
from dicomstore.policy import Policy
from dicomstore.services.server import Server, ServerConfig


def refused(peer: str = "10.0.0.1", why: str = "calling AE title not recognized") -> dict:
    return {"event": "association", "peer": peer, "outcome": f"rejected: {why}"}


def test_the_first_of_a_window_are_written_the_rest_counted_then_said() -> None:
    digest = RefusalDigest(per_window=3, window=60)
    written = [digest.admit(refused(), now=t, stamp=f"s{t}") for t in range(10)]
    assert [len(w) for w in written] == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    accepted = {"event": "association", "peer": "10.0.0.1", "outcome": "released"}
    assert digest.admit(accepted, now=11, stamp="x") == [accepted]  # (never counted)
    assert digest.next_due(now=11) == 49
    (summary,) = digest.due(now=60)
    assert summary == {
        "event": "suppressed",
        "of": "association",
        "peer": "10.0.0.1",
        "outcome": "rejected: calling AE title not recognized",
        "records": 7,
        "first": "s3",
        "last": "s9",
    }
    assert digest.due(now=61) == [] and digest.next_due(now=61) is None
    assert len(digest.admit(refused(), now=61, stamp="y")) == 1  # (a new window)


def test_a_summary_due_comes_before_the_next_refusal() -> None:
    digest = RefusalDigest(per_window=1, window=10)
    digest.admit(refused(), now=0, stamp="a")
    digest.admit(refused(), now=1, stamp="b")
    summary, again = digest.admit(refused(), now=10, stamp="c")
    assert (summary["event"], summary["records"], again) == ("suppressed", 1, refused())


def test_peers_and_outcomes_are_counted_apart_and_their_number_is_bounded() -> None:
    digest = RefusalDigest(per_window=1, window=60, max_keys=4)
    for n in range(100):  # (a peer's calling AE title can vary the outcome)
        digest.admit(refused(f"10.0.0.{n}", f"{n} associations from X{n} already"), 0, "s")
        digest.admit(refused(f"10.0.0.{n}", f"{n} associations from X{n} already"), 0, "s")
    summaries = digest.due(now=0, every=True)
    assert len(digest._windows) == 5 and len(summaries) == 5  # (at most max_keys + 1)
    assert {s["peer"] for s in summaries} == {
        OTHERS,
        "10.0.0.0",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    }
    others = next(s for s in summaries if s["peer"] == OTHERS)
    assert others["records"] == 2 * 96 - 1 and others["outcome"] == "rejected"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_audit_log_writes_the_summary_when_its_window_ends_or_it_closes(
    tmp_path: Path, monkeypatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(audit_module.time, "monotonic", lambda: clock[0])
    log = AuditLog(tmp_path / "audit.jsonl")
    for _ in range(PER_WINDOW + 5):
        log.association(refused())
    clock[0] += 61  # (the window ended: the next record brings its summary first)
    log.association(refused())
    for _ in range(PER_WINDOW + 2):
        log.association(refused("10.0.0.2"))
    log.close()  # (what was counted meanwhile is said at the close)
    records = _records(tmp_path / "audit.jsonl")
    kinds = [(r["event"], r["peer"], r.get("records")) for r in records]
    assert kinds == [
        *[("association", "10.0.0.1", None)] * PER_WINDOW,
        ("suppressed", "10.0.0.1", 5),
        ("association", "10.0.0.1", None),
        *[("association", "10.0.0.2", None)] * PER_WINDOW,
        ("suppressed", "10.0.0.2", 2),
    ]


def test_a_server_refusing_a_peer_again_and_again_audits_the_first_and_counts_the_rest(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.toml").write_text("[peers.MODALITY1]\n")
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)

    async def main() -> None:
        archive = Archive(tmp_path / "archive", fsync=False)
        server = Server(
            ServerConfig(port=0),
            archive,
            gatekeeper=Policy.load(tmp_path / "policy.toml"),
            audit=audit,
        )
        await server.start()
        try:
            for _ in range(PER_WINDOW + 20):
                with pytest.raises(AssociationRejected):
                    await associate("127.0.0.1", server.port, calling_ae="STRANGER")
            async with await associate("127.0.0.1", server.port, calling_ae="MODALITY1"):
                pass
        finally:
            await server.close(grace=2)
            archive.close()

    asyncio.run(main())
    audit.close()
    records = _records(path)
    outcomes = [r["outcome"] for r in records]
    assert len(records) == PER_WINDOW + 2 and "released" in outcomes
    assert sum(o.startswith("rejected") for o in outcomes) == PER_WINDOW + 1
    (summary,) = [r for r in records if r["event"] == "suppressed"]
    assert summary["records"] == 20 and summary["peer"] == "127.0.0.1"
    assert summary["first"] <= summary["last"]
