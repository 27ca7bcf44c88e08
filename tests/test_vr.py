"""The AE title rule (PS3.5 Table 6.2-1, AE), one home for the CLI, the policy file
and the A-ASSOCIATE-RQ encoder."""

from __future__ import annotations

import argparse

import pytest

from dicomstore.cli.options import _ae_title
from dicomstore.policy import PolicyError
from dicomstore.policy_file import build
from dicomstore.ul.pdu import _ae_bytes
from dicomstore.vr import ae_title_problem


@pytest.mark.parametrize("title", ["A", "DICOMSTORE", "X" * 16, "  CT1  ", "CT 1", "a-b_c.d"])
def test_valid(title: str) -> None:
    assert ae_title_problem(title) is None
    assert _ae_title(title) == title.strip(" ")
    assert _ae_bytes(title) == title.strip(" ").encode().ljust(16, b" ")


@pytest.mark.parametrize(
    ("title", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("X" * 17, "17 characters, at most 16"),
        ("A\\B", "backslash"),
        ("A\tB", "printable"),
        ("CAFÉ", "printable ASCII"),
    ],
)
def test_invalid_everywhere(title: str, why: str) -> None:
    problem = ae_title_problem(title)
    assert problem is not None and why in problem
    with pytest.raises(argparse.ArgumentTypeError, match="not a valid AE title"):
        _ae_title(title)
    with pytest.raises(ValueError, match="not a valid AE title"):
        _ae_bytes(title)
    with pytest.raises(PolicyError, match="not a valid AE title"):
        build({"peers": {title: {}}}, None)  # type: ignore[arg-type]


def test_the_policy_also_refuses_surrounding_spaces() -> None:
    with pytest.raises(PolicyError, match="leading or trailing spaces"):
        build({"peers": {" CT1": {}}}, None)  # type: ignore[arg-type]
