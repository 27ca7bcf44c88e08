"""File Meta Information from templates: byte for byte what pydicom writes."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from archive_testlib import CT, EXPLICIT_LE, IMPLICIT_LE, MR, dataset, store
from hypothesis import given, settings
from hypothesis import strategies as hs
from pydicom import dcmread

from dicomstore.archive import SUCCESS, Archive, dicomfile
from dicomstore.archive.dicomfile import MetaTemplates, file_header

JPEG = "1.2.840.10008.1.2.4.50"
PRIVATE_TS = "1.2.3.999.1"


def _random_uid(rng: random.Random, length: int) -> str:
    uid = "1." + "".join(rng.choice("0123456789.") for _ in range(length - 2))
    return uid.replace("..", ".1").rstrip(".")[:length].ljust(length, "7")


def _args(sop_uid: str, **kw: str) -> dict[str, str]:
    args = {
        "sop_class_uid": CT,
        "sop_instance_uid": sop_uid,
        "transfer_syntax_uid": EXPLICIT_LE,
        "calling_ae": "MODALITY",
        "called_ae": "ARCHIVE",
    }
    args.update(kw)
    return args


def test_many_uids_and_ae_titles_give_pydicoms_bytes() -> None:
    rng = random.Random(1234)
    templates = MetaTemplates()
    kinds = [
        {},
        {"sop_class_uid": MR, "transfer_syntax_uid": IMPLICIT_LE},
        {"transfer_syntax_uid": JPEG, "calling_ae": "A", "called_ae": ""},
        {"transfer_syntax_uid": PRIVATE_TS, "calling_ae": "", "called_ae": "X" * 16},
        {"calling_ae": "WITH SPACE", "called_ae": "Z"},
    ]
    for _ in range(400):
        length = rng.randint(3, 64)
        args = _args(_random_uid(rng, length), **rng.choice(kinds))
        assert templates.header(**args) == file_header(**args), args
    # every kind and length seen got a template (odd and even lengths alike)
    assert all(entry is not None for entry in templates._templates.values())
    assert len(templates._templates) > 50


@settings(max_examples=200, deadline=None)
@given(
    uid=hs.text(alphabet="0123456789.", min_size=1, max_size=64),
    calling=hs.text(alphabet="ABCXYZ_ 019", max_size=16),
    called=hs.text(alphabet="ABCXYZ_ 019", max_size=16),
)
def test_template_equals_pydicom_for_any_uid(uid: str, calling: str, called: str) -> None:
    templates = MetaTemplates()
    args = _args(uid, calling_ae=calling.strip(), called_ae=called.strip())
    first = templates.header(**args)  # makes the template
    other = _args(uid[::-1], calling_ae=calling.strip(), called_ae=called.strip())
    assert first == file_header(**args)
    assert templates.header(**other) == file_header(**other)  # from the template


def test_header_parses_back_to_the_values() -> None:
    templates = MetaTemplates()
    templates.header(**_args("1.2.3.4.5"))
    raw = templates.header(**_args("1.2.3.4.6"))  # same length: substituted
    meta = dcmread(io.BytesIO(raw)).file_meta
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4.6"
    assert meta.MediaStorageSOPClassUID == CT
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    assert meta.FileMetaInformationGroupLength == len(raw) - 132 - 12


@pytest.mark.parametrize(
    "uid",
    ["1.2\\3.4", "1.2 3.4", "1.2.é", "1.2.\udce4", "1.2.中"],
    ids=["backslash", "space", "latin1", "surrogate", "utf8"],
)
def test_uids_that_are_not_plain_go_through_pydicom(uid: str) -> None:
    templates = MetaTemplates()
    for _ in range(2):
        assert templates.header(**_args(uid)) == file_header(**_args(uid))
    assert templates._templates == {}


def test_pydicom_runs_once_per_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = dicomfile.file_header

    def counting(**kwargs: str) -> bytes:
        calls.append(kwargs["sop_instance_uid"])
        return real(**kwargs)

    monkeypatch.setattr(dicomfile, "file_header", counting)
    templates = MetaTemplates()
    for n in range(100, 200):
        templates.header(**_args(f"1.2.3.{n}"))
    assert len(calls) == 2  # the first real UID and the placeholder


def test_a_template_that_does_not_reproduce_pydicom_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dicomfile, "_instance_uid_at", lambda header, length: 140)  # wrong
    templates = MetaTemplates()
    for n in range(100, 110):
        assert templates.header(**_args(f"1.2.3.{n}")) == file_header(**_args(f"1.2.3.{n}"))
    assert list(templates._templates.values()) == [None]


def test_stored_files_carry_pydicoms_meta(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        for n in range(10, 20):
            uid = f"1.2.3.4.5.6.{n}"
            outcome = store(archive, dataset(uid), sop_uid=uid, calling_ae="SCU")
            assert outcome.status == SUCCESS
            raw = outcome.path.read_bytes()
            expected = file_header(**_args(uid, calling_ae="SCU"))
            assert raw[: len(expected)] == expected
