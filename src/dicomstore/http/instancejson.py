"""WADO-RS metadata (PS3.18 10.4.1.1.2) of a stored instance: its DICOM JSON (Annex F).

:func:`read_metadata` reads the header once, straight from the file's bytes
(:mod:`~dicomstore.archive.rawheader`, a memory map: values past the header are never
read; from a storage without local files: the object's bytes), and encodes each
value with :mod:`~dicomstore.http.jsonvalues`. Pixel Data and every top-level binary
value larger than :data:`BULK_THRESHOLD` are sent as a BulkDataURI (F.2.6); other
binary values as InlineBinary (F.2.7); sequences as arrays of objects (F.2.5) down
to ``max_depth`` levels, below which a sequence is given by its VR alone (DICOM JSON
cannot say "not shown") and a warning is logged.

The answer is, byte for byte, the one pydicom's ``DataElement.to_json_dict`` gives
(tests/http/dicomjson_reference.py is that encoder, and the tests compare the two):
a top-level element holding a value :func:`~dicomstore.http.jsonvalues.value_json`
leaves to pydicom, and every element of a data set the walker does not read as
pydicom does, is made by pydicom from the data set it reads (:func:`_pydicom_json`).
"""

from __future__ import annotations

import io
import json
import mmap
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from dicomstore.archive.dicomfile import dataset_offset, encoding_of
from dicomstore.archive.rawheader import Element, Unsure, Walker
from dicomstore.archive.storage import Storage
from dicomstore.archive.stored import Stored, inflating, meta_from, read_stored
from dicomstore.http.dicomjson import (
    BULK_DATA_VRS,
    BULK_THRESHOLD,
    MAX_INLINE,
    MAX_INLINE_IN_ITEM,
    dictionary_vr,
    log_cut,
    tag_key,
    too_long,
)
from dicomstore.http.jsonvalues import TEXT_MEMO, attribute_text, finite, value_json
from dicomstore.inflation import DEFAULT_MAX_INFLATED, InflateError, TooLarge
from dicomstore.vr import BINARY_VRS

_IMPLICIT_PIXEL_VR = {0x7FE00008: "OF", 0x7FE00009: "OD", 0x7FE00010: "OW"}
_CHARSET = 0x00080005
_DEFAULT_ENCODINGS = ("iso8859",)
_DEFER = BULK_THRESHOLD  # what pydicom leaves unread
_KEYS: dict[int, str] = {}
_DICTIONARY: dict[int, str | None] = {}


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = _KEYS[tag] = tag_key(tag)
    return key


def _implicit_vr(tag: int) -> str | None:
    """The VR of an Implicit VR element, or None if pydicom decides it from context
    (private tags, ambiguous VRs)."""
    try:
        return _DICTIONARY[tag]
    except KeyError:
        pass
    try:
        vr: str | None = str(dictionary_VR(tag))
        if vr is not None and " or " in vr:
            vr = None
    except KeyError:
        group, elem = tag >> 16, tag & 0xFFFF
        vr = "LO" if group & 1 and 0x10 <= elem <= 0xFF else None
    _DICTIONARY[tag] = vr
    return vr


def _is_sequence(tag: int) -> bool:
    return _implicit_vr(tag) == "SQ"


class _Encoder:
    """One instance's values: its buffer and byte order."""

    def __init__(self, buf: Any, implicit: bool, little: bool, max_depth: int) -> None:
        self.buf, self.implicit, self.little, self.max_depth = buf, implicit, little, max_depth

    def encodings(self, elements: list[Element], parent: tuple[str, ...]) -> tuple[str, ...]:
        """The character sets of a data set (its own Specific Character Set, else its
        parent's), as pydicom's Dataset._character_set gives them."""
        for tag, _vr, start, length, _ in elements:
            if tag == _CHARSET:
                raw = self.buf[start : start + length]
                text = raw.decode("iso8859").rstrip(" \x00")
                if not text:
                    return parent
                values = text.split("\\")
                found = convert_encodings(values[0] if len(values) == 1 else values)
                return tuple(found)
        return parent

    def element(
        self, element: Element, depth: int, encodings: tuple[str, ...], cut: list[int]
    ) -> dict[str, Any] | None:
        """One attribute (as the reference's ``_element_json``), None if unsure."""
        tag, vr, start, length, items = element
        if vr is None:
            vr = _implicit_vr(tag)
            if vr is None:
                return None
        if vr != "SQ":
            if length > MAX_INLINE_IN_ITEM and depth:  # (in an item: review39 #4)
                return too_long("an item", tag, vr, length)
            return value_json(vr, self.buf[start : start + length], self.little, encodings)
        if depth + 1 >= self.max_depth:
            cut.append(tag)
            return {"vr": "SQ"}
        out = []
        for item in items or ():
            inner = self.encodings(item, encodings)
            made = {}
            for each in item:
                value = self.element(each, depth + 1, inner, cut)
                if value is None:
                    return None
                made[_key(each[0])] = value
            out.append(dict(sorted(made.items())))
        return {"vr": "SQ", "Value": out} if out else {"vr": "SQ"}


def read_metadata(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str | None,
    bulk_uri: Callable[[int], str],
    tags: Iterable[int] | None = None,
    *,
    max_depth: int,
    cut: list[int] | None = None,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
) -> dict[str, Any]:
    """DICOM JSON of the instance at ``key`` (file meta excluded): Pixel Data and top-level
    binary values over :data:`BULK_THRESHOLD` as BulkDataURI; only ``tags`` if given;
    nested sequences down to ``max_depth`` levels (the tags of those cut added to
    ``cut``, and a warning logged). A deflated data set is read from its inflated
    copy (``stored.inflated``, up to ``inflated_limit`` bytes: beyond,
    ``inflation.TooLarge``). ``transfer_syntax_uid`` None: the file meta's, read in
    the same opening of the file. Raises OSError or ValueError for a file that
    cannot be read."""
    made = _read(
        storage, key, transfer_syntax_uid, bulk_uri, tags, max_depth, cut, inflated_limit, False
    )
    assert isinstance(made, dict)
    return made


def read_metadata_text(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str,
    bulk_uri: Callable[[int], str],
    *,
    max_depth: int,
    cut: list[int] | None = None,
    inflated_limit: int = DEFAULT_MAX_INFLATED,
) -> str:
    """:func:`read_metadata` as the text ``json.dumps(..., ensure_ascii=False)``
    gives of it, made without the object: each attribute's text is memoised with
    its value (``jsonvalues.attribute_text``), as the instances of a series repeat
    most of them."""
    made = _read(
        storage, key, transfer_syntax_uid, bulk_uri, None, max_depth, cut, inflated_limit, True
    )
    assert isinstance(made, str)
    return made


def _read(
    storage: Storage,
    key: str,
    transfer_syntax_uid: str | None,
    bulk_uri: Callable[[int], str],
    tags: Iterable[int] | None,
    max_depth: int,
    cut: list[int] | None,
    inflated_limit: int,
    as_text: bool,
) -> dict[str, Any] | str:
    wanted = None if tags is None else set(tags)
    cut = [] if cut is None else cut
    buf: Any
    with storage.open(key) as fp:  # (once: the transfer syntax, if not given, from there)
        if transfer_syntax_uid is None:  # (the offset comes with the meta)
            start, _, meta = meta_from(fp)
            transfer_syntax_uid = str(meta.get("TransferSyntaxUID", ""))
        else:
            start = dataset_offset(fp)
        implicit, little, deflated = encoding_of(transfer_syntax_uid)
        if deflated:  # PS3.5 A.5: a raw deflate stream, inflated to a temporary and mapped
            try:
                with inflating(storage, fp, start, inflated_limit) as (copy, size):
                    buf = _mapped(copy) if size else b""
            except TooLarge:
                raise
            except InflateError as exc:
                name = key.rpartition("/")[2]
                raise ValueError(f"{name}: deflated data set unreadable: {exc}") from exc
            start = 0
        else:
            buf = _mapped(fp)
    try:
        try:
            walker = Walker(buf, implicit, little, _is_sequence, max_depth)
            elements, stop = walker.dataset(start, len(buf), top=True)
        except Unsure:
            stored = read_stored(
                storage, key, transfer_syntax_uid, defer_size=_DEFER, inflated_limit=inflated_limit
            )
            made = _all_by_pydicom(stored, key, bulk_uri, wanted, max_depth, cut)
            return json.dumps(made, ensure_ascii=False) if as_text else made
        encoder = _Encoder(buf, implicit, little, max_depth)
        encodings = encoder.encodings(elements, _DEFAULT_ENCODINGS)
        out: dict[str, Any] = {}
        texts: dict[int, str] = {}  # (as_text: "key": value, by tag)

        def put(tag: int, value: dict[str, Any]) -> None:
            if as_text:
                texts[tag] = f'"{_key(tag)}": {json.dumps(value, ensure_ascii=False)}'
            else:
                out[_key(tag)] = value

        fallback: Dataset | None = None
        keys, memo = _KEYS, TEXT_MEMO

        def one(element: Element) -> None:
            """An element's attribute: a BulkDataURI, a value, a sequence, pydicom's."""
            nonlocal fallback
            tag, vr, begin, length, items = element
            if length > BULK_THRESHOLD and length != 0xFFFFFFFF and tag != _CHARSET:
                bulk_vr = vr if vr is not None else dictionary_vr(tag)
                long_value = length > MAX_INLINE
                if bulk_vr in BINARY_VRS or (long_value and bulk_vr in BULK_DATA_VRS):
                    put(tag, {"vr": bulk_vr, "BulkDataURI": bulk_uri(tag)})  # never read
                    return
                if long_value and items is None:
                    put(tag, too_long(key, tag, bulk_vr, length))
                    return
            if vr is not None and items is None and tag in keys:  # the common case, inline
                raw = buf[begin : begin + length]
                if as_text:
                    text = attribute_text(tag, vr, raw, little, encodings)
                    if text is not None:
                        texts[tag] = text
                        return
                else:
                    value = value_json(vr, raw, little, encodings)
                    if value is not None:
                        out[keys[tag]] = value
                        return
            mine: list[int] = []
            attr = encoder.element(element, 0, encodings, mine)
            if attr is None:
                if fallback is None:
                    fallback = read_stored(
                        storage,
                        key,
                        transfer_syntax_uid,
                        defer_size=BULK_THRESHOLD,
                        inflated_limit=inflated_limit,
                    ).dataset
                mine = []
                attr = _pydicom_json(fallback, tag, bulk_uri, max_depth, mine)
            cut.extend(mine)
            put(tag, attr)

        if as_text and wanted is None:  # (the metadata cache's: the hot loop inline)
            inline = BULK_THRESHOLD
            for element in elements:
                tag, vr, begin, length, items = element
                if vr is not None and items is None and length <= inline:
                    raw = buf[begin : begin + length]
                    text = memo.get((tag, vr, raw, little, encodings))
                    if text is not None:  # (else not made yet, or pydicom's to make)
                        texts[tag] = text
                        continue
                one(element)
        else:
            for element in elements:
                if wanted is None or element[0] in wanted:
                    one(element)
        if cut:
            log_cut(key, max_depth)
        pixel = _pixel_data(buf, stop, implicit, little)
        if pixel is not None and (wanted is None or pixel[0] in wanted):
            put(pixel[0], {"vr": pixel[1], "BulkDataURI": bulk_uri(pixel[0])})
        if as_text:  # (keys of eight upper-case hex digits sort as their tags)
            return "{" + ", ".join(texts[tag] for tag in sorted(texts)) + "}"
        return dict(sorted(out.items()))
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _mapped(fp: BinaryIO) -> Any:
    """The bytes of ``fp``: a read-only memory map of its file, or (not a local file)
    read from its start."""
    try:
        fd = fp.fileno()
    except io.UnsupportedOperation:  # (not a local file: no memory map)
        fp.seek(0)
        return fp.read()
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def _pixel_data(buf: Any, pos: int, implicit: bool, little: bool) -> tuple[int, str] | None:
    """The tag and VR of the Pixel Data element at ``pos``, if there is one."""
    head = bytes(buf[pos : pos + 8])
    if len(head) < 8:
        return None
    group, elem = struct.unpack("<HH" if little else ">HH", head[:4])
    tag = group << 16 | elem
    if tag not in _IMPLICIT_PIXEL_VR:
        return None
    if implicit:
        return tag, _IMPLICIT_PIXEL_VR[tag]
    return tag, head[4:6].decode("ascii", "replace")


def _all_by_pydicom(
    stored: Stored,
    key: str,
    bulk_uri: Callable[[int], str],
    wanted: set[int] | None,
    max_depth: int,
    cut: list[int],
) -> dict[str, Any]:
    """The whole instance as pydicom reads it (what the walker was unsure of)."""
    ds = stored.dataset
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        if wanted is None or int(tag) in wanted:
            out[_key(int(tag))] = _pydicom_json(ds, int(tag), bulk_uri, max_depth, cut)
    if cut:
        log_cut(key, max_depth)
    pixels = stored.pixels
    if pixels is not None and (wanted is None or pixels.tag in wanted):
        out[_key(pixels.tag)] = {"vr": pixels.vr, "BulkDataURI": bulk_uri(pixels.tag)}
    return dict(sorted(out.items()))


def _pydicom_json(
    ds: Dataset, tag: int, bulk_uri: Callable[[int], str], max_depth: int, cut: list[int]
) -> dict[str, Any]:
    """One top-level attribute as pydicom converts it (a value it cannot decode: VR only)."""
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None and raw.length > BULK_THRESHOLD:
        vr = str(raw.VR) if raw.VR is not None else dictionary_vr(tag)
        long_value = raw.length > MAX_INLINE
        if vr in BINARY_VRS or (long_value and vr in BULK_DATA_VRS):
            return {"vr": vr, "BulkDataURI": bulk_uri(tag)}
        if long_value and vr != "SQ":
            return too_long(str(getattr(ds, "filename", "") or "?"), tag, vr, raw.length)
    try:
        elem = ds[tag]
        if elem.VR in BINARY_VRS and len(elem.value or b"") > BULK_THRESHOLD:
            return {"vr": elem.VR, "BulkDataURI": bulk_uri(tag)}
        return _element_json(elem, 0, max_depth, cut)
    except Exception:  # noqa: BLE001 - a value pydicom cannot decode: VR only
        return {"vr": str(raw.VR or dictionary_vr(tag))}


def _element_json(elem: DataElement, depth: int, max_depth: int, cut: list[int]) -> dict[str, Any]:
    if elem.VR != "SQ":
        if depth and _size(elem.value) > MAX_INLINE_IN_ITEM:  # (as _Encoder: review40 #7)
            return too_long("an item", int(elem.tag), str(elem.VR), _size(elem.value))
        return finite(elem.to_json_dict(None, 1 << 62))
    if depth + 1 >= max_depth:
        cut.append(int(elem.tag))
        return {"vr": "SQ"}
    items = [
        {tag_key(e.tag): _element_json(e, depth + 1, max_depth, cut) for e in item}
        for item in elem.value
    ]
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _size(value: Any) -> int:
    """About the bytes a decoded value took (its length; of a list, its items')."""
    if isinstance(value, bytes | bytearray | str):
        return len(value)
    if isinstance(value, Sequence):  # (a list, pydicom's MultiValue)
        return sum(len(str(v)) + 1 for v in value)
    return 0
