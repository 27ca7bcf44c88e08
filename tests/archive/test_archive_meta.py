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


def _pydicom_header(**args: str) -> bytes:
    """What pydicom's ``write_file_meta_info`` writes for these values (the reference
    :func:`file_header` is held to, without loading pydicom itself)."""
    from pydicom import config
    from pydicom.dataelem import DataElement
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    from dicomstore.archive.layout import uid_bytes
    from dicomstore.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    for tag, vr, value in (
        (0x00020002, "UI", args["sop_class_uid"]),
        (0x00020003, "UI", args["sop_instance_uid"]),
        (0x00020010, "UI", args["transfer_syntax_uid"]),
        (0x00020012, "UI", IMPLEMENTATION_CLASS_UID),
        (0x00020013, "SH", IMPLEMENTATION_VERSION_NAME),
        (0x00020016, "AE", args["calling_ae"].strip()),
        (0x00020017, "AE", args["calling_ae"].strip()),
        (0x00020018, "AE", args["called_ae"].strip()),
    ):
        if value or vr == "UI":
            text = uid_bytes(value).decode("latin-1")
            meta.add(DataElement(tag, vr, text, validation_mode=config.IGNORE))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(dicomfile.PREAMBLE + dicomfile.PREFIX)
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue()


#: Latin-1 text, with the backslashes and spaces that pydicom splits and strips.
_TEXT = hs.text(
    hs.one_of(hs.characters(min_codepoint=0, max_codepoint=255), hs.sampled_from("\\ ")),
    max_size=70,
)


@settings(max_examples=1000, deadline=None)
@given(uid=_TEXT, sop_class=_TEXT, ts=_TEXT, calling=_TEXT, called=_TEXT)
def test_file_header_is_what_pydicom_writes(
    uid: str, sop_class: str, ts: str, calling: str, called: str
) -> None:
    args = {
        "sop_class_uid": sop_class,
        "sop_instance_uid": uid,
        "transfer_syntax_uid": ts,
        "calling_ae": calling,
        "called_ae": called,
    }
    assert file_header(**args) == _pydicom_header(**args)


def test_encoding_of_is_pydicoms_for_every_transfer_syntax_and_others() -> None:
    from pydicom._uid_dict import UID_dictionary
    from pydicom.uid import UID

    known = [uid for uid, entry in UID_dictionary.items() if entry[1] == "Transfer Syntax"]
    others = [CT, PRIVATE_TS, "", " 1.2.840.10008.1.2 ", "1.2.840.10008.1.2\0", "x"]
    for text in (*known, *others):
        uid = UID(text, validation_mode=0)
        expected = (
            (uid.is_implicit_VR, uid.is_little_endian, uid.is_deflated)
            if uid.is_transfer_syntax
            else (False, True, False)
        )
        assert dicomfile.encoding_of(text) == expected, text


def test_a_value_too_long_for_its_vr_is_written_as_un_as_pydicom_does() -> None:
    args = _args("1" * 70001, calling_ae="A" * 70000)  # (a command set allows them)
    header = file_header(**args)
    assert header == _pydicom_header(**args)
    at = header.index(b"\x02\x00\x03\x00")
    assert header[at + 4 : at + 6] == b"UN"
