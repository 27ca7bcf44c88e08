"""The one cutter of Error Comments (0000,0902): an LO of at most 64 characters
(PS3.5 6.2), cut between words, never inside one (issue 10, item 7)."""

from __future__ import annotations

import random

import pytest

from dicomstore.archive.outcome import StoreOutcome
from dicomstore.error_comment import ELLIPSIS, MAX_CHARS, error_comment


def words_of(text: str) -> list[str]:
    return text.split()


def test_exactly_64_characters_are_kept_as_they_are() -> None:
    text = "out of resources: " + "x" * 40 + " disk."
    assert len(text) == 64
    assert error_comment(text) == text


def test_65_characters_are_cut_at_the_last_space_with_an_ellipsis() -> None:
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps"
    assert len(text) == 64 and error_comment(text) == text
    longer = text + "s"  # 65: the last word no longer fits with room for "..."
    assert error_comment(longer) == "The quick brown fox jumps over the lazy dog while the cat..."


def test_a_word_ending_exactly_where_the_ellipsis_starts_is_kept() -> None:
    first = "a" * 30 + " " + "b" * 30  # 61 characters: then "..." makes 64
    assert error_comment(first + " cccccccc") == first + ELLIPSIS
    assert len(first + ELLIPSIS) == MAX_CHARS


def test_punctuation_before_the_cut_is_dropped() -> None:
    text = "duplicate SOP Instance 1.2.3.4.5.6.7.8.9.10.11.12.13.14: refused, already stored"
    assert error_comment(text) == "duplicate SOP Instance 1.2.3.4.5.6.7.8.9.10.11.12.13.14..."


def test_one_word_longer_than_the_limit_is_cut_hard() -> None:
    uid = "1.2.826.0.1.3680043.8.498." + "1234567890" * 5  # 76 characters, no space
    assert error_comment(uid) == uid[: MAX_CHARS - len(ELLIPSIS)] + ELLIPSIS
    assert len(error_comment(uid)) == MAX_CHARS


def test_trailing_and_leading_spaces_are_not_significant() -> None:
    text = "x" * 64
    assert error_comment("  " + text + "     ") == text  # 71 with spaces, 64 without
    assert error_comment("   ") is None
    assert error_comment("") is None
    assert error_comment(None) is None


def test_non_ascii_control_characters_and_backslash_become_question_marks() -> None:
    assert error_comment("Müller\\Jörg\ttab\nline\x7f") == "M?ller?J?rg?tab?line?"


def test_the_archive_outcome_uses_the_same_cutter() -> None:
    text = "a warning comment of the archive that is far too long to fit into sixty four"
    assert StoreOutcome(0xB000, text).wire_comment == error_comment(text)
    assert error_comment(text) == "a warning comment of the archive that is far too long to fit..."


@pytest.mark.parametrize("seed", range(20))
def test_never_a_word_cut_in_the_middle(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        text = " ".join(
            "".join(rng.choice("abcdefgh.:,") for _ in range(rng.randint(1, 20)))
            for _ in range(rng.randint(1, 12))
        )
        cut = error_comment(text)
        assert cut is not None and len(cut) <= MAX_CHARS
        if len(text) <= MAX_CHARS:
            assert cut == text
            continue
        assert cut.endswith(ELLIPSIS)
        kept = words_of(cut[: -len(ELLIPSIS)])
        original = words_of(text)
        if len(original[0]) > MAX_CHARS - len(ELLIPSIS) and len(kept) == 1:
            continue  # the documented hard cut of a first word too long to fit
        # every kept word is whole (the last may lose trailing ",;:")
        assert kept[:-1] == original[: len(kept) - 1]
        assert original[len(kept) - 1].rstrip(",;:") == kept[-1]
