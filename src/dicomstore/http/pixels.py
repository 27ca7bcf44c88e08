"""The frames of a stored instance, one at a time (PS3.5 8.2, A.4; PS3.18 8.7.3.3).

:class:`Frames` reads a stored instance's header (:func:`read_stored`) and
hands out one frame at a time, never the whole Pixel Data:

- as stored: native frames by seeking (those of a deflated data set, PS3.5 A.5,
  in its inflated copy: ``stored.inflated``, held until :meth:`Frames.close`),
  encapsulated frames by gathering the
  fragments of that frame from the file (Basic or Extended Offset Table, one
  fragment per frame, or the fragments between JPEG markers:
  :func:`pydicom.encaps.get_frame` on the open file);
- decoded: a numpy array of one frame, through pydicom's decoders and the
  plugins of the ``codecs`` extra (pylibjpeg with its libjpeg, openjpeg and
  RLE plugins, numpy, Pillow). Without them, :func:`decoder_missing` says
  which extra to install and the callers answer 406. A frame whose stored
  codestream cannot be decoded (:func:`undecodable`), or whose fragments cannot be
  read (damaged, :func:`damaged`), is :data:`UNDECODABLE`, logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pydicom.dataset import Dataset

from dicomstore import uids
from dicomstore.archive.storage import Storage
from dicomstore.archive.stored import PixelValue, opened, read_chunks
from dicomstore.codestreams import CodestreamMismatch, check
from dicomstore.framing.headers import byteswapped
from dicomstore.http.common import HttpError
from dicomstore.inflation import DEFAULT_MAX_INFLATED, InflateError, TooLarge

log = logging.getLogger("dicomstore.http.pixels")

EXTRA = "dicomstore[codecs]"
#: The status of a frame whose stored codestream cannot be decoded: the server's
#: failure, not the request's (RFC 9110 15.6.1: an unexpected condition prevented
#: fulfilling it). Not 406 (15.5.7: no representation the Accept allows: one it
#: allows is made for sound data, and asking for another would not help), nor 422
#: (15.5.21: the request's content cannot be processed: a GET has none).
UNDECODABLE = 500
NATIVE_LE = (uids.EXPLICIT_VR_LE, uids.IMPLICIT_VR_LE)
#: Native Pixel Data: little endian, and Explicit VR Big Endian's (served little
#: endian, as PS3.18 8.7.3 has octet-stream frames: samples swapped as read).
NATIVE = (*NATIVE_LE, uids.EXPLICIT_VR_BE)
#: The syntaxes whose Pixel Data no decoder of a compressed form reads (native,
#: deflated or not): what fails to be read there is damaged, nothing to blame on one.
NOT_DECODED = (*NATIVE, uids.DEFLATED_EXPLICIT_VR_LE)

#: PS3.18 Table 8.7.3-5: the media type of a frame in each compressed transfer syntax.
MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}
#: An Item's tag (FFFE,E000), little endian: each fragment's header begins with it.
_ITEM = b"\xfe\xff\x00\xe0"
#: what encapsulated Pixel Data may hold beyond twice its frames decoded (item
#: headers, offset tables, small frames' codestream overhead)
ENCAPSULATED_SLACK = 1 << 20
#: items of encapsulated Pixel Data counted beyond one per frame (fragments)
MAX_EXTRA_ITEMS = 1 << 16
#: Names clients still send for some of them (the media types before registration).
ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}


def media_type_of(syntax: str) -> str:
    """The media type a frame of ``syntax`` is sent as."""
    return MEDIA_TYPES.get(syntax, "application/octet-stream")


def damaged(key: str, what: str, exc: BaseException, data: str = "Pixel Data") -> HttpError:
    """The answer when the stored instance ``key``'s ``data`` cannot be read or decoded
    (``what``: which, e.g. ``frame 2 cannot be decoded``; ``exc``: why), logged for the
    operator naming the instance: :data:`UNDECODABLE`, its reason one line."""
    said = " ".join(str(exc).split())  # (one line: a decoder's may be several)
    log.warning("%s: %s, its stored %s damaged: %s", key, what, data, said)
    return HttpError(UNDECODABLE, f"{what}, the stored {data} is damaged: {said}")


def undecodable(
    key: str, what: str, exc: BaseException, syntax: str, data: str = "Pixel Data"
) -> HttpError:
    """:func:`damaged` when a decoder refused the stored ``data`` of ``key`` in transfer
    syntax ``syntax``: damaged, or sound in a form the installed decoders do not read
    (its copy may be as received: sweep106 F3, "damaged" alone invites a restore that
    would not help); a native syntax has no decoder to blame (:data:`NOT_DECODED`:
    damaged, review109 I1)."""
    if syntax in NOT_DECODED:
        return damaged(key, what, exc, data)
    said = " ".join(str(exc).split())
    log.warning(
        "%s: %s, the installed decoders cannot read its stored %s: %s", key, what, data, said
    )
    why = f"the installed decoders cannot read the stored {data} (damaged, or a form they"
    return HttpError(UNDECODABLE, f"{what}, {why} do not support): {said}")


def enter_stored(
    held: ExitStack, storage: Storage, key: str, syntax: str, inflated_limit: int
) -> tuple[Any, BinaryIO | None]:
    """``stored.opened`` of ``key`` entered into ``held``: a deflate stream cut short or
    garbled is :func:`damaged` (review64 L2: 500 "internal error" and a traceback);
    one over ``inflated_limit`` stays ``inflation.TooLarge`` (the callers' 413)."""
    try:
        return held.enter_context(opened(storage, key, syntax, inflated_limit=inflated_limit))
    except TooLarge:
        raise
    except InflateError as exc:
        raise damaged(key, "the Pixel Data cannot be read", exc, "data set") from None


def end_of(storage: Storage, key: str, source: BinaryIO | None) -> int:
    """Where the bytes of stored instance ``key`` end: its inflated copy ``source``'s
    end, else its file's size (a stat, not an opening)."""
    return source.seek(0, 2) if source is not None else storage.size(key)


def within(key: str, end: int, value: PixelValue | None, data: str = "Pixel Data") -> None:
    """500 (:func:`damaged`) when the native ``value`` (its declared length) runs past
    ``end``, the end of the bytes it is in (a file cut short after its header): found
    before an answer's status is sent, not when the read comes short once it has begun."""
    if value is None or value.length is None:
        return
    past = value.offset + value.length - end
    if past > 0:
        why = OSError(f"its value runs {past} bytes past the end of the file")
        raise damaged(key, f"the {data} cannot be read", why, data)


def decoder_missing(syntax: str) -> str | None:
    """Why frames of ``syntax`` cannot be decoded here, or None if they can."""
    try:
        import numpy  # noqa: F401
        from pydicom.pixels import get_decoder
    except ImportError:
        return f"decoding needs numpy: install {EXTRA}"
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return f"no decoder for transfer syntax {syntax}"
    if not decoder.is_available:
        return f"no decoder for {syntax} is installed: install {EXTRA}"
    return None


#: Photometric Interpretations whose native frames hold a Cb and a Cr for every two
#: pixels (PS3.3 C.7.6.3.1.2; YBR_PARTIAL_422 retired, the same layout)
_SUBSAMPLED = ("YBR_FULL_422", "YBR_PARTIAL_422")


@dataclass
class Frames:
    """One stored instance's frames: where they are and how they are encoded (a
    context manager: :meth:`close` lets go of a deflated data set's inflated copy)."""

    storage: Storage
    key: str
    syntax: str
    dataset: Dataset
    pixels: PixelValue
    count: int
    #: bytes of one frame once decoded (what a decoder allocates, 1-bit as 8)
    frame_size: int
    #: bits of one native frame as stored (PS3.5 8.1.1: 1-bit frames are not byte
    #: aligned; PS3.3 C.7.6.3.1.2: native YBR_FULL_422 (and the retired
    #: YBR_PARTIAL_422) holds 2 samples a pixel)
    native_bits: int
    #: the inflated copy of a deflated data set, where ``pixels`` are
    source: BinaryIO | None = None
    _held: ExitStack = field(default_factory=ExitStack, repr=False)

    @classmethod
    def open(
        cls,
        storage: Storage,
        row: dict[str, Any],
        max_frame_bytes: int,
        inflated_limit: int = DEFAULT_MAX_INFLATED,
    ) -> Frames:
        """The frames of the instance of index ``row``; HttpError 404/406/413 if none,
        500 (:func:`damaged`) when its Pixel Data contradicts its header or its syntax,
        or runs past the end of the file (native) or its items do. A deflated data set
        is inflated (up to ``inflated_limit`` bytes: beyond, ``inflation.TooLarge``)
        and its frames are native Explicit VR Little Endian's."""
        syntax = row["transfer_syntax_uid"]
        key = row["path"]
        deflated = syntax == uids.DEFLATED_EXPLICIT_VR_LE
        if syntax not in NATIVE and syntax not in MEDIA_TYPES and not deflated:
            raise HttpError(406, f"frames of transfer syntax {syntax} are not served")
        held = ExitStack()
        try:
            stored, source = enter_stored(held, storage, key, syntax, inflated_limit)
            if deflated:  # PS3.5 A.5: Explicit VR Little Endian once inflated
                syntax = uids.EXPLICIT_VR_LE
            ds, pixels = stored.dataset, stored.pixels
            found = cls._checked(storage, key, syntax, ds, pixels, max_frame_bytes)
        except BaseException:
            held.close()
            raise
        found.source, found._held = source, held
        if not found.encapsulated:
            try:
                within(key, end_of(storage, key, source), found.pixels)
            except BaseException:
                found.close()
                raise
        else:
            # a codestream is read whole to decode or send a frame: one larger than twice
            # what it decodes to is no compression, but a file made to exhaust memory
            # (review38mem D7: 64x64 RLE, one fragment of 400 MiB; 969 MiB held)
            most = 2 * found.count * found.frame_size + ENCAPSULATED_SLACK
            try:
                held_bytes, table, fragments = found._items(most)
            except OSError as exc:
                found.close()
                raise damaged(key, "the Pixel Data cannot be read", exc) from None
            if held_bytes > most:
                found.close()
                raise HttpError(
                    413,
                    f"the encapsulated Pixel Data ({held_bytes} bytes) is larger than twice its"
                    f" {found.count} frame(s) decoded ({found.count * found.frame_size} bytes):"
                    " not read",
                )
            held_frames = found._held_frames(table, fragments)
            if held_frames < found.count:  # (a header that says more than the data holds)
                log.warning(
                    "%s says %d frames, its Pixel Data holds %d", key, found.count, held_frames
                )
                found.count = held_frames
            if not found.count:
                found.close()
                raise HttpError(404, "the instance's Pixel Data holds no frame")
        return found

    def _items(self, most: int) -> tuple[int, int | None, int]:
        """Encapsulated Pixel Data's items (PS3.5 A.4), their headers only read up to
        its Sequence Delimitation Item: (their bytes, stopping once past ``most``; the
        first item's length, its Basic Offset Table's, None without an item; how many
        fragments follow it). What follows the Pixel Data is not counted (review39 #7);
        more items than :data:`MAX_EXTRA_ITEMS` beyond one per frame count as past
        ``most`` (review40 #1: 65,537 tiny fragments hid a large one); an item past the
        file's end is an ``OSError`` (review40 #12)."""
        total, items, table = 0, 0, None
        with self.storage.open(self.key) as fp:
            end = fp.seek(0, 2)
            at = fp.seek(self.pixels.offset)
            while total <= most:
                head = fp.read(8)
                if len(head) < 8 or head[:4] != _ITEM:  # (the delimiter, or the end)
                    break
                items += 1
                if items > self.count + MAX_EXTRA_ITEMS:
                    return most + 1, table, items - 1
                length = int.from_bytes(head[4:], "little")
                table = length if table is None else table
                at += 8 + length
                if at > end:  # (cut short: unreadable, not too large)
                    raise OSError(f"a fragment runs {at - end} bytes past the end of the file")
                total += 8 + length
                fp.seek(at)
        return total, table, max(0, items - 1)

    def _held_frames(self, table: int | None, fragments: int) -> int:
        """How many of the :attr:`count` frames encapsulated Pixel Data can hold (PS3.5
        A.4), from :meth:`_items`: its Extended or Basic Offset Table's entries, else
        its fragments (one frame is one or more)."""
        ds = self.dataset
        if "ExtendedOffsetTable" in ds:
            return min(self.count, len(ds.ExtendedOffsetTable or b"") // 8)
        if table is None:
            return 0
        if table:  # a Basic Offset Table: one entry per frame
            return min(self.count, table // 4)
        return min(self.count, fragments)

    @classmethod
    def _checked(
        cls,
        storage: Storage,
        key: str,
        syntax: str,
        ds: Dataset,
        pixels: PixelValue | None,
        max_frame_bytes: int,
    ) -> Frames:
        """The frames of this header, if it has frames that can be served."""
        if pixels is None or pixels.tag != 0x7FE00010:
            raise HttpError(404, "the instance has no Pixel Data")
        try:
            bits = int(ds.BitsAllocated)
            rows, columns = int(ds.Rows), int(ds.Columns)
            samples = int(ds.get("SamplesPerPixel", 1))
            count = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError):
            raise HttpError(404, "the instance's image pixel attributes are incomplete") from None
        size = rows * columns * samples * max(bits, 8) // 8
        if (bits % 8 and bits != 1) or size <= 0 or count <= 0:
            raise HttpError(406, f"frames of {bits}-bit or empty Pixel Data are not served")
        if size > max_frame_bytes:
            raise HttpError(413, f"a frame of {size} bytes is over the limit ({max_frame_bytes})")
        encapsulated = pixels.length is None
        if encapsulated == (syntax in NATIVE):
            why = ValueError(f"it does not match its transfer syntax {syntax}")
            raise damaged(key, "the Pixel Data cannot be read", why)
        native_bits = rows * columns * samples * bits
        if samples == 3 and ds.get("PhotometricInterpretation") in _SUBSAMPLED:
            native_bits = rows * columns * 2 * bits  # (a Cb and a Cr for two pixels)
        if not encapsulated and -(-native_bits * count // 8) > (pixels.length or 0):
            why = ValueError(f"it is shorter than its {count} frame(s)")
            raise damaged(key, "the Pixel Data cannot be read", why)
        return cls(storage, key, syntax, ds, pixels, count, size, native_bits)

    def close(self) -> None:
        """Let go of the inflated copy of a deflated data set (nothing otherwise)."""
        self.source = None
        self._held.close()

    def __enter__(self) -> Frames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _bytes(self) -> Iterator[BinaryIO]:
        """The bytes ``pixels`` are in: the inflated copy, else the stored file."""
        if self.source is not None:
            yield self.source
        else:
            with self.storage.open(self.key) as fp:
                yield fp

    @property
    def encapsulated(self) -> bool:
        return self.pixels.length is None

    @property
    def stored_syntax(self) -> str:
        """The syntax a frame as stored is in (native frames are Explicit VR LE's bytes)."""
        return uids.EXPLICIT_VR_LE if not self.encapsulated else self.syntax

    def check(self, numbers: list[int]) -> None:
        """404 for a frame number past the last frame."""
        missing = [n for n in numbers if n > self.count]
        if missing:
            has = f"the instance has {self.count}"
            raise HttpError(404, f"frame {missing[0]} does not exist ({has})")

    def stored(self, number: int, chunk: int = 1 << 20) -> Iterator[bytes]:
        """Frame ``number`` (from 1) as stored: native in chunks, encapsulated as one codestream."""
        if not self.encapsulated and self.native_bits % 8:
            yield self._unaligned(number)
            return
        if not self.encapsulated:
            size = self.native_bits // 8
            start = self.pixels.offset + (number - 1) * size
            width = int(self.dataset.BitsAllocated) // 8  # (8, 16, 32: _checked)
            swap = self.syntax == uids.EXPLICIT_VR_BE and width > 1
            rest = b""  # (a sample a short read cut in two: swapped with the next read)
            with self._bytes() as fp, self._unread(number):
                for data in read_chunks(fp, start, size, chunk, self.key):
                    if swap:
                        data = rest + data
                        whole = len(data) - len(data) % width
                        data, rest = byteswapped(data[:whole], width).tobytes(), data[whole:]
                    yield data
            return
        from pydicom.encaps import get_frame

        with self.storage.open(self.key) as fp:
            fp.seek(self.pixels.offset)
            try:
                yield get_frame(fp, number - 1, **self._offsets())
            except (ValueError, EOFError, OSError) as exc:
                what = f"frame {number} cannot be read from its fragments"
                raise damaged(self.key, what, exc) from None

    @contextmanager
    def _unread(self, number: int) -> Iterator[None]:
        """A native frame whose bytes come short (the file cut since it was opened)
        is :func:`damaged`, not a bare ``OSError``."""
        try:
            yield
        except OSError as exc:
            raise damaged(self.key, f"frame {number} cannot be read", exc) from None

    def _unaligned(self, number: int) -> bytes:
        """1-bit frame ``number`` whose bits do not start on a byte (PS3.5 8.1.1: frames
        follow each other bit by bit, the first pixel in a byte's lowest bit), moved to
        start on one, its last byte padded with zero bits."""
        first = (number - 1) * self.native_bits
        skip, size = first % 8, -(-self.native_bits // 8)
        with self._bytes() as fp, self._unread(number):
            data = b"".join(
                read_chunks(fp, self.pixels.offset + first // 8, -(-(skip + self.native_bits) // 8),
                            1 << 20, self.key)
            )  # fmt: skip
        value = int.from_bytes(data, "little") >> skip
        return (value & ((1 << self.native_bits) - 1)).to_bytes(size, "little")

    def _offsets(self) -> dict[str, Any]:
        """How pydicom finds the frames: by the items, not by an Extended Offset Table,
        which nothing checks against them (one that lies gave another frame: review42
        #2); the decoder's options carry none either."""
        return {"number_of_frames": self.count}

    def decoded(self, number: int) -> Any:
        """Frame ``number`` (from 1) as a numpy array, colour as RGB (planar configuration 0)."""
        reason = decoder_missing(self.syntax)
        if reason is not None:
            raise HttpError(406, reason)
        from pydicom.pixels import get_decoder
        from pydicom.pixels.utils import as_pixel_options

        if self.encapsulated:  # what its codestream declares, before a decoder allocates it
            frame = b"".join(self.stored(number))
            ds = self.dataset
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            try:
                check(lambda at, n: frame[at : at + n], len(frame), rows, columns, samples,
                      f"frame {number}")  # fmt: skip
            except CodestreamMismatch as exc:
                raise damaged(self.key, f"frame {number} cannot be decoded", exc) from None
            del frame
        options = as_pixel_options(self.dataset, **self._offsets())
        options.pop("extended_offsets", None)  # (see _offsets)
        options.setdefault("pixel_keyword", "PixelData")
        if not self.encapsulated and options.get("photometric_interpretation") in _SUBSAMPLED:
            # (pydicom unpacks only YBR_FULL_422's layout: the retired YBR_PARTIAL_422
            # has it too, its colours then a little off: a preview's, not a diagnosis)
            options["photometric_interpretation"] = "YBR_FULL_422"
        with self._bytes() as fp:
            fp.seek(self.pixels.offset)
            try:
                array, _ = get_decoder(self.syntax).as_array(fp, index=number - 1, **options)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - the decoders raise anything on
                # bad data, a Rust one a PanicException (a BaseException: review38mem D7)
                what = f"frame {number} cannot be decoded"
                raise undecodable(self.key, what, exc, self.syntax) from None
        return array

    def decoded_bytes(self, number: int) -> bytes:
        """Frame ``number`` decoded, as Explicit VR Little Endian's native Pixel Data bytes."""
        array = self.decoded(number)
        return bytes(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
