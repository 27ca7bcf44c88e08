"""The relational policy: one series in one study, one study of one patient.

PS3.3 A.1.2 (the DICOM information model): a Series belongs to exactly one
Study, a Study to exactly one Patient. Senders do reuse UIDs — a series UID
copied into another study, a study UID under another Patient ID — and an
archive that filed such an instance by its UID alone would show one
patient's image under another's study. ``on_relational_mismatch``:

``"reject"`` (default)
    A900 (Data Set does not match SOP Class, PS3.4 B.2.3) with the Offending
    Elements, when the index (or an instance earlier in the same batch) files
    the Series Instance UID under another Study Instance UID, or the Study
    Instance UID under another patient (Patient ID + Issuer of Patient ID; an
    empty Patient ID is a patient of its own study); and when a SOP Instance UID
    stored under another patient, study or series comes again and the stored
    copy is kept (``on_duplicate="keep"``: :func:`instance_elsewhere`). The Error
    Comment names the conflict but not the other patient (the sender is not told
    another patient's identity).
``"accept"``
    Stored, and indexed under its own study and patient (the index keys are
    surrogate, ``index.py``): nothing is ever listed under a study or patient
    it does not belong to, though a UID may then name two entities.

Checked by the publisher under the index write lock, so concurrent stores and
the members of one batch are decided as if one after the other.
"""

from __future__ import annotations

from typing import Any

from dicomstore.archive import outcome as st
from dicomstore.archive.index import Index
from dicomstore.archive.outcome import StoreOutcome, failure
from dicomstore.archive.schema import patient_key

RELATIONAL_POLICIES: tuple[str, ...] = ("reject", "accept")


class Relations:
    """The checks of one batch: the index, and the members already placed."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._series: dict[str, str] = {}  # series UID -> study UID, in this batch
        self._studies: dict[str, tuple[str, str, str]] = {}  # study UID -> patient

    def check(self, row: dict[str, Any], *, replacing: bool = False) -> StoreOutcome | None:
        """A900 when ``row`` contradicts the hierarchy; ``None`` when it fits.
        ``replacing``: the instance is stored and being replaced (it does not count)."""
        series, study = row.get("series_uid") or "", row.get("study_uid") or ""
        patient = patient_key(row)
        other_study = self._series.get(series)
        other_patient = self._studies.get(study)
        if other_study is not None and other_study != study:
            return series_elsewhere()
        if other_patient is not None and other_patient != patient:
            return study_elsewhere(other_patient[1] != patient[1])
        found = self.index.conflict(row, replacing=replacing)
        if found is None:
            return None
        if found[0] == "series":
            return series_elsewhere()
        return study_elsewhere(found[1][1] != patient[1])

    def add(self, row: dict[str, Any]) -> None:
        """``row`` is placed in this batch: later members must agree with it."""
        study = row.get("study_uid") or ""
        self._series[row.get("series_uid") or ""] = study
        self._studies[study] = patient_key(row)


def series_elsewhere() -> StoreOutcome:
    """A900: the Series Instance UID is filed under another study."""
    return failure(
        st.DATASET_MISMATCH,
        "Series Instance UID is already filed under another study",
        st.SERIES_INSTANCE_UID_TAG,
        st.STUDY_INSTANCE_UID_TAG,
    )


def study_elsewhere(issuer_differs: bool) -> StoreOutcome:
    """A900: the Study Instance UID is filed under another patient."""
    tags = [st.STUDY_INSTANCE_UID_TAG, st.PATIENT_ID_TAG]
    if issuer_differs:
        tags.append(st.ISSUER_OF_PATIENT_ID_TAG)
    return failure(
        st.DATASET_MISMATCH, "Study Instance UID is already filed under another patient", *tags
    )


#: The keys that file an instance, with the element each is sent in.
_FILED_UNDER = (
    ("patient_id", st.PATIENT_ID_TAG),
    ("issuer", st.ISSUER_OF_PATIENT_ID_TAG),
    ("study_uid", st.STUDY_INSTANCE_UID_TAG),
    ("series_uid", st.SERIES_INSTANCE_UID_TAG),
    ("sop_class_uid", st.SOP_CLASS_UID_TAG),
)


#: What the first key that differs says the copy is under.
_WHAT = {
    st.STUDY_INSTANCE_UID_TAG: "study",
    st.SERIES_INSTANCE_UID_TAG: "series",
    st.SOP_CLASS_UID_TAG: "SOP Class",
}


def instance_elsewhere(stored: dict[str, Any], row: dict[str, Any]) -> StoreOutcome | None:
    """A900 when ``row``, a copy of the instance ``stored`` that is kept, is filed
    under another patient, study or series, or is of another SOP Class; ``None`` when
    it is not (review88 F2: B000 "kept the copy stored" told the sender its image was
    stored, coerced, and a Storage Commitment then confirmed it, while the archive held
    another patient's data set only: a demographics correction sent again with the
    same UIDs; review98 R1: another SOP Class, which commitment then failed, 0119).
    Whatever ``--on-relational-mismatch`` says: that policy lets new instances into
    a study filed otherwise, never one copy stand for another (review98 R5)."""
    tags = [tag for key, tag in _FILED_UNDER if (stored.get(key) or "") != (row.get(key) or "")]
    if not tags:
        return None
    what = _WHAT.get(tags[0], "patient")
    return failure(
        st.DATASET_MISMATCH,
        f"SOP Instance UID is already stored under another {what}",
        st.SOP_INSTANCE_UID_TAG,
        *tags,
    )
