"""Hostile input over the network: each gets the right status or abort, the
server stays up and nothing already stored is touched (issue: hardening)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicomstore import uids
from dicomstore.aio.client import associate
from dicomstore.archive import Archive
from dicomstore.dimse import commands as C
from dicomstore.errors import AssociationAborted
from dicomstore.services.server import Server, ServerConfig
from dicomstore.ul import pdu as P

SC = "1.2.840.10008.5.1.4.1.1.7"


def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def uid_bytes(uid: str) -> bytes:
    raw = uid.encode("latin-1", "replace")
    return raw + b"\0" * (len(raw) % 2)


def dataset(
    sop_instance: str, study: str | None = None, tail: bytes = b"", series: str | None = None
) -> bytes:
    return (
        element(0x0008, 0x0016, b"UI", uid_bytes(SC))
        + element(0x0008, 0x0018, b"UI", uid_bytes(sop_instance))
        + element(0x0020, 0x000D, b"UI", uid_bytes(study or generate_uid()))
        + element(0x0020, 0x000E, b"UI", uid_bytes(series or generate_uid()))
        + tail
    )


def run(root: Path, scenario):
    async def main():
        archive = Archive(root, fsync=False)
        server = Server(ServerConfig(port=0), archive, commit_in_thread=False)
        await server.start()
        try:
            async with await associate(
                "127.0.0.1", server.port, contexts=[(SC, [uids.EXPLICIT_VR_LE])]
            ) as assoc:
                result = await scenario(assoc)
            # the server still serves
            async with await associate("127.0.0.1", server.port) as assoc:
                assert (await assoc.echo()).status == 0
            return result, archive.instances()
        finally:
            await server.close(grace=2)
            archive.close()

    return asyncio.run(main())


async def store(assoc, uid: str, data: bytes):
    return await assoc.store_stream(assoc.context_for(SC), SC, uid, [data])


@pytest.mark.parametrize(
    "uid",
    ["../../etc/passwd", "1.2/3", "/abs/olute", "1." + "2" * 70, "1.2.\u00e9", "..", "1.2\\3"],
)
def test_crafted_uids_never_become_paths(tmp_path, uid) -> None:
    sop = uid if uid.isascii() else generate_uid()  # the command set is ASCII by encoding

    async def scenario(assoc):
        return await store(assoc, sop, dataset(sop, study=uid))

    rsp, rows = run(tmp_path / "a", scenario)
    # stored under a safe derived name, or refused: never outside the root
    for path in tmp_path.rglob("*"):
        assert (tmp_path / "a") in path.parents or path == tmp_path / "a"
    for row in rows:
        assert ".." not in row["path"] and not row["path"].startswith("/")
    assert rsp.status == 0 or rsp.error_comment


def test_absurd_element_length_is_c000(tmp_path) -> None:
    uid = generate_uid()
    bad = dataset(uid, tail=struct.pack("<HH2sHI", 0x0009, 0x0010, b"OB", 0, 0xFFFFFFF0))

    async def scenario(assoc):
        return await store(assoc, uid, bad + b"\0" * 100)

    rsp, rows = run(tmp_path, scenario)
    assert rsp.status & 0xF000 == 0xC000 and rsp.error_comment
    assert rows == []


def test_pixel_data_longer_than_what_follows_is_c000(tmp_path) -> None:
    uid = generate_uid()
    bad = dataset(uid, tail=struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 10_000) + b"\0" * 50)

    async def scenario(assoc):
        return await store(assoc, uid, bad)

    rsp, rows = run(tmp_path, scenario)
    assert rsp.status & 0xF000 == 0xC000
    assert rows == []


def test_deeply_nested_sequences_do_not_crash(tmp_path) -> None:
    uid = generate_uid()
    depth = 2000
    nested = b""
    for _ in range(depth):  # SQ of undefined length, item of undefined length, nested
        nested = (
            struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + nested
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        )

    async def scenario(assoc):
        return await store(assoc, uid, dataset(uid, tail=nested))

    rsp, rows = run(tmp_path, scenario)
    assert rsp.status == 0xC000  # the one limit (review53 #8), not the header reader's
    assert rsp.error_comment == "sequences nested deeper than 1000 (PS3.5 7.5)"
    assert rows == []


@pytest.mark.parametrize("depth", [1000, 1001])
def test_defined_length_nesting_beyond_the_limit_is_c000(tmp_path, depth) -> None:
    """review53 #8: 10,000 levels were stored, then never delivered converted."""
    uid = generate_uid()
    nested = b""
    for _ in range(depth):  # SQ of defined length, one item of defined length, nested
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(nested)) + nested
        nested = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item

    async def scenario(assoc):
        return await store(assoc, uid, dataset(uid, tail=nested))

    rsp, rows = run(tmp_path, scenario)
    if depth == 1000:
        assert rsp.status == 0 and len(rows) == 1
    else:
        assert rsp.status == 0xC000 and rows == []
        assert rsp.error_comment == ("sequences nested deeper than 1000 (PS3.5 7.5)")


def test_invalid_vr_is_c000_or_stored_as_sent(tmp_path) -> None:
    uid = generate_uid()
    bad = dataset(uid, tail=struct.pack("<HH2sH", 0x0010, 0x0010, b"\x01\x02", 4) + b"ABCD")

    async def scenario(assoc):
        return await store(assoc, uid, bad)

    rsp, rows = run(tmp_path, scenario)
    assert rsp.status == 0 or rsp.status & 0xF000 == 0xC000


def test_command_set_that_lies_about_its_length_is_aborted(tmp_path) -> None:
    async def scenario(assoc):
        ctx = assoc.context_for(SC)
        command = C.encode_command(
            {
                C.AFFECTED_SOP_CLASS_UID: SC,
                C.COMMAND_FIELD: 0x0001,
                C.MESSAGE_ID: 1,
                C.PRIORITY: 0,
                C.COMMAND_DATA_SET_TYPE: 0,
                C.AFFECTED_SOP_INSTANCE_UID: "1.2.3",
            }
        )
        lying = command[:8] + struct.pack("<I", 9999) + command[12:]
        assoc.t.queue_message(ctx.id, lying)
        await assoc.t.drain()
        with pytest.raises(AssociationAborted) as exc:
            await asyncio.wait_for(assoc._reader, 10)
            raise assoc._ended  # type: ignore[misc]
        return exc.value

    aborted, rows = run(tmp_path, scenario)
    assert aborted.source == P.ABORT_SOURCE_PROVIDER
    assert rows == []


@pytest.mark.parametrize(
    ("sent", "answer", "said"),
    [
        (b"\x0a\x00" + struct.pack(">I", 4) + b"abcd", b"\x02\x01", "0x0a"),
        (P.encode(P.PDataTF([P.PDV(1, True, True, b"x")])), b"\x00\x00", "PDataTF PDU before"),
    ],
    ids=["unknown-type", "p-data-first"],
)
def test_a_bad_pdu_before_an_association_is_aborted_and_logged(
    tmp_path, caplog, sent: bytes, answer: bytes, said: str
) -> None:
    """review93 F4: answered with the A-ABORT of AA-1 (PS3.8 9.2: source 2 and its
    reason for an invalid PDU, source 0 for one not expected in Sta2), but no line at
    all in the log: now one, naming the peer and why; and the audit's outcome says it."""
    import logging

    caplog.set_level(logging.INFO, logger="dicomstore")

    async def main() -> bytes:
        server = Server(ServerConfig(port=0), Archive(tmp_path / "a", fsync=False))
        await server.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(sent)
            got = await asyncio.wait_for(reader.readexactly(10), 10)
            writer.close()
            await asyncio.wait_for(_ended(server), 10)
            return got
        finally:
            await server.close(grace=1)

    got = asyncio.run(main())
    assert got == b"\x07\x00\x00\x00\x00\x04\x00\x00" + answer
    lines = [r.getMessage() for r in caplog.records if "before an association" in r.getMessage()]
    assert lines and "aborted before an association (A-ABORT sent)" in lines[0]
    assert said in lines[0]


async def _ended(server: Server) -> None:
    """Until the server holds no association (the connection's end logged)."""
    while server.associations:
        await asyncio.sleep(0)  # (a turn of the loop, not a timed wait)
