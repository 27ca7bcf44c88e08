"""UIDs are attacker-controlled: they never become a path that escapes the root."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import pytest
from archive_testlib import dataset, dcm_files, store

from dicomstore.archive import DATASET_MISMATCH, SUCCESS, Archive
from dicomstore.archive.layout import (
    instance_relpath,
    instance_relstr,
    named_as_filed,
    other_place,
    resolve,
    safe_component,
)
from dicomstore.uids import uid_unaddressable

SAFE_NAME = re.compile(r"[0-9.]{1,64}|x-[0-9a-f]{32}|no-(study|series|sop-instance)-uid")
HOSTILE = [
    "../../etc",
    "..",
    ".",
    "1.2/3",
    "/etc/passwd",
    "1.2\\3",
    "1.2.3\n",
    "1.2\x003",
    "1." * 32 + "1",  # 65 characters
    "1.2.é",
    "1.2.中",
    "1.2.\udce4",  # a byte that was not UTF-8, kept by surrogateescape
    "1.02.3",  # leading zero: not a conformant UID either
    " 1.2",
    "x-0123456789abcdef0123456789abcdef",  # looks like one of our derived names
]


@pytest.mark.parametrize("uid", ["1.2.3", "0", "1." * 31 + "12", "2.25.1234567890"])
def test_conformant_uids_are_used_as_they_are(uid: str) -> None:
    assert safe_component(uid, "none") == uid


@pytest.mark.parametrize("uid", HOSTILE, ids=repr)
def test_hostile_uids_get_derived_names(uid: str) -> None:
    name = safe_component(uid, "none")
    assert re.fullmatch(r"x-[0-9a-f]{32}", name)
    assert name == safe_component(uid, "none")  # stable
    assert name != safe_component(uid + "9", "none")


def test_missing_uids_get_named_folders() -> None:
    assert instance_relpath(None, "", "1.2") == PurePosixPath("no-study-uid/no-series-uid/1.2.dcm")


@pytest.mark.parametrize("rel", ["../x.dcm", "/etc/passwd", "a/../../b", ""])
def test_resolve_refuses_paths_outside_the_root(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ValueError):
        resolve(tmp_path, rel)


def _encoded(uid: str) -> bytes:
    """The bytes an SCU would put on the wire for ``uid``."""
    try:
        return uid.encode("latin-1", "surrogateescape")
    except UnicodeEncodeError:
        return uid.encode("utf-8")


def _assert_inside(archive: Archive, tmp_path: Path) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]  # nothing beside the root
    for path in dcm_files(archive.root):
        rel = path.relative_to(archive.root)
        if rel.parts[0] == ".tmp":
            continue
        assert len(rel.parts) == 3
        for part in (*rel.parts[:2], rel.stem):
            assert SAFE_NAME.fullmatch(part), part


@pytest.mark.parametrize("uid", HOSTILE, ids=repr)
@pytest.mark.parametrize("where", ["sop_uid", "study", "series"])
def test_hostile_uids_never_escape_the_root(
    tmp_path: Path, uid: str, where: str, index_engine: str
) -> None:
    with Archive(tmp_path / "root", fsync=False) as archive:
        kwargs = {"sop_uid": "1.2.3.4.5.6.7", "study": "1.2.3.4", "series": "1.2.3.4.5"}
        kwargs[where] = _encoded(uid)
        sop_uid = uid if where == "sop_uid" else "1.2.3.4.5.6.7"
        outcome = store(archive, dataset(**kwargs), sop_uid=sop_uid)
        if uid_unaddressable(uid):  # (review76 F3: no URL could name it)
            assert outcome.status == DATASET_MISMATCH, outcome
            assert "not a UID (PS3.5 9.1)" in outcome.error_comment
            _assert_inside(archive, tmp_path)
            assert dcm_files(archive.root) == [] and archive.instances() == []
            return
        assert outcome.status == SUCCESS, outcome
        _assert_inside(archive, tmp_path)
        assert outcome.path.is_relative_to(archive.root)
        row = archive.get_instance(sop_uid)
        assert row is not None and row["path"] == outcome.instance["path"]
        assert archive.path_of(sop_uid) == outcome.path
        assert archive.check() == []


def test_empty_sop_instance_uid_is_a900(tmp_path: Path) -> None:
    with Archive(tmp_path / "root") as archive:
        outcome = store(archive, dataset(sop_uid=""), sop_uid="")
        assert outcome.status == DATASET_MISMATCH
        _assert_inside(archive, tmp_path)
        assert dcm_files(archive.root) == []


def test_missing_study_and_series_are_refused_and_would_have_named_folders(
    tmp_path: Path,
) -> None:
    # PS3.4 B.1.1: no instance without its Study and Series IEs (A900); files stored
    # before that rule still have a safe place, found again by reindex
    with Archive(tmp_path / "root") as archive:
        outcome = store(archive, dataset(study=None, series=None))
        assert outcome.status == DATASET_MISMATCH
        assert dcm_files(archive.root) == []
    assert instance_relpath("", "", "1.2.3").parts[:2] == ("no-study-uid", "no-series-uid")


@pytest.mark.parametrize(
    ("study", "series", "sop"),
    [("1.2", "1.2.3", "1.2.3.4"), (None, "../x", "\u00e9"), ("a", None, "b")],
)
def test_every_place_the_archive_files_is_named_as_filed(study, series, sop) -> None:
    """review59 M4: start-up's look for stored instances takes these names only."""
    place = instance_relstr(study, series, sop)
    assert named_as_filed(place) and named_as_filed(other_place(place))


@pytest.mark.parametrize(
    "relpath",
    [
        "exports/2024/IMG0001.dcm",
        "lost+found/#1234/x.dcm",
        "1.2/1.2.3/IMG.dcm",
        "1.2/1.2.3/1.2.3.4.r.r.dcm",
        "1.2/1.2.3/4/5.dcm",
        "1.2/x-00/1.2.3.dcm",
        "1.2/1.2.3/1.2.3.4.txt",
    ],
)
def test_other_names_are_not(relpath: str) -> None:
    assert not named_as_filed(relpath)
