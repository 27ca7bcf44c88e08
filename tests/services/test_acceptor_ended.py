"""An accepted association's end is one INFO line: how it ended and what it stored
(review58 L7: only its acceptance was logged); one the server cut at its stop says so
(L5: it was not logged, and audited as "accepted")."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dicomstore.aio.client import associate
from dicomstore.services.server import Server, ServerConfig


def _ended(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "association ended" in r.getMessage()]


def test_a_released_association_ends_in_one_line(caplog) -> None:
    caplog.set_level(logging.INFO, logger="dicomstore")

    async def main() -> None:
        server = Server(ServerConfig(port=0), None)
        await server.start()
        try:
            async with await associate("127.0.0.1", server.port) as assoc:
                assert (await assoc.echo()).status == 0
        finally:
            await server.close(grace=5)

    asyncio.run(main())
    (line,) = _ended(caplog)
    assert line.endswith("association ended (released): 0 stored, 0 failed")


def test_an_association_the_stop_cuts_says_so(caplog) -> None:
    caplog.set_level(logging.INFO, logger="dicomstore")

    async def main() -> None:
        server = Server(ServerConfig(port=0), None)
        await server.start()
        assoc = await associate("127.0.0.1", server.port)
        try:
            await server.close(grace=0)
        finally:
            await assoc.abort()

    asyncio.run(main())
    (line,) = _ended(caplog)
    assert "association ended (aborted: the server stopped)" in line


def test_a_protocol_error_ends_as_aborted(caplog) -> None:
    """review77 F18: an association the server aborted for a protocol error of the
    DIMSE layer (here a PDV on a presentation context never negotiated, PS3.8 9.3.5.1)
    ended "(accepted)"."""
    caplog.set_level(logging.INFO, logger="dicomstore")

    async def main() -> None:
        server = Server(ServerConfig(port=0), None)
        await server.start()
        try:
            assoc = await associate("127.0.0.1", server.port)
            pdv = bytes([99, 0x03]) + bytes(8)  # (context 99, a last command fragment)
            item = len(pdv).to_bytes(4, "big") + pdv
            assoc.t.stream.transport.write(bytes([4, 0]) + len(item).to_bytes(4, "big") + item)
            try:
                await asyncio.wait_for(assoc.answered(), 10)
            except Exception:  # noqa: BLE001 - the A-ABORT ends it, however it is told
                pass
            await assoc.abort()
        finally:
            await server.close(grace=5)

    asyncio.run(main())
    (line,) = _ended(caplog)
    assert "association ended (aborted: protocol error): 0 stored, 0 failed" in line


def test_duplicates_kept_are_not_counted_stored(tmp_path, caplog) -> None:
    """review88 F2: an association of 30 instances, 20 of them duplicates the archive
    kept as stored before (B000: another copy dropped), ended "30 stored"."""
    from tests.services.forward_testlib import instance

    from dicomstore.archive import Archive
    from dicomstore.services.scu_send import send

    caplog.set_level(logging.INFO, logger="dicomstore")
    first, again = instance("1.2.58.1"), instance("1.2.58.1")
    again.ImageComments = "changed"  # (the same SOP Instance UID, other content: B000)
    archive = Archive(tmp_path / "archive", fsync=False)

    async def main() -> list[int]:
        server = Server(ServerConfig(port=0), archive)
        await server.start()
        try:
            results = await send("127.0.0.1", server.port, [first, first, again])
        finally:
            await server.close(grace=5)
        return [r.status for r in results]

    try:
        assert asyncio.run(main()) == [0x0000, 0x0000, 0xB000]
    finally:
        archive.close()
    (line,) = _ended(caplog)
    assert line.endswith(
        "association ended (released): 1 stored, 0 failed, 2 duplicate(s) kept as stored before"
    )
