"""Hierarchy integrity (PS3.4 B.1.1, PS3.3 A.1.2): required Study/Series UIDs, one
series in one study, one study of one patient (``on_relational_mismatch``), an
empty Patient ID never merged across studies, an older index rebuilt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from archive_testlib import dataset, store

from dicomstore.archive import DATASET_MISMATCH, SUCCESS, Archive
from dicomstore.archive.query import Exact
from dicomstore.archive.reader import ArchiveReader
from dicomstore.archive.relations import Relations
from dicomstore.archive.schema import SchemaError

STUDY_TAG, SERIES_TAG, PATIENT_TAG, ISSUER_TAG = 0x0020000D, 0x0020000E, 0x00100020, 0x00100021
A_STUDY, B_STUDY, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.1.1"


def alpha(sop: str = "1.2.3.1", **kw) -> bytes:
    return dataset(sop, patient_id="A", patient_name="ALPHA^A", study=A_STUDY, **kw)


def beta(sop: str = "1.2.3.2", **kw) -> bytes:
    kw.setdefault("study", B_STUDY)
    return dataset(sop, patient_id="B", patient_name="BETA^B", **kw)


@pytest.fixture
def archive(tmp_path: Path):
    with Archive(tmp_path / "root", fsync=False) as archive:
        yield archive


@pytest.fixture
def accepting(tmp_path: Path):
    with Archive(tmp_path / "root", fsync=False, on_relational_mismatch="accept") as archive:
        yield archive


def test_series_of_another_study_is_refused_with_offending_elements(archive: Archive) -> None:
    assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    outcome = store(archive, beta(series=SERIES), sop_uid="1.2.3.2")
    assert outcome.status == DATASET_MISMATCH
    assert outcome.offending_element == (SERIES_TAG, STUDY_TAG)
    assert "another study" in outcome.error_comment
    assert archive.get_instance("1.2.3.2") is None
    reader = ArchiveReader(archive.root)
    assert [(s["study_uid"], s["n_instances"]) for s in reader.studies()] == [(A_STUDY, 1)]
    assert archive.check() == []


def test_study_of_another_patient_is_refused(archive: Archive) -> None:
    assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    outcome = store(archive, beta(study=A_STUDY, series=SERIES + ".2"), sop_uid="1.2.3.2")
    assert outcome.status == DATASET_MISMATCH
    assert outcome.offending_element == (STUDY_TAG, PATIENT_TAG)
    assert "another patient" in outcome.error_comment
    assert "B" not in outcome.error_comment.split()  # the other patient is not named


def test_same_patient_id_other_issuer_is_another_patient(archive: Archive) -> None:
    hosp1 = {ISSUER_TAG: ("LO", "HOSP1")}
    assert store(archive, alpha(extra=hosp1), sop_uid="1.2.3.1").status == SUCCESS
    outcome = store(
        archive, alpha("1.2.3.9", extra={ISSUER_TAG: ("LO", "HOSP2")}), sop_uid="1.2.3.9"
    )
    assert outcome.status == DATASET_MISMATCH
    assert outcome.offending_element == (STUDY_TAG, PATIENT_TAG, ISSUER_TAG)
    # the same issuer is the same patient
    assert store(archive, alpha("1.2.3.8", extra=hosp1), sop_uid="1.2.3.8").status == SUCCESS
    rows = ArchiveReader(archive.root).patients()
    assert [(p["patient_id"], p["issuer"], p["n_instances"]) for p in rows] == [("A", "HOSP1", 2)]


def test_accept_files_each_under_its_own_study_and_patient(accepting: Archive) -> None:
    assert store(accepting, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    assert store(accepting, beta(series=SERIES), sop_uid="1.2.3.2").status == SUCCESS
    assert store(accepting, beta("1.2.3.3", study=A_STUDY), sop_uid="1.2.3.3").status == SUCCESS
    reader = ArchiveReader(accepting.root)
    studies = {(s["study_uid"], s["patient_id"]): s["n_instances"] for s in reader.studies()}
    assert studies == {(A_STUDY, "A"): 1, (B_STUDY, "B"): 1, (A_STUDY, "B"): 1}
    # nothing of BETA is listed under ALPHA's study and patient, and the reverse
    second = reader.instances(StudyInstanceUID=B_STUDY)
    assert [(r["sop_instance_uid"], r["patient_name"]) for r in second] == [("1.2.3.2", "BETA^B")]
    series = reader.series(SeriesInstanceUID=SERIES)
    assert sorted((s["study_uid"], s["n_instances"]) for s in series) == [
        (A_STUDY, 1),
        (B_STUDY, 1),
    ]
    alphas = reader.instances(PatientID="A")
    assert [r["sop_instance_uid"] for r in alphas] == ["1.2.3.1"]
    assert accepting.check() == []
    assert accepting.reindex() == 3  # the files say the same
    assert {(s["study_uid"], s["patient_id"]) for s in reader.studies()} == set(studies)


def test_replace_may_move_the_only_instance_of_a_series(tmp_path: Path) -> None:
    with Archive(tmp_path / "root", fsync=False, on_duplicate="replace") as archive:
        assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
        # the same instance, corrected to patient B's study: it was the series' only one
        assert store(archive, beta("1.2.3.1", series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
        row = archive.get_instance("1.2.3.1")
        assert (row["study_uid"], row["patient_id"]) == (B_STUDY, "B")
        assert [s["study_uid"] for s in ArchiveReader(archive.root).studies()] == [B_STUDY]
        assert archive.check() == []


@pytest.mark.parametrize(
    ("missing", "tag"),
    [("study", STUDY_TAG), ("series", SERIES_TAG)],
)
@pytest.mark.parametrize("empty", [False, True])
def test_study_and_series_uids_are_required(
    archive: Archive, missing: str, tag: int, empty: bool
) -> None:
    data = dataset("1.2.3.1", **{missing: b"" if empty else None})
    outcome = store(archive, data, sop_uid="1.2.3.1")
    assert outcome.status == DATASET_MISMATCH
    assert outcome.offending_element == (tag,)
    assert "missing" in outcome.error_comment
    assert archive.instances() == []
    assert archive.check() == []


def test_empty_patient_ids_are_never_merged(archive: Archive) -> None:
    for n, study in enumerate(("1.2.9.1", "1.2.9.2")):
        data = dataset(f"1.2.9.{n}.1", patient_id="", study=study, series=study + ".1")
        assert store(archive, data, sop_uid=f"1.2.9.{n}.1").status == SUCCESS
    reader = ArchiveReader(archive.root)
    patients = reader.patients()
    assert [(p["patient_id"], p["scope"], p["n_studies"]) for p in patients] == [
        ("", "1.2.9.1", 1),
        ("", "1.2.9.2", 1),
    ]
    # an exact empty Patient ID selects no one in particular, never "everything" by accident
    assert reader.count("study", {"PatientID": Exact("X")}) == 0
    assert reader.count("study", {"PatientID": Exact("")}) == 2


def test_relations_of_one_batch() -> None:
    class NoIndex:
        def conflict(self, row, replacing=False):  # the index knows nothing yet
            return None

    relations = Relations(NoIndex())  # type: ignore[arg-type]
    first = {"patient_id": "A", "issuer": None, "study_uid": A_STUDY, "series_uid": SERIES}
    assert relations.check(first) is None
    relations.add(first)
    assert relations.check({**first, "study_uid": B_STUDY}).offending_element == (
        SERIES_TAG,
        STUDY_TAG,
    )
    other = {**first, "patient_id": "B", "series_uid": SERIES + ".2"}
    assert relations.check(other).offending_element == (STUDY_TAG, PATIENT_TAG)
    assert relations.check({**first, "series_uid": SERIES + ".3"}) is None


V1_SCHEMA = """
CREATE TABLE patient (patient_id TEXT PRIMARY KEY, patient_name TEXT, birth_date TEXT, sex TEXT);
CREATE TABLE study (study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL);
CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL);
CREATE TABLE instance (sop_instance_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL);
PRAGMA user_version=1;
"""


@pytest.mark.sqlite_index
def test_an_index_of_schema_1_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Archive(root, fsync=False, on_relational_mismatch="accept") as archive:
        store(archive, alpha(series=SERIES), sop_uid="1.2.3.1")
        store(archive, beta(series=SERIES), sop_uid="1.2.3.2")
    index = root / "index.sqlite"
    index.unlink()
    db = sqlite3.connect(index)
    db.executescript(V1_SCHEMA)  # (as dicomstore 0.1 made it, rows keyed by UID alone)
    db.close()
    with pytest.raises(SchemaError, match="dicomstore reindex"):
        ArchiveReader(root)
    with Archive(root, fsync=False) as archive:  # (files of an index of another schema:
        assert archive.reindexed == 2  # taken in as they were, not judged; review55 M2)
        assert archive.check() == []
    studies = ArchiveReader(root).studies()
    assert sorted((s["study_uid"], s["patient_id"], s["n_instances"]) for s in studies) == [
        (A_STUDY, "A", 1),
        (B_STUDY, "B", 1),
    ]


def test_a_remembered_check_is_forgotten_when_another_writer_commits(archive: Archive) -> None:
    assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    assert store(archive, alpha("1.2.3.3", series=SERIES), sop_uid="1.2.3.3").status == SUCCESS
    # another process (an "accept" server, a reindex) files the series under B's study
    with Archive(archive.root, fsync=False, on_relational_mismatch="accept") as other:
        assert store(other, beta(series=SERIES), sop_uid="1.2.3.2").status == SUCCESS
    outcome = store(archive, alpha("1.2.3.4", series=SERIES), sop_uid="1.2.3.4")
    assert outcome.status == DATASET_MISMATCH


def test_a_remembered_check_is_forgotten_when_its_own_writer_contradicts_it(
    archive: Archive,
) -> None:
    assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    assert store(archive, alpha("1.2.3.3", series=SERIES), sop_uid="1.2.3.3").status == SUCCESS
    row = {**archive.get_instance("1.2.3.1"), "sop_instance_uid": "1.2.3.2", "path": "x/y/z.dcm"}
    with archive.index.lock:  # as a reindex in this process would, without checks
        archive.index.begin()
        archive.index.put({**row, "study_uid": B_STUDY, "patient_id": "B"})
        archive.index.commit()
    outcome = store(archive, alpha("1.2.3.4", series=SERIES), sop_uid="1.2.3.4")
    assert outcome.status == DATASET_MISMATCH


@pytest.mark.parametrize("ours, theirs", [("MÜLLER", "MÜLLEX"), ("Ü1", "1")])
def test_non_ascii_patient_ids_are_compared_as_stored(
    archive: Archive, ours: str, theirs: str
) -> None:
    """The relational check compares non-ASCII keys as the index stores them (the
    ASCII fast path of ``Index.conflict`` must not skip them): the same patient
    fits, another is refused, whether the check was remembered or asked of the index."""
    first = dataset("1.2.3.1", patient_id=ours, study=A_STUDY, series=SERIES)
    assert store(archive, first, sop_uid="1.2.3.1").status == SUCCESS
    again = dataset("1.2.3.2", patient_id=ours, study=A_STUDY, series=SERIES)
    assert store(archive, again, sop_uid="1.2.3.2").status == SUCCESS  # remembered
    archive.index.forget()
    other_series = dataset("1.2.3.3", patient_id=ours, study=A_STUDY, series=SERIES + ".2")
    assert store(archive, other_series, sop_uid="1.2.3.3").status == SUCCESS  # asked
    other = dataset("1.2.3.4", patient_id=theirs, study=A_STUDY, series=SERIES + ".3")
    outcome = store(archive, other, sop_uid="1.2.3.4")
    assert outcome.status == DATASET_MISMATCH
    assert outcome.offending_element == (STUDY_TAG, PATIENT_TAG)
    assert archive.get_instance("1.2.3.3")["patient_id"] == ours


CHARSET_TAG = 0x00080005


@pytest.mark.parametrize(
    ("theirs", "charset"),
    [
        ("A\t", None),  # a TAB: str.strip() took it for padding
        ("A\x1f", None),
        ("A\xa0", "ISO_IR 100"),  # NBSP
        ("A\x85", "ISO_IR 100"),  # NEL
    ],
    ids=["tab", "unit-separator", "nbsp", "nel"],
)
def test_patient_ids_that_differ_only_past_spaces_are_other_patients(
    archive: Archive, theirs: str, charset: str | None
) -> None:
    """review80 F3: the index stripped any whitespace, so "A" and "A<TAB>" (another
    patient for pydicom and DCMTK) were one: a patient-level C-MOVE or delete took
    both. Only spaces are padding (PS3.5 6.2)."""
    extra = {CHARSET_TAG: ("CS", charset)} if charset else None
    assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    other = dataset("1.2.3.2", patient_id=theirs, study=A_STUDY, series=SERIES, extra=extra)
    assert store(archive, other, sop_uid="1.2.3.2").status == DATASET_MISMATCH
    elsewhere = dataset("1.2.3.3", patient_id=theirs, study=B_STUDY, extra=extra)
    assert store(archive, elsewhere, sop_uid="1.2.3.3").status == SUCCESS
    assert len(ArchiveReader(archive.root).patients()) == 2
    spaced = dataset("1.2.3.4", patient_id=" A ", study=A_STUDY, series=SERIES)
    assert store(archive, spaced, sop_uid="1.2.3.4").status == SUCCESS  # (spaces: padding)


def test_undecodable_patient_ids_are_not_made_one(archive: Archive) -> None:
    """review80 F3: two Patient IDs whose bytes are not UTF-8 under ISO_IR 192 were both
    decoded to "Y\ufffd", one patient; their bytes are kept apart (escaped)."""
    utf8 = {CHARSET_TAG: ("CS", "ISO_IR 192")}
    first = dataset("1.2.3.1", patient_id="Y\xff", study=A_STUDY, series=SERIES, extra=utf8)
    assert store(archive, first, sop_uid="1.2.3.1").status == SUCCESS
    other = dataset("1.2.3.2", patient_id="Y\xfe", study=A_STUDY, series=SERIES, extra=utf8)
    assert store(archive, other, sop_uid="1.2.3.2").status == DATASET_MISMATCH
    assert archive.get_instance("1.2.3.1")["patient_id"] == "Y\\xff"


def test_a_uid_with_a_leading_space_is_the_uid_readers_see(archive: Archive) -> None:
    """review80 F4: pydicom and DCMTK read " 1.2" as "1.2"; the index kept the space, so
    another patient's instance of the same study passed the relational check."""
    assert store(archive, alpha(series=SERIES), sop_uid="1.2.3.1").status == SUCCESS
    spaced = beta(study=" " + A_STUDY, series=SERIES + ".2")
    outcome = store(archive, spaced, sop_uid="1.2.3.2")
    assert outcome.status == DATASET_MISMATCH and "another patient" in outcome.error_comment
    same = alpha("1.2.3.3", series=" " + SERIES)
    assert store(archive, same, sop_uid=" 1.2.3.3").status == SUCCESS
    assert archive.get_instance("1.2.3.3")["series_uid"] == SERIES
