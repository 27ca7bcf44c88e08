"""C-FIND SCU: Patient Root and Study Root Query/Retrieve - FIND (PS3.4 C.4.1.2, PS3.7 9.1.2).

    async with dicomstore.connect(host, port, called_ae="PACS",
                                  contexts=dicomstore.find_contexts()) as assoc:
        query = dicomstore.find(assoc, {"PatientName": "DOE*", "StudyInstanceUID": ""},
                                level="STUDY")
        async for match in query:  # a pydicom Dataset per pending response
            print(match.StudyInstanceUID)

:func:`find` sends one C-FIND-RQ with an Identifier built from keys (a key
with a value is matched, an empty one is returned, PS3.4 C.2.2.1) or from a
pydicom Dataset, and yields each match (FF00, FF01) as it comes. After the
iteration :attr:`Find.status` is the final status: 0000, or FE00 after
:meth:`Find.cancel` (its C-CANCEL-RQ, PS3.7 9.3.2.3); a failure (A700, A900,
C000, 0122, 0124 ...) raises :class:`FindFailed` with the SCP's Error Comment.

Identifiers from keys are encoded by us, not by pydicom
(:func:`~dicomstore.services.query_identifier.encode_elements`): a matching key
is often no valid value of its VR (``*`` in a UI, ``20240101-`` in a DA, PS3.4
C.2.2.2), and the SCP judges it. Text goes out in UTF-8 with Specific Character Set
``ISO_IR 192`` (PS3.4 C.4.1.1.3.1), which also invites the SCP to answer in
it: DCMTK's dcmqrscp converts what it stored in another character set, and
fails to (it crashes, 3.6.7) when asked for the default repertoire.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from dicomstore import framing, uids
from dicomstore.aio.client import ClientAssociation, ContextSpec
from dicomstore.aio.invoker import Responses
from dicomstore.archive.attributes import parse_tag
from dicomstore.archive.matching import QueryError, date_time_bounds
from dicomstore.dimse import CFindRQ, CFindRSP
from dicomstore.dimse import status as st
from dicomstore.errors import AssociationAborted, AssociationError, DicomstoreError
from dicomstore.services.conversion import encode_dataset
from dicomstore.services.qr_classes import FIND_MODEL_LEVELS
from dicomstore.services.qr_operations import decode_identifier
from dicomstore.services.query_identifier import (
    BINARY_VRS,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    UNIQUE_KEY,
    UTF8,
    Element,
    encode_elements,
    text_bytes,
)

#: Information models by short name (``find --patient-root`` / ``--study-root``).
MODELS = {"patient": uids.PATIENT_ROOT_QR_FIND, "study": uids.STUDY_ROOT_QR_FIND}
#: Transfer syntaxes proposed for a FIND context, preferred first (PS3.5 A.1, A.2).
SYNTAXES = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)
_STRUCTURED = frozenset(("OB", "OD", "OF", "OL", "OV", "OW", "UN", "SV", "UV", "AT"))

#: A key of a request Identifier: tag, VR, value bytes.
Key = Element

log = logging.getLogger("dicomstore.client")


def describe(status: int) -> str:
    """A C-FIND status in the words of PS3.4 Table C.4-1 (else PS3.7 Annex C's)."""
    if status >> 12 == 0xC:
        return "Failed: Unable to process"
    return _FIND_TEXT.get(status, st.describe(status))


_FIND_TEXT = {
    st.OUT_OF_RESOURCES: "Refused: Out of Resources",
    st.DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Identifier does not match SOP Class",
    st.PENDING_WARNING: "Pending: optional keys not supported",
}


class FindFailed(DicomstoreError):
    """The SCP ended the C-FIND with a failure status (PS3.4 C.4.1.1.4)."""

    def __init__(
        self, status: int, error_comment: str | None, offending_element: tuple[int, ...] | None
    ) -> None:
        text = f"C-FIND failed: {status:04X} {describe(status)}"
        super().__init__(text + (f": {error_comment}" if error_comment else ""))
        self.status = status
        self.error_comment = error_comment
        self.offending_element = offending_element


def model_uid(model: str) -> str:
    """A FIND SOP Class UID from ``patient``, ``study`` or the UID itself."""
    uid = MODELS.get(model.lower(), model)
    if uid not in FIND_MODEL_LEVELS:
        raise ValueError(f"not a Q/R FIND information model: {model!r}")
    return uid


def find_contexts(*models: str) -> list[ContextSpec]:
    """Presentation contexts for C-FIND in these models (default: both)."""
    return [(model_uid(m), SYNTAXES) for m in (models or ("study", "patient"))]


def key_tag(name: str | int) -> int:
    """The tag of a key: a keyword, ``GGGG,EEEE``, ``(GGGG,EEEE)``, ``GGGGEEEE`` or an int."""
    if isinstance(name, int):
        return name
    tag = tag_for_keyword(name.strip())
    if tag is None:
        tag = parse_tag(name)
    if tag is None:
        raise ValueError(f"not a DICOM keyword or tag: {name!r}")
    return tag


def _vr(tag: int) -> str:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        raise ValueError(f"unknown attribute ({tag >> 16:04X},{tag & 0xFFFF:04X})") from None
    return vr.split(" or ")[0]  # e.g. "US or SS": the first


def _value(tag: int, vr: str, value: Any, encoding: str) -> bytes:
    name = keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    if value is None or value == "":
        return b""
    if vr == "SQ":
        raise ValueError(f"{name} is a sequence: only universal matching (no value)")
    if vr in BINARY_VRS:
        try:
            return b"".join(struct.pack("<" + BINARY_VRS[vr], v) for v in _numbers(vr, value))
        except (ValueError, struct.error):
            raise ValueError(f"not a {vr} value for {name}: {value!r}") from None
    if vr in _STRUCTURED:
        raise ValueError(f"{name} ({vr}) cannot be given a value here")
    for one in str(value).split("\\"):
        _check_text(name, vr, one)
    try:
        return text_bytes(vr, str(value), encoding)
    except UnicodeEncodeError as exc:  # (review48 L2: Python's codec message alone)
        bad = str(value)[exc.start : exc.end]
        raise ValueError(
            f"{name} {str(value)!r}: {bad!r} is not in the Specific Character Set"
            f" ({encoding}); give another one, or none (UTF-8, ISO_IR 192)"
        ) from None


def _numbers(vr: str, value: Any) -> list[int | float]:
    """The numbers of a binary VR's key value (a number, or text, ``\\`` between)."""
    items = [value] if isinstance(value, int | float) else str(value).split("\\")
    return [float(v) if BINARY_VRS[vr] in "fd" else int(v) for v in items]


#: The longest value of a text VR (PS3.5 Table 6.2-1; PN: per component group), in
#: characters (DA and TM: ``matching.date_time_bounds``).
_MAX_CHARS = {"AE": 16, "AS": 4, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "PN": 64, "SH": 16,
              "UI": 64, "DT": 26}  # fmt: skip


def _check_text(name: str, vr: str, value: str) -> None:
    """A query value its VR cannot hold is a ValueError (review48 L6: 'StudyDate=bad' and
    a 70-character Patient ID were sent as they were): too long, or a date or time
    (single, or a range PS3.4 C.2.2.2.5) that is none, as the index's matching says."""
    if value == "":
        return
    if vr in ("DA", "TM"):
        what = "a date (YYYYMMDD)" if vr == "DA" else "a time (HHMMSS.ffffff)"
        try:
            date_time_bounds(vr, value.replace(":", "") if vr == "TM" else value)
        except QueryError:
            range_ = "date range" if vr == "DA" else "time range"
            raise ValueError(f"{name}: not {what} or {range_}: {value!r}") from None
        return
    most = _MAX_CHARS.get(vr)
    if most is None:
        return
    for part in value.split("-") if vr == "DT" else [value]:
        if vr == "PN":
            if any(len(group) > most for group in part.split("=")):
                raise ValueError(f"{name}: a name group over {most} characters: {value!r}")
        elif len(part) > most:
            raise ValueError(f"{name}: over {most} characters ({vr}): {value[:80]!r}")


def _path_steps(path: str) -> list[tuple[int, int | None]]:
    """``Seq[0].Inner[1].Leaf`` (keywords or tags, as findscu's and pynetdicom's ``-k``)
    as (tag, item index) steps, the leaf's index None; ValueError if it is none."""
    steps: list[tuple[int, int | None]] = []
    parts = path.split(".")
    for n, part in enumerate(parts):
        name, bracket, rest = part.partition("[")
        last = n == len(parts) - 1
        if bracket:
            if last or not rest.endswith("]") or not rest[:-1].isdigit():
                raise ValueError(f"not a sequence path (Seq[0].Keyword): {path!r}")
            index: int | None = int(rest[:-1])
        elif not last:
            raise ValueError(f"not a sequence path (Seq[0].Keyword): {path!r}")
        else:
            index = None
        tag = key_tag(name)
        if index is not None and _vr(tag) != "SQ":
            raise ValueError(f"{keyword_for_tag(tag) or name} is not a sequence: {path!r}")
        steps.append((tag, index))
    return steps


def _sequence_keys(paths: Mapping[str, Any], encoding: str) -> dict[int, Any]:
    """Keys inside sequence items (PS3.4 C.2.2.2.6), by their top-level sequence's tag:
    each a pydicom ``DataElement`` of items holding the keys, items made as the
    indexes ask; a leaf's value checked as a top-level key's is."""
    from pydicom.dataelem import DataElement
    from pydicom.sequence import Sequence

    top: dict[int, Dataset] = {}
    for path, value in paths.items():
        steps = _path_steps(path)
        holder = top.setdefault(steps[0][0], Dataset())
        for tag, index in steps[:-1]:
            if tag not in holder:
                holder.add(DataElement(tag, "SQ", Sequence()))
            items = holder[tag].value
            while len(items) <= (index or 0):
                items.append(Dataset())
            holder = items[index or 0]
        tag = steps[-1][0]
        vr = _vr(tag)
        _value(tag, vr, value, encoding)  # (a ValueError as for a top-level key)
        text = "" if value is None else str(value)
        if vr == "SQ":
            holder.add(DataElement(tag, vr, Sequence()))
        elif vr in BINARY_VRS and text:
            numbers = _numbers(vr, text)
            holder.add(DataElement(tag, vr, numbers if len(numbers) > 1 else numbers[0]))
        else:
            holder.add(DataElement(tag, vr, text))
    return {tag: ds[tag] for tag, ds in top.items()}


def identifier_keys(keys: Mapping[str | int, Any], level: str | None = None) -> list[Key]:
    """The elements of a request Identifier: Query/Retrieve Level (``level``, or a
    ``QueryRetrieveLevel`` key), then each key in tag order; a key with no value
    (``""`` or ``None``) is a return key. The level's unique key is added as a return
    key when not given. Text values are str (several separated by ``\\``),
    binary ones numbers. Specific Character Set is ``ISO_IR 192`` (UTF-8) unless
    given (an empty one: the default repertoire). Raises ValueError for an
    unknown key or a value its VR cannot hold."""
    tagged: dict[int, Any] = {}
    paths: dict[str, Any] = {}
    for name, value in keys.items():
        if isinstance(name, str) and "[" in name:
            paths[name] = value
        else:
            tagged[key_tag(name)] = value
    given_level = tagged.pop(QUERY_RETRIEVE_LEVEL, None)
    if level and given_level and str(given_level).upper() != level.upper():
        raise ValueError(f"two Query/Retrieve Levels: {level} and {given_level}")
    level = str(level or given_level or "").upper()
    if level not in UNIQUE_KEY:
        raise ValueError(f"Query/Retrieve Level {level!r}: use PATIENT, STUDY, SERIES or IMAGE")
    tagged[QUERY_RETRIEVE_LEVEL] = level
    tagged.setdefault(UNIQUE_KEY[level], "")
    charset = tagged.setdefault(SPECIFIC_CHARACTER_SET, UTF8)
    encoding = _python_encoding(str(charset or ""))
    nested = _sequence_keys(paths, encoding)
    return [
        (tag, "SQ", nested[tag])
        if tag in nested
        else (tag, _vr(tag), _value(tag, _vr(tag), tagged[tag], encoding))
        for tag in sorted(tagged.keys() | nested.keys())
    ]


def _python_encoding(charset: str) -> str:
    if not charset.strip():
        return "ascii"
    from pydicom.charset import convert_encodings

    return convert_encodings(charset.split("\\"))[-1]


def encode_query(query: Dataset | list[Key], transfer_syntax: str) -> bytes:
    """A request Identifier: a pydicom Dataset as it is, or keys of :func:`identifier_keys`."""
    if isinstance(query, Dataset):
        return encode_dataset(query, transfer_syntax)
    return encode_elements(query, transfer_syntax)


class Find:
    """One C-FIND (see the module notes): ``async for match in find``; once.

    After the iteration: :attr:`status` (0000 or FE00), :attr:`matches`,
    :attr:`warnings` (matches answered FF01: optional keys not matched),
    :attr:`malformed` (pending responses whose Identifier does not frame as a data
    set in the context's syntax, PS3.5 7.1: skipped and logged, never given as a
    match: a value cut short read as a shorter UID; review38scu #7).
    """

    def __init__(
        self,
        assoc: ClientAssociation,
        query: Dataset | list[Key],
        model: str,
        priority: int = 0,
    ) -> None:
        self.assoc = assoc
        self.query = query
        self.sop_class_uid = model_uid(model)
        self.priority = priority
        self.status: int | None = None
        self.error_comment: str | None = None
        self.matches = 0
        self.warnings = 0
        self.malformed = 0
        self._responses: Responses | None = None
        self._cancel_sent = False
        self._started = False

    @property
    def cancelled(self) -> bool:
        """The SCP ended the C-FIND with FE00 (Cancel)."""
        return self.status == st.CANCEL

    async def cancel(self) -> None:
        """Send a C-CANCEL-RQ (once); keep iterating for the matches still coming
        and the final response (FE00, or the status the SCP had already sent)."""
        if self._responses is None or self.status is not None or self._cancel_sent:
            return
        self._cancel_sent = True
        await self.assoc.cancel(self._responses)

    def __aiter__(self) -> AsyncIterator[Dataset]:
        if self._started:
            raise RuntimeError("a Find is iterated once")
        self._started = True
        return self._run()

    async def _run(self) -> AsyncIterator[Dataset]:
        ctx = self.assoc.context_for(self.sop_class_uid)
        if ctx is None:
            raise AssociationError(
                f"the peer did not accept {uids.uid_name(self.sop_class_uid)} (C-FIND)"
            )
        ts = ctx.transfer_syntax
        data = encode_query(self.query, ts)
        rq = CFindRQ(self.assoc.next_message_id(), self.sop_class_uid, self.priority)
        self._responses = responses = await self.assoc.invoke(ctx.id, rq, data)
        try:
            async for rsp, identifier in responses:
                if not isinstance(rsp, CFindRSP):
                    await self.assoc.abort()
                    raise AssociationAborted(
                        f"the peer answered a C-FIND with a {type(rsp).__name__}"
                    )
                if rsp.status in (st.PENDING, st.PENDING_WARNING):
                    if identifier is None:  # PS3.7 9.1.2.1.6: a pending response has one
                        continue
                    why = _malformed(identifier, ts)
                    if why is not None:
                        self.malformed += 1
                        log.warning("a C-FIND match skipped: its Identifier %s", why)
                        continue
                    self.matches += 1
                    self.warnings += rsp.status == st.PENDING_WARNING
                    yield decode_identifier(identifier, ts, check=False)
                    continue
                self.status, self.error_comment = rsp.status, rsp.error_comment
                if st.category(rsp.status) == "failure":
                    raise FindFailed(rsp.status, rsp.error_comment, rsp.offending_element)
        finally:
            responses.close()


def find(
    assoc: ClientAssociation,
    query: Dataset | Mapping[str | int, Any] | list[Key],
    *,
    level: str | None = None,
    model: str = "study",
    priority: int = 0,
) -> Find:
    """A C-FIND on ``assoc`` (module notes): ``query`` is a pydicom Dataset (sent
    as it is), keys for :func:`identifier_keys` (with ``level``) or what it
    returned; ``model``
    ``study`` (Study Root), ``patient`` (Patient Root) or a FIND SOP Class UID,
    proposed with :func:`find_contexts`."""
    if isinstance(query, Dataset | list):
        return Find(assoc, query, model, priority)
    return Find(assoc, identifier_keys(query, level), model, priority)


def _malformed(identifier: bytes, ts: str) -> str | None:
    """Why ``identifier`` is not one data set in ``ts`` (None if it is): its elements
    walked to its last byte (:func:`dicomstore.framing.walk`)."""
    try:
        src = framing.FileSource(framing.stream_pread(io.BytesIO(identifier)), len(identifier))
        walked = framing.walk(src, 0, ts == uids.IMPLICIT_VR_LE, ts != uids.EXPLICIT_VR_BE)
    except framing.FramingError as exc:
        return f"does not frame: {exc}"
    if walked.end != len(identifier):
        return f"ends at byte {walked.end} of {len(identifier)}"
    return None
