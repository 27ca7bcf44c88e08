"""The DICOMweb section of the conformance statement (PS3.2 Annex K: the web services
of PS3.18 this server offers, their media types and transfer syntaxes, and where it
departs from the standard; review116 L8, M4: only the README said so)."""

from __future__ import annotations

from dicomstore import uids
from dicomstore.conformance.tables import table

#: (transaction, resources, media types answered) of each service.
_SERVICES: tuple[tuple[str, str, str], ...] = (
    (
        "Search (QIDO-RS, 10.6)",
        "`/studies`, `/series`, `/instances`, `/studies/{study}/series`, "
        "`/studies/{study}/instances`, `/studies/{study}/series/{series}/instances`",
        "`application/dicom+json`",
    ),
    (
        "Retrieve (WADO-RS, 10.4): instances",
        "`/studies/{study}`, `.../series/{series}`, `.../instances/{instance}`",
        '`multipart/related; type="application/dicom"`, `application/dicom` (one '
        "instance), `application/zip` (as stored)",
    ),
    (
        "Retrieve: metadata",
        "`.../metadata` of a study, series or instance",
        '`application/dicom+json`, `multipart/related; type="application/dicom+xml"` '
        "(the Native DICOM Model, a part per instance; of an instance, also "
        "`application/dicom+xml`)",
    ),
    (
        "Retrieve: frames, bulk data",
        "`.../instances/{instance}/frames/{list}`, `.../bulkdata/{tag}`",
        '`multipart/related; type="application/octet-stream"` (uncompressed) or '
        "the stored syntax's media type (`image/jpeg`, `image/jp2`, `image/jls`, "
        "`image/dicom-rle` ...)",
    ),
    (
        "Retrieve: rendered, thumbnail",
        "`.../rendered`, `.../thumbnail` of a study, series, instance or frame",
        "`image/jpeg` (default), `image/png`",
    ),
    (
        "Store (STOW-RS, 10.5)",
        "`POST /studies`, `POST /studies/{study}`",
        'request `multipart/related; type="application/dicom"`; response '
        "`application/dicom+json` or `application/dicom+xml`",
    ),
)

#: Where this server departs from PS3.18, or leaves what it may do undone.
DEPARTURES: tuple[str, ...] = (
    "`transfer-syntax=*` gives each instance as stored, byte for byte: one stored in "
    "Implicit VR Little Endian or Explicit VR Big Endian too, which PS3.18 8.7.3 keeps "
    "off web services (asking for either by name is 406).",
    "A rendered study or series is one image, of its middle instance (the first that "
    "can be rendered, trying a few); a rendered frame list names one frame.",
    "Rendering draws no annotation (`annotation` is taken, 8.3.5.1.1) and embeds no "
    "ICC profile (`iccprofile`, 8.3.5.1.6).",
    "`fuzzymatching`, `emptyvaluematching` and `multiplevaluematching` are not "
    "supported: `true` is answered with the Warning 8.3.4 gives; `charset` is taken, "
    "answers are UTF-8.",
    "An IS or DS value that is no plain number is given in DICOM JSON as the number it "
    "reads as, `null` when empty or none (F.2.5).",
    "`stable=true|false` (QIDO-RS) is this server's own parameter: the studies reported "
    "complete (`serve --stable-age`), or the others; such a study carries the private "
    "block (0009,0010) `DICOMSTORE`, (0009,1010) DT when it was reported.",
)


def web_section() -> list[str]:
    """6: DICOMweb."""
    return [
        "## 6 DICOMweb (PS3.18)",
        "",
        "With `serve --http-port`, one origin server gives the archive's instances "
        "through these services (security: section 5; every store goes through the "
        "C-STORE service, 2.2.2):",
        "",
        *table(("Transaction", "Resources", "Media types"), list(_SERVICES)),
        "",
        "Search matches as the C-FIND SCP does (2.2.4), with `limit`, `offset` and "
        "`includefield` (`all`); a key the index does not hold is ignored with a "
        "Warning. Instances are sent in the transfer syntax asked for: "
        f"{uids.uid_name(uids.EXPLICIT_VR_LE)} (`{uids.EXPLICIT_VR_LE}`) when none is "
        "named (an instance stored otherwise transcoded, compressed Pixel Data "
        "decoded), or `*`, as stored; another is 406 for an instance not stored in "
        "it. Frames are sent decoded, or as "
        "stored when asked for in the stored syntax's media type.",
        "",
        "Departures:",
        "",
        *[f"- {said}" for said in DEPARTURES],
        "",
    ]
