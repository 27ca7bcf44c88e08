"""Status classes of PS3.7 Annex C and the C-STORE statuses of PS3.4 B.2.3."""

from __future__ import annotations

import pytest

from dicomstore.dimse import status


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, "success"),
        (0x0001, "warning"),
        (0x0107, "warning"),
        (0x0116, "warning"),
        (0xB000, "warning"),
        (0xB006, "warning"),
        (0xB007, "warning"),
        (0xBFFF, "warning"),
        (0xA700, "failure"),
        (0xA7FF, "failure"),
        (0xA900, "failure"),
        (0xC000, "failure"),
        (0xCFFF, "failure"),
        (0x0105, "failure"),
        (0x0110, "failure"),
        (0x0117, "failure"),
        (0x0122, "failure"),
        (0x0124, "failure"),
        (0x0210, "failure"),
        (0x0211, "failure"),
        (0x0212, "failure"),
        (0xFE00, "cancel"),
        (0xFF00, "pending"),
        (0xFF01, "pending"),
        (0x1234, "failure"),  # not allowed by the standard: treated as failure
        (0xFF02, "failure"),
    ],
)
def test_category(code: int, expected: str) -> None:
    assert status.category(code) == expected


def test_predicates() -> None:
    assert status.is_success(status.SUCCESS)
    assert status.is_warning(status.COERCION_OF_DATA_ELEMENTS)
    assert status.is_failure(status.OUT_OF_RESOURCES)
    assert not status.is_failure(status.ELEMENTS_DISCARDED)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x0000, "Success"),
        (0xB000, "Warning: coercion of data elements"),
        (0xB006, "Warning: elements discarded"),
        (0xB007, "Warning: data set does not match SOP Class"),
        (0xA700, "Refused: out of resources"),
        (0xA7F3, "Refused: out of resources"),
        (0xA900, "Error: data set does not match SOP Class"),
        (0xA912, "Error: data set does not match SOP Class"),
        (0xC000, "Error: cannot understand"),
        (0xC123, "Error: cannot understand"),
        (0xC111, "Error: cannot understand"),  # (its Error Comment says why: not twice)
        (0x0122, "Refused: SOP Class not supported"),
        (0x0124, "Refused: not authorized"),
        (0x0210, "Failure: duplicate invocation"),
        (0x0211, "Failure: unrecognized operation"),
        (0x0212, "Failure: mistyped argument"),
        (0x0110, "Failure: processing failure"),
        (0x0117, "Failure: invalid SOP Instance"),
        (0xFF00, "Pending"),
        (0xFE00, "Cancel"),
        (0xB123, "Warning"),
        (0xA123, "Failure"),
        (0x0199, "Failure"),
    ],
)
def test_describe(code: int, text: str) -> None:
    assert status.describe(code) == text


def test_describe_unknown_mentions_failure() -> None:
    assert "failure" in status.describe(0x1234)


def test_constants_match_the_brief() -> None:
    assert (status.OUT_OF_RESOURCES, status.DATASET_DOES_NOT_MATCH_SOP_CLASS) == (0xA700, 0xA900)
    assert (status.CANNOT_UNDERSTAND, status.SOP_CLASS_NOT_SUPPORTED) == (0xC000, 0x0122)
    assert (status.NOT_AUTHORIZED, status.DUPLICATE_INVOCATION) == (0x0124, 0x0210)
    assert (status.UNRECOGNIZED_OPERATION, status.MISTYPED_ARGUMENT) == (0x0211, 0x0212)
    assert (status.PROCESSING_FAILURE, status.INVALID_SOP_INSTANCE) == (0x0110, 0x0117)
    assert (status.PENDING, status.PENDING_WARNING, status.CANCEL) == (0xFF00, 0xFF01, 0xFE00)
