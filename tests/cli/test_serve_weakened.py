"""``dicomstore serve`` says at start what the options given give up (cli/serve.py)."""

from __future__ import annotations

from dicomstore.cli import build_parser
from dicomstore.cli.serve import weakened


def _said(*argv: str, fsync: bool = True) -> list[str]:
    return weakened(build_parser().parse_args(["serve", *argv]), fsync)


def test_the_defaults_give_up_nothing() -> None:
    assert _said() == []


def test_fsync_off_and_an_unlimited_pdu_are_said() -> None:
    fsync, pdu = _said("--max-pdu", "0", fsync=False)
    assert fsync.startswith("--fsync off:")
    assert pdu.startswith("--max-pdu 0:") and "trusted peers only" in pdu
    assert _said("--max-pdu", "65536") == []
