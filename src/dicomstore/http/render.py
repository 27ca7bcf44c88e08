"""WADO-RS rendered images and thumbnails (PS3.18 10.4.1.1.5, 10.4.1.1.6; 8.3.5).

``/rendered`` of an instance, of one of its frames (``/frames/{n}/rendered``),
of a series or a study, and ``/thumbnail`` of the same, as ``image/jpeg``
(the default) or ``image/png``. A series is shown by its middle instance, a
study by the middle instance of its first series with an image (the first
instance that can be rendered, trying a few); a multi-frame instance by its
first frame. One frame is decoded at a time (:mod:`dicomstore.http.pixels`).

Grey images go through the Modality LUT (Rescale Slope/Intercept) and the
window asked for (``window=center,width[,linear|linear-exact|sigmoid]``, each
function as PS3.3 C.11.2.1.2-3 gives it), else the instance's Window Center/Width
(with its VOI LUT Function), else the frame's min..max (PS3.3 C.11.2.1.2);
MONOCHROME1 is inverted; colour is sent as decoded (RGB). ``viewport=vw,vh``
fits the image into that box keeping its aspect (never enlarged beyond it), of
the part ``sx,sy,sw,sh`` of the frame when given;
thumbnails fit 128x128 unless a viewport says otherwise; ``quality`` (1-100)
sets the JPEG quality. Rendering needs numpy and Pillow (the ``codecs``
extra): without them, 406 naming it. A frame whose stored codestream cannot be
decoded (damaged, or a form the decoders do not read) is 500
(``pixels.UNDECODABLE``), logged naming the instance.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from typing import Any

from pydicom.multival import MultiValue
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dicomstore.http import pixels
from dicomstore.http.auth import client_of
from dicomstore.http.common import HttpError, negotiate
from dicomstore.http.frames import frame_numbers, open_frames
from dicomstore.http.limits import refuse
from dicomstore.http.places import Places
from dicomstore.http.wado import target_rows

log = logging.getLogger("dicomstore.http.render")

THUMBNAIL = 128
MAX_VIEWPORT = 8192
#: Frames rendered at once (each holds its decoded frame, its 8-bit image and a
#: block's float64 copy: about twice the frame; more at once would not be faster on
#: a few cores); the others wait their turn.
RENDERS_AT_ONCE = 2
_RENDERING = threading.BoundedSemaphore(RENDERS_AT_ONCE)
#: Answers rendering at once, running or waiting for a turn (each holds a worker thread
#: of the HTTP server: ``places.py``), 6 of them to one client address (a browser's
#: connections to one host: a browse page's thumbnails); beyond, 503 with
#: ``Retry-After`` (review103 F1: one client's 48 renders of a large frame held
#: another's thumbnail 60 s and its QIDO 16 s).
RENDERING = Places(16, 6, "being rendered")
#: How long an answer waits for a place before its 503 (in the event loop: no thread).
PLACE_WAIT = 10.0
#: The status logged for an answer whose client left before it was rendered (nginx's).
CLIENT_GONE = 499
#: instances tried for a series or study before giving up (not images, say)
TRIES = 20
_OFFERS = [("image/jpeg", None), ("image/png", None)]


async def rendered(request: Request) -> Response:
    """GET .../rendered (10.4.1.1.5)."""
    return await _render(request, None)


async def thumbnail(request: Request) -> Response:
    """GET .../thumbnail (10.4.1.1.6): a small rendered image."""
    return await _render(request, THUMBNAIL)


async def _render(request: Request, box: int | None) -> Response:
    """The answer once it has a place (waited for up to :data:`PLACE_WAIT` seconds in
    the event loop, 503 after), rendered in a worker thread unless its client left
    while it waited."""
    choice, _ = negotiate(request, _OFFERS)
    media = _OFFERS[choice][0]
    params = _parameters(request)
    window = _window(params.get("window"))
    viewport, region = _viewport(request, params.get("viewport"))
    quality = _quality(params.get("quality"))
    if viewport is None and box is not None:
        viewport = (box, box)
    frame = 1
    if "frames" in request.path_params:
        numbers = frame_numbers(request.path_params["frames"])
        if len(numbers) != 1:
            raise HttpError(400, "a rendered frame is one frame number")
        frame = numbers[0]
    try:
        slot = await RENDERING.wait_for(client_of(request.scope), PLACE_WAIT)
    except HttpError as busy:  # (logged: review94 F2)
        raise refuse(request, busy.status, busy.message, busy.headers) from None
    try:
        if await request.is_disconnected():  # (gone while it waited: for nobody)
            return Response(status_code=CLIENT_GONE)
        image = await run_in_threadpool(_image, request, frame, window, viewport, region)
        return await run_in_threadpool(_encoded, image, media, viewport, quality)
    finally:  # (held until encoded: the image of a frame may be large)
        slot.release()


def _image(
    request: Request, frame: int, window: Window | None, viewport: Any, region: Any = None
) -> Any:
    """The frame rendered as a Pillow image, in its turn (blocking); of ``region`` of
    it alone when given (:func:`_viewport`)."""
    pil = _pillow()
    with _RENDERING, _representative(request, frame) as found:
        array = found.decoded(frame)
        if region is not None:
            if window is None and array.ndim == 2:  # (the whole frame's, not the part's)
                window = grey_window(array, found.dataset)
            array = _part(array, region)
        if viewport is not None:  # fewer pixels to window: a view, every n-th
            if window is None and array.ndim == 2:  # (the whole frame's, not the view's)
                window = grey_window(array, found.dataset)
            array = shrunk(array, viewport)
        image = pil.fromarray(to_8bit(array, found.dataset, window))
        del array
    return image


def _encoded(image: Any, media: str, viewport: Any, quality: int) -> Response:
    """The answer of a rendered image: fitted into ``viewport``, as ``media``."""
    if viewport is not None:
        image.thumbnail(viewport)
    out = io.BytesIO()
    if media == "image/jpeg":
        image.convert("RGB" if image.mode == "RGB" else "L").save(out, "JPEG", quality=quality)
    else:
        image.save(out, "PNG")
    return Response(out.getvalue(), media_type=media)


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise HttpError(406, f"rendering needs Pillow: install {pixels.EXTRA}") from None
    return Image


def _representative(request: Request, frame: int) -> pixels.Frames:
    """The frames of the instance shown for the URL's study, series or instance."""
    rows = target_rows(request)
    if "sop" in request.path_params:
        found = open_frames(request, rows[0])
        try:
            found.check([frame])
        except HttpError:
            found.close()
            raise
        return found
    last: HttpError | None = None
    damaged: HttpError | None = None
    for row in _in_order(rows)[:TRIES]:
        try:
            return open_frames(request, row)
        except HttpError as exc:
            last = exc
            if exc.status == 500 and damaged is None:
                damaged = exc
    assert last is not None
    if damaged is not None:  # (review113 L3: a damaged copy is 500, as an instance's is)
        raise HttpError(500, f"nothing to render: {damaged.message}")
    raise HttpError(404 if last.status != 413 else 413, f"nothing to render: {last.message}")


def _in_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each series' middle instance first (series in order), then the others."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        number = row.get("instance_number")
        return (number is None, number or 0, row["sop_instance_uid"])

    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=_series_key):
        by_series.setdefault(row["series_uid"], []).append(row)
    middles, others = [], []
    for members in by_series.values():
        members.sort(key=key)
        middle = len(members) // 2
        middles.append(members[middle])
        others.extend(members[:middle] + members[middle + 1 :])
    return middles + others


def _series_key(row: dict[str, Any]) -> tuple[Any, ...]:
    number = row.get("series_number")
    return (number is None, number or 0, row["series_uid"])


def shrunk(array: Any, viewport: tuple[int, int]) -> Any:
    """Every n-th row and column of ``array`` (a view, no copy), n as large as leaves
    it at least twice the ``viewport`` (Pillow fits it, smoothing, at the end)."""
    rows, columns = array.shape[0], array.shape[1]
    step = max(1, min(rows // (2 * viewport[1]), columns // (2 * viewport[0])))
    return array[::step, ::step] if step > 1 else array


#: A VOI window: center, width and function (``linear``, ``linear-exact``, ``sigmoid``).
Window = tuple[float, float, str]


def to_8bit(array: Any, ds: Any, window: Window | None) -> Any:
    """A decoded frame as 8-bit grey or RGB, windowed (PS3.3 C.11.2.1.2) and inverted
    for MONOCHROME1. Worked out a block of rows at a time (:func:`_blocks`): float64
    temporaries of the whole frame took 26 times its size (review35a F2)."""
    import numpy as np

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if array.ndim == 3:  # colour, decoded as RGB
        if array.dtype == np.uint8:
            return np.ascontiguousarray(array)
        factor = 255.0 / (float(array.max()) or 1.0)
        return _blocks(array, lambda v: np.multiply(v, factor, out=v))
    if photometric == "PALETTE COLOR":
        try:
            from pydicom.pixels import apply_color_lut

            return to_8bit(apply_color_lut(array, ds), ds, None)
        except Exception as exc:  # an incomplete palette: show it grey
            log.info("palette of %s not applied: %s", ds.get("SOPInstanceUID"), exc)
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    center, width, function = window or grey_window(array, ds)

    def windowed(v: Any) -> Any:  # PS3.3 C.11.2.1.2 (linear), C.11.2.1.3.1-2
        v *= slope
        v += intercept
        if function == "sigmoid":  # 255 / (1 + exp(-4 (x - c) / w))
            v -= center
            v *= -4.0 / width
            np.exp(v, out=v)
            v += 1.0
            np.divide(255.0, v, out=v)
            return v
        if function == "linear-exact":  # ((x - c) / w + 0.5) * 255
            v -= center
            v /= width
        else:  # ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
            v -= center - 0.5
            v /= max(width - 1.0, 1.0)
        v += 0.5
        v *= 255.0
        return v

    grey = _blocks(array, windowed)
    if photometric == "MONOCHROME1":
        np.subtract(255, grey, out=grey)
    return grey


def grey_window(array: Any, ds: Any) -> Window:
    """The window a grey frame is shown with when none is asked for: the instance's
    Window Center/Width, else the rescaled frame's min..max (PS3.3 C.11.2.1.2)."""
    stored = _stored_window(ds)
    if stored is not None:
        return stored
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    ends = [float(array.min()) * slope + intercept, float(array.max()) * slope + intercept]
    return _min_max(min(ends), max(ends))


#: Pixels worked on at once in float64 (8 MiB).
BLOCK = 1 << 20


def _blocks(array: Any, work: Any) -> Any:
    """``work`` (in place on a float64 copy of a block of rows) of ``array``, clipped to
    0..255, as a new uint8 array: one block's float64 copy at a time."""
    import numpy as np

    out = np.empty(array.shape, np.uint8)
    per_row = max(1, array[0].size if len(array) else 1)
    step = max(1, BLOCK // per_row)
    for start in range(0, array.shape[0], step):
        values = work(array[start : start + step].astype(np.float64))
        np.clip(values, 0, 255, out=values)
        out[start : start + step] = values  # (truncated, as astype(uint8))
    return out


def _number(ds: Any, keyword: str, default: float) -> float:
    """The (first) value of a numeric attribute, or ``default``."""
    value = ds.get(keyword)
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _stored_window(ds: Any) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = _number(ds, "WindowCenter", float("nan")), _number(ds, "WindowWidth", 0.0)
    named = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().lower().replace("_", "-")
    function = named if named in _FUNCTIONS else "linear"
    return None if center != center or width <= 0 else (center, width, function)


def _min_max(low: float, high: float) -> Window:
    """The window showing ``low`` .. ``high``."""
    return (low + high) / 2 + 0.5, max(high - low + 1.0, 1.0), "linear"


#: PS3.18 8.3.5.1.4's window functions (PS3.3 C.11.2.1.3.1 VOI LUT Function).
_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


def _window(text: str | None) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 8.3.5.1.4): width at least 1 for
    linear, above 0 for linear-exact and sigmoid (review116 M2: sigmoid was 400,
    linear-exact drawn as linear, a linear width below 1 taken as 1)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        center, width = float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise HttpError(400, f"window is center,width[,function]: {text!r}") from None
    function = parts[2].lower() if len(parts) > 2 else "linear"
    finite = math.isfinite(center) and math.isfinite(width)  # (nan, inf: float() takes them)
    narrow = width < 1 if function == "linear" else width <= 0
    if len(parts) > 3 or function not in _FUNCTIONS or not finite or narrow:
        if function == "linear" and finite and 0 < width < 1:
            raise HttpError(400, f"a linear window is at least 1 wide: {text!r}")
        raise HttpError(400, f"window is center,width>0[,linear|linear-exact|sigmoid]: {text!r}")
    return center, width, function


def _viewport(
    request: Request, text: str | None
) -> tuple[tuple[int, int] | None, tuple[int, int, int | None, int | None] | None]:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 8.3.5.1.3): the box the image is fitted
    into, and the part of the frame shown (its top left sx,sy, 0 when empty; its width
    and height sw,sh, to the frame's edge when empty, negative: flipped), or None
    (review116 L3: a part asked for was 400)."""
    if text is None:
        return None, None
    values = [v.strip() for v in text.split(",")]
    try:
        if len(values) not in (2, 6):
            raise ValueError
        width, height = int(values[0]), int(values[1])
        sx, sy = (int(v) if v else 0 for v in values[2:4]) if len(values) == 6 else (0, 0)
        sw, sh = (int(v) if v else None for v in values[4:6]) if len(values) == 6 else (None, None)
    except ValueError:
        raise HttpError(400, f"viewport is vw,vh[,sx,sy,sw,sh] (pixels): {text!r}") from None
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise refuse(request, 400, f"viewport sides are 1 to {MAX_VIEWPORT} pixels: {text!r}")
    if sx < 0 or sy < 0 or sw == 0 or sh == 0:
        raise HttpError(400, f"viewport: sx, sy from 0, sw and sh not 0: {text!r}")
    return (width, height), (None if len(values) == 2 else (sx, sy, sw, sh))


def _part(array: Any, region: tuple[int, int, int | None, int | None]) -> Any:
    """The part of a decoded frame a viewport shows (a view, no copy): columns from sx,
    rows from sy, sw and sh of them (to the edge when None; leftwards, upwards and
    flipped when negative); 400 when it lies outside the frame."""
    sx, sy, sw, sh = region
    rows, columns = array.shape[0], array.shape[1]

    def span(start: int, length: int | None, size: int) -> slice:
        if start >= size:
            raise HttpError(400, f"viewport: the part shown starts outside the frame ({size})")
        if length is None:
            return slice(start, size)
        if length > 0:
            return slice(start, min(start + length, size))
        return slice(start, max(start + length, -1) if start + length >= 0 else None, -1)

    return array[span(sy, sh, rows), span(sx, sw, columns)]


#: PS3.18 8.3.5.1's rendering parameters given once each, and the values of those
#: taken and not drawn (annotation, 8.3.5.1.1; iccprofile, 8.3.5.1.6).
_ONCE = ("window", "viewport", "quality", "annotation", "iccprofile", "charset")
_ANNOTATIONS = ("patient", "technique")
_ICC_PROFILES = ("no", "yes", "srgb", "adobergb", "rommrgb")


def _parameters(request: Request) -> dict[str, str]:
    """The rendering parameters, each given once (400 twice: which would count?),
    ``annotation`` and ``iccprofile`` among the values PS3.18 8.3.5.1 gives (taken:
    not drawn, no profile embedded; review116 L4: any value was taken, silently)."""
    given = request.query_params
    for name in _ONCE:
        if len(given.getlist(name)) > 1:
            raise HttpError(400, f"{name} is given more than once")
    annotation = given.get("annotation")
    if annotation is not None and any(a.strip() not in _ANNOTATIONS for a in annotation.split(",")):
        raise HttpError(400, f"annotation is patient and/or technique: {annotation[:40]!r}")
    profile = given.get("iccprofile")
    if profile is not None and profile.strip().lower() not in _ICC_PROFILES:
        raise HttpError(400, f"iccprofile is one of {', '.join(_ICC_PROFILES)}: {profile[:40]!r}")
    return dict(given.items())


def _quality(text: str | None) -> int:
    """``quality`` (PS3.18 8.3.5.1.5): 1-100, default 90."""
    if text is None:
        return 90
    try:
        quality = int(text)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise HttpError(400, f"quality is 1 to 100: {text!r}")
    return quality
