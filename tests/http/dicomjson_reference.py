"""The DICOM JSON encoder of WADO-RS metadata as it was before the fast one: pydicom's
``DataElement.to_json_dict`` on the data set read by ``read_stored`` (kept here, frozen,
as the reference :func:`dicomstore.http.instancejson.read_metadata` must equal byte
for byte)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement

from dicomstore.archive.filestorage import FileStorage
from dicomstore.archive.stored import read_stored
from dicomstore.http.dicomjson import BULK_THRESHOLD, log_cut, tag_key

_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _element_json(elem: DataElement, depth: int, max_depth: int, cut: list[int]) -> dict[str, Any]:
    """One attribute; a sequence's items only ``max_depth`` levels down (F.2.2): below,
    the sequence is given by its VR alone (DICOM JSON cannot say "not shown") and its
    tag added to ``cut``."""
    if elem.VR != "SQ":
        return elem.to_json_dict(None, 1 << 62)
    if depth + 1 >= max_depth:
        cut.append(int(elem.tag))
        return {"vr": "SQ"}
    items = [
        {tag_key(e.tag): _element_json(e, depth + 1, max_depth, cut) for e in item}
        for item in elem.value
    ]
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def _odd_numbers(raw: Any) -> dict[str, Any] | None:
    """The one departure from pydicom (review116 M1): an IS or DS with a value that is
    empty amid others, no number, or (IS) not whole, each value as the number it reads
    as, null when none (pydicom cut an IS "1.5" to 1 and gave nothing of the others);
    None for every other value (pydicom's)."""
    vr = str(raw.VR) if isinstance(raw, RawDataElement) and raw.VR else ""
    if vr not in ("IS", "DS") or not isinstance(raw.value, bytes):
        return None
    text = raw.value.decode("ascii", "replace").rstrip("\x00 ")
    if not text.strip():
        return None
    values: list[Any] = []
    lost = False  # (a value empty or no number: pydicom gave nothing of the attribute)
    for part in (p.strip() for p in text.split("\\")):
        try:
            number = float(part)
        except ValueError:
            values.append(None)
            lost = True
            continue
        if not math.isfinite(number):  # ("1e999", "nan": null, as pydicom's via finite)
            values.append(None)
        elif vr == "IS" and number.is_integer():
            values.append(int(number))
        else:
            values.append(number)
    cut = vr == "IS" and any(isinstance(v, float) for v in values)
    return {"vr": vr, "Value": values} if lost or cut else None


def read_metadata(
    path: Path,
    transfer_syntax_uid: str,
    bulk_uri: Callable[[int], str],
    tags: Iterable[int] | None = None,
    *,
    max_depth: int,
    cut: list[int] | None = None,
) -> dict[str, Any]:
    """DICOM JSON of a stored instance (file meta excluded): Pixel Data and top-level
    binary values over :data:`BULK_THRESHOLD` as BulkDataURI; only ``tags`` if given;
    nested sequences down to ``max_depth`` levels (the tags of those cut added to
    ``cut``, and a warning logged)."""
    storage = FileStorage(path.parent)
    stored = read_stored(storage, path.name, transfer_syntax_uid, defer_size=BULK_THRESHOLD)
    ds = stored.dataset
    wanted = None if tags is None else set(tags)
    out: dict[str, Any] = {}
    cut = [] if cut is None else cut
    for tag in list(ds.keys()):
        if wanted is not None and int(tag) not in wanted:
            continue
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length > BULK_THRESHOLD:
            vr = str(raw.VR) if raw.VR is not None else _dictionary_vr(int(tag))
            if vr in _BULK_VRS:  # left unread: never loaded to be sent as a URI
                out[tag_key(tag)] = {"vr": vr, "BulkDataURI": bulk_uri(int(tag))}
                continue
        odd = _odd_numbers(raw)
        if odd is not None:
            out[tag_key(tag)] = odd
            continue
        try:
            elem = ds[tag]
            big = elem.VR in _BULK_VRS and len(elem.value or b"") > BULK_THRESHOLD
            if big:
                out[tag_key(tag)] = {"vr": elem.VR, "BulkDataURI": bulk_uri(int(tag))}
            else:
                out[tag_key(tag)] = _element_json(elem, 0, max_depth, cut)
        except Exception:  # noqa: BLE001 - a value pydicom cannot decode: VR only
            out[tag_key(tag)] = {"vr": str(raw.VR or _dictionary_vr(int(tag)))}
    if cut:
        log_cut(path.name, max_depth)
    pixels = stored.pixels
    if pixels is not None and (wanted is None or pixels.tag in wanted):
        out[tag_key(pixels.tag)] = {"vr": pixels.vr, "BulkDataURI": bulk_uri(pixels.tag)}
    return dict(sorted(out.items()))
