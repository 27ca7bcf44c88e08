"""How a C-MOVE or C-GET ended, as the SCU tells it (retrieve_scu.RetrieveResult,
cli/retrieve.py): a final 0000 is taken at its word only when no count, the SCP's or
our own answers to a C-GET's sub-operations, says otherwise (review38scu #1)."""

from __future__ import annotations

import argparse
import json

import pytest

from dicomstore.cli.options import EXIT_FAILED, EXIT_OK
from dicomstore.cli.retrieve import _print
from dicomstore.services.retrieve_scu import Received, RetrieveResult


def received(*statuses: int) -> Received:
    found = Received()
    for n, status in enumerate(statuses):
        found.count(status, f"1.2.3.{n}")
    return found


@pytest.mark.parametrize(
    ("result", "ok"),
    [
        (RetrieveResult(0x0000, completed=3), True),
        (RetrieveResult(0x0000, completed=3, received=received(0, 0, 0)), True),
        (RetrieveResult(0x0000, completed=0, failed=5), False),  # the SCP's counts say so
        (RetrieveResult(0x0000, completed=1, warning=1), False),
        (RetrieveResult(0x0000, completed=1, received=received(0xA700)), False),  # ours
        (RetrieveResult(0x0000, completed=1, received=received(0x0212)), False),
        (RetrieveResult(0x0000, completed=1, received=received(0xB007)), False),
        (RetrieveResult(0xB000, completed=1, failed=1), False),
        (RetrieveResult(None), False),
    ],
)
def test_ok_only_when_nothing_says_otherwise(result: RetrieveResult, ok: bool) -> None:
    assert result.ok is ok
    assert result.contradicted is (result.status == 0 and not ok)
    assert result.to_json()["ok"] is ok


def test_a_contradicted_success_is_printed_and_exits_1(capsys) -> None:
    result = RetrieveResult(0x0000, completed=2, received=received(0, 0xA700))
    code = _print(argparse.Namespace(json=False), result, "C-GET")
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    assert out.splitlines() == [
        "C-GET: 0000 Success: sub-operations complete, no failures",
        "completed 2, failed 0, warning 0",
        "received here: stored 1, failed 1, warning 0",
        "  not stored here: 1.2.3.1",
    ]
    assert err == (
        "dicomstore: the SCP said 0000 (no failures), but we answered 1 with a failure"
        " and 0 with a warning: not every sub-operation completed\n"
    )
    assert _print(argparse.Namespace(json=True), result, "C-GET") == EXIT_FAILED
    printed = json.loads(capsys.readouterr().out)
    assert printed["received"] == {
        "completed": 1,
        "failed": 1,
        "warning": 0,
        "failed_sop_instance_uids": ["1.2.3.1"],
    }
    good = RetrieveResult(0x0000, completed=2, received=received(0, 0))
    assert _print(argparse.Namespace(json=False), good, "C-GET") == EXIT_OK
    assert "received here" not in capsys.readouterr().out


def test_the_peers_text_is_printed_on_one_line(capsys) -> None:
    """review38scu #6: an Error Comment or a failed UID with escapes or a line break."""
    result = RetrieveResult(
        0xB000,
        error_comment="bad \x1b[31m thing\nsecond line",
        completed=1,
        failed=1,
        failed_uids=["1.2.3\x1b[31mRED\nfailed: 9.9.9"],
    )
    _print(argparse.Namespace(json=False), result, "C-MOVE to WS")
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(": bad \\x1b[31m thing\\nsecond line")
    assert out[2] == "  failed: 1.2.3\\x1b[31mRED\\nfailed: 9.9.9" and len(out) == 3


def test_a_c_move_or_c_get_failure_is_unable_to_process() -> None:
    """review48 L1: C000 read 'Error: cannot understand', C-STORE's words (PS3.4
    Tables C.4-2, C.4-3: Cxxx 'Failed: Unable to process')."""
    from dicomstore.services.retrieve_scu import describe

    assert describe(0xC000) == describe(0xC123) == "Failed: unable to process"
    assert describe(0xA801) == "Refused: move destination unknown"
