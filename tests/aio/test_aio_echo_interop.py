"""Verification (C-ECHO) against real peers: DCMTK and pynetdicom (issue: network core).

DCMTK's echoscu calls our server; our client calls DCMTK's and pynetdicom's
storescp; each with maximum PDU 4096, 16384 and unlimited on either side.
"""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from dicomstore.aio.client import associate
from dicomstore.services.server import ServerConfig
from tests.conftest import (
    PEER_ENV,
    NullHandler,
    ServerThread,
    dcmtk,
    dcmtk_storescp,
    free_port,
    pynetdicom_storescp,
)

PDUS = [4096, 16384, 0]


def echoscu(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk("echoscu"), "-v", *args, "127.0.0.1", str(port)],
        env=PEER_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("ours", PDUS)
@pytest.mark.parametrize("theirs", PDUS)
def test_dcmtk_echoscu_against_our_server(ours: int, theirs: int) -> None:
    with ServerThread(ServerConfig(port=0, max_pdu=ours), NullHandler()) as srv:
        result = echoscu(srv.port, "--max-pdu", str(theirs or 131072))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


async def _echo(port: int, max_pdu: int, called: str = "ANY-SCP") -> int:
    async with await associate("127.0.0.1", port, called_ae=called, max_pdu=max_pdu) as assoc:
        rsp = await assoc.echo()
        assert assoc.negotiated is not None
        return rsp.status


@pytest.mark.parametrize("ours", PDUS)
@pytest.mark.parametrize("theirs", [4096, 16384, 0])
def test_our_echo_against_dcmtk_storescp(tmp_path, ours: int, theirs: int) -> None:
    port = free_port()
    # DCMTK's storescp takes 4096..131072 for --max-pdu; 0 is not accepted, so
    # "unlimited" on its side is its largest value.
    with dcmtk_storescp(port, tmp_path / "out", "--max-pdu", str(theirs or 131072)):
        assert asyncio.run(_echo(port, ours)) == 0


@pytest.mark.parametrize("ours", PDUS)
@pytest.mark.parametrize("theirs", PDUS)
def test_our_echo_against_pynetdicom_storescp(tmp_path, ours: int, theirs: int) -> None:
    port = free_port()
    with pynetdicom_storescp(port, tmp_path / "out", "--max-pdu", str(theirs)):
        assert asyncio.run(_echo(port, ours)) == 0


def test_wrong_called_aet_is_rejected_and_dcmtk_reports_it() -> None:
    config = ServerConfig(port=0, ae_title="STORE1", require_called_aet=True)
    with ServerThread(config, NullHandler()) as srv:
        bad = echoscu(srv.port, "-aec", "OTHER")
        good = echoscu(srv.port, "-aec", "STORE1")
    assert bad.returncode != 0
    assert "Called AE Title Not Recognized" in bad.stderr + bad.stdout
    assert good.returncode == 0


def test_calling_aet_not_allowed_is_rejected_and_dcmtk_reports_it() -> None:
    config = ServerConfig(port=0, allowed_calling_aets=frozenset({"FRIEND"}))
    with ServerThread(config, NullHandler()) as srv:
        bad = echoscu(srv.port, "-aet", "STRANGER")
        good = echoscu(srv.port, "-aet", "FRIEND")
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr + bad.stdout
    assert good.returncode == 0
