"""Limits (issue: hardening, point 3): associations per calling AE and per
address, largest instance, minimum free disk, slow senders; and the
admission and audit hooks the server consults."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dicomstore import uids
from dicomstore.aio import loops
from dicomstore.aio.association import Timeouts
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.dimse import CStoreRQ, dataset_pdvs
from dicomstore.errors import AssociationAborted, AssociationRejected
from dicomstore.services.admission import Admission, AdmissionRequest
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import items as I
from dicomstore.ul import pdu as P
from tests.test_hostile import SC, dataset

CONTEXTS = [(SC, [uids.EXPLICIT_VR_LE]), (uids.VERIFICATION, [uids.IMPLICIT_VR_LE])]


def run(root: Path, scenario, **config):
    kwargs = {k: config.pop(k) for k in ("gatekeeper", "audit") if k in config}

    async def main():
        archive = Archive(root, fsync=False)
        server = Server(ServerConfig(port=0, **config), archive, commit_in_thread=False, **kwargs)
        await server.start()
        try:
            return await scenario(server.port, archive)
        finally:
            await server.close(grace=2)
            archive.close()

    return asyncio.run(main())


def test_associations_per_calling_ae_and_per_address(tmp_path) -> None:
    async def scenario(port, archive):
        held = [await associate("127.0.0.1", port, calling_ae="A") for _ in range(2)]
        with pytest.raises(AssociationRejected) as by_ae:
            await associate("127.0.0.1", port, calling_ae="A")
        third = await associate("127.0.0.1", port, calling_ae="B")  # 3 from this address
        with pytest.raises(AssociationRejected) as by_address:
            await associate("127.0.0.1", port, calling_ae="C")
        for assoc in [*held, third]:
            await assoc.release()
        again = await associate("127.0.0.1", port, calling_ae="A")
        await again.release()
        return by_ae.value, by_address.value

    by_ae, by_address = run(tmp_path, scenario, max_per_calling_ae=2, max_per_address=3)
    for rj in (by_ae, by_address):
        assert rj.transient and rj.source == 3 and rj.reason == 2  # local limit exceeded


def test_instance_larger_than_the_limit_is_a700_and_nothing_is_kept(tmp_path) -> None:
    async def scenario(port, archive):
        async with await associate("127.0.0.1", port, contexts=CONTEXTS) as assoc:
            ctx = assoc.context_for(SC)
            big = dataset(
                "1.2.3.4",
                tail=b"\x09\x00\x10\x00OB\0\0" + (50_000).to_bytes(4, "little") + bytes(50_000),
            )
            rsp = await assoc.store_stream(ctx, SC, "1.2.3.4", [big[:1000], big[1000:]])
            small = await assoc.store_stream(ctx, SC, "1.2.3.5", [dataset("1.2.3.5")])
        return rsp, small, archive.instances()

    rsp, small, rows = run(tmp_path, scenario, max_instance_bytes=10_000)
    assert rsp.status == 0xA700 and "limit" in rsp.error_comment
    assert small.status == 0
    assert [r["sop_instance_uid"] for r in rows] == ["1.2.3.5"]
    assert list((tmp_path / ".tmp").iterdir()) == []


def test_below_minimum_free_space_a700_before_writing(tmp_path) -> None:
    async def scenario(port, archive):
        async with await associate("127.0.0.1", port, contexts=CONTEXTS) as assoc:
            return await assoc.store_stream(
                assoc.context_for(SC), SC, "1.2.3.4", [dataset("1.2.3.4")]
            ), archive.instances()

    (rsp, rows) = run(tmp_path, scenario, min_free_bytes=2**62)
    assert rsp.status == 0xA700 and "free" in rsp.error_comment
    assert rows == []


def test_a_trickling_sender_is_dropped(tmp_path) -> None:
    async def scenario(port, archive):
        assoc = await associate("127.0.0.1", port, contexts=CONTEXTS)
        ctx = assoc.context_for(SC)
        # The command and the first bytes of a data set, then nothing more.
        assoc.t.queue_message(ctx.id, CStoreRQ(1, SC, "1.2.3.9").encode())
        for pdv in dataset_pdvs(ctx.id, dataset("1.2.3.9")[:10], 0, False):
            assoc.t.conn.send_pdvs([pdv])
        assoc.t.write_now()
        await assoc.t.drain()
        await asyncio.wait_for(assoc._reader, 30)  # the server aborts us
        ended = assoc._ended
        await assoc.abort()
        return ended, archive.instances()

    ended, rows = run(tmp_path, scenario, timeouts=Timeouts(operation=0.5))
    assert isinstance(ended, AssociationAborted)
    assert rows == []


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_message_too_slow_is_told_from_an_idle_peer_on_each_loop(tmp_path, loop) -> None:
    """The operation timeout is reported as such (uvloop's timers fire up to a
    millisecond before their time: the kind of deadline decides, not the clock)."""
    audit = Recorder()

    async def main() -> None:
        archive = Archive(tmp_path, fsync=False)
        config = ServerConfig(port=0, timeouts=Timeouts(operation=0.05))
        server = Server(config, archive, commit_in_thread=False, audit=audit)
        await server.start()
        try:
            for n in range(10):
                assoc = await associate("127.0.0.1", server.port, contexts=CONTEXTS)
                ctx = assoc.context_for(SC)
                assoc.t.queue_message(ctx.id, CStoreRQ(1, SC, f"1.2.3.{n}").encode())
                for pdv in dataset_pdvs(ctx.id, dataset(f"1.2.3.{n}")[:10], 0, False):
                    assoc.t.conn.send_pdvs([pdv])
                assoc.t.write_now()
                await assoc.t.drain()
                await asyncio.wait_for(assoc._reader, 30)  # the server aborts us
                await assoc.abort()
        finally:
            await server.close(grace=2)
            archive.close()

    loops.run(main(), loop)
    assert [r["outcome"] for r in audit.associations] == ["aborted: too slow"] * 10


class Recorder:
    def __init__(self) -> None:
        self.associations: list[dict] = []
        self.instances: list[dict] = []

    def association(self, record: dict) -> None:
        self.associations.append(record)

    def instance(self, record: dict) -> None:
        self.instances.append(record)


class OnlyAlice:
    def admit(self, request: AdmissionRequest) -> Admission:
        ident = request.identity
        if ident is None or ident.primary != b"alice":
            return Admission(reject=P.AssociateRJ(1, 1, 1))
        return Admission(may_echo=False, identity_response=b"welcome", user="alice")


def test_gatekeeper_identity_and_audit(tmp_path) -> None:
    audit = Recorder()

    async def scenario(port, archive):
        with pytest.raises(AssociationRejected):
            await associate("127.0.0.1", port, contexts=CONTEXTS)
        alice = I.UserIdentityRQ(1, True, b"alice")
        assoc = await associate("127.0.0.1", port, contexts=CONTEXTS, identity=alice)
        ac_identity = assoc.negotiated is not None
        echo = await assoc.echo()
        rsp = await assoc.store_stream(assoc.context_for(SC), SC, "1.2.3.7", [dataset("1.2.3.7")])
        await assoc.release()
        return ac_identity, echo, rsp

    ok, echo, rsp = run(tmp_path, scenario, gatekeeper=OnlyAlice(), audit=audit)
    assert ok
    assert echo.status == 0x0124
    assert rsp.status == 0
    outcomes = [a["outcome"] for a in audit.associations]
    assert outcomes[0].startswith("rejected") and outcomes[1] == "released"
    assert audit.associations[1]["user"] == "alice"
    assert audit.associations[1]["stored"] == 1
    [record] = audit.instances
    assert record["sop_instance_uid"] == "1.2.3.7" and record["status"] == "0000"
    assert record["digest"] and record["bytes"] > 0


def test_an_idle_association_gives_its_slot_up_when_all_are_taken(
    tmp_path, monkeypatch, caplog
) -> None:
    """review96 G1: a peer sending a tiny message once per --idle-timeout held its slot
    for ever, and a few such took every slot. When all are taken, the one idle longest
    (between messages, nothing of it in progress, idle EVICT_IDLE or more) is aborted and
    the new one accepted; one with a message half received is not, and a new one is then
    rejected as before."""
    import logging

    from dicomstore.services import acceptance
    from dicomstore.ul.pdu import PDV, PDataTF

    monkeypatch.setattr(acceptance, "EVICT_IDLE", 0.0)
    caplog.set_level(logging.INFO, logger="dicomstore")

    async def scenario(port, archive):
        idle = await associate("127.0.0.1", port, calling_ae="IDLE", contexts=CONTEXTS)
        assert (await idle.echo()).status == 0
        new = await associate("127.0.0.1", port, calling_ae="NEW", contexts=CONTEXTS)
        status = (await new.echo()).status
        with pytest.raises((AssociationAborted, ConnectionError)):
            await idle.echo()
        # a message half received holds its slot: the next one is rejected
        half = PDataTF([PDV(new.context_for(uids.VERIFICATION).id, True, False, b"\0" * 4)])
        new.t.conn._send(half)  # (one fragment of a command, its last never sent)
        new.t.write_now()
        await asyncio.sleep(0)  # (a turn: the server reads it)
        with pytest.raises(AssociationRejected) as full:
            await associate("127.0.0.1", port, calling_ae="LATE", contexts=CONTEXTS)
        new.t.abort_now()
        return status, full.value

    status, full = run(tmp_path, scenario, max_associations=1)
    assert status == 0 and full.transient and full.reason == 1  # (temporary congestion)
    assert "idle for 0s, aborted: all 1 association slots (--max-associations)" in caplog.text
    assert "aborted: idle, its slot given to a new association" in caplog.text
