"""The per-frame work of a build, run in worker processes: read, check, convert, encode.

``encode_segment`` takes consecutive frames of one video and returns, per frame, either the
encoded members and the labels in stored-pixel coordinates, or the reason the frame is
rejected. It never raises for a bad image: that is data, and it lands in rejects.csv.

A source that already is what the build would store (an 8-bit gray JPEG of the stored size
when the codec is JPEG) is stored byte for byte. Such a frame is not decoded: its header and
structure are checked instead (``headers.check_stored_jpeg``: SOI, one 8-bit component of the
stored size, sequential, the tables it needs, no stray marker in the scan, EOI last), and the
first frame of every ``DECODE_SAMPLE`` in a segment is still decoded in full. When such a
sampled decode rejects a frame, every frame of its segment is decoded in full. With
``verify_decode`` every frame is decoded, as before this check existed. Either way the stored
bytes are the source bytes; what only a full decode can refuse (a few structural errors inside
the entropy-coded data that libjpeg treats as fatal) may pass the check on unsampled frames.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from . import format as fmt
from .format import Letterbox
from .frames_csv import FrameRow
from .headers import check_stored_jpeg, header_size
from .imaging import (ImageError, binarize_mask, check_pixels, decode_raw, encode, is_png_gray8,
                      letterbox, read_bytes, to_gray8)

DECODE_SAMPLE = 32   # of frames stored as is without a decode, the first of every 32 is decoded


@dataclass(frozen=True)
class EncodeOptions:
    image_size: int = 256  # stored frames are image_size x image_size; 0 keeps the source size
    codec: str = "jpeg"  # jpeg | png
    jpeg_quality: int = 95
    max_pixels: int | None = fmt.DEFAULT_MAX_PIXELS  # checked from the header before decoding
    verify_decode: bool = False  # decode every frame, also those stored as is (see above)


@dataclass
class Encoded:
    image: bytes
    mask: bytes | None
    geometry: Letterbox
    labels: dict  # in stored-pixel coordinates
    decoded: bool = True  # False: stored as is after the cheap check, not decoded


@dataclass
class Rejected:
    reason: str


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def encode_frame(row: FrameRow, opts: EncodeOptions, decode: bool = True) -> Encoded:
    """``decode=False``: a source the build stores as it is gets the cheap check instead of a
    decode (``stored_as_is``); every other source is decoded all the same."""
    data = read_bytes(row.path)
    geo = None if decode else stored_as_is(data, opts)
    if geo is not None:
        mask = None
        if row.mask_path is not None:
            mask = _encode_mask(row.mask_path, (geo.src_h, geo.src_w), geo, opts.max_pixels)
        return Encoded(data, mask, geo, stored_labels(row.labels, geo), decoded=False)
    raw = decode_raw(data, opts.max_pixels)
    img = to_gray8(raw)
    geo = Letterbox.fit(img.shape[0], img.shape[1], opts.image_size)
    already_gray8 = raw.ndim == 2 and raw.dtype == np.uint8
    # Store the source bytes untouched when they already are what we would write: no second
    # JPEG generation loss, no wasted encode.
    if geo.identity and already_gray8 and opts.codec == "png" and is_png_gray8(data):
        image = data
    elif geo.identity and already_gray8 and opts.codec == "jpeg" and _is_jpeg(data):
        image = data
    else:
        image = encode(letterbox(img, geo), opts.codec, opts.jpeg_quality)
    mask = None
    if row.mask_path is not None:
        mask = _encode_mask(row.mask_path, img.shape, geo, opts.max_pixels)
    return Encoded(image, mask, geo, stored_labels(row.labels, geo))


def stored_as_is(data: bytes, opts: EncodeOptions) -> Letterbox | None:
    """The (identity) geometry of a source whose bytes the build stores unchanged, checked
    without decoding it (``headers.check_stored_jpeg``); None when it is not one, or the check
    does not accept it: then the caller decodes it. Over ``max_pixels``: an ImageError, as from
    the decoder's own header check."""
    if opts.codec != "jpeg" or not _is_jpeg(data):
        return None
    size = header_size(data)   # the frame header alone first: another size is decoded anyway
    if size is None:
        return None
    geo = Letterbox.fit(size[1], size[0], opts.image_size)
    if not geo.identity or isinstance(check_stored_jpeg(data), str):   # (one SOF: the same)
        return None
    check_pixels(size[0], size[1], opts.max_pixels)
    return geo


_MASK_MEMO: dict[tuple, bytes | str] = {}  # per worker process: (digest, shape, geometry) -> out
_MASK_MEMO_SIZE = 256


def _encode_mask(path: str, frame_shape: tuple[int, int], geo: Letterbox,
                 max_pixels: int | None = None) -> bytes:
    try:
        data = read_bytes(path)
    except ImageError as e:
        raise ImageError(f"mask {e}") from None
    # Cine loops repeat masks byte for byte (every frame without a head has the same empty
    # mask), and decoding a PNG mask costs about a third of a frame's budget: remember results.
    memo_key = (hashlib.blake2b(data, digest_size=16).digest(), frame_shape, geo, max_pixels)
    result = _MASK_MEMO.get(memo_key)
    if result is None:
        result = _check_mask(data, frame_shape, geo, max_pixels)
        if len(_MASK_MEMO) >= _MASK_MEMO_SIZE:
            _MASK_MEMO.pop(next(iter(_MASK_MEMO)))
        _MASK_MEMO[memo_key] = result
    if isinstance(result, str):
        raise ImageError(f"mask {path}: {result}")
    return result


def _check_mask(data: bytes, frame_shape: tuple[int, int], geo: Letterbox,
                max_pixels: int | None = None) -> bytes | str:
    """The mask member to store, or the reason the mask is unusable."""
    try:
        mask = to_gray8(decode_raw(data, max_pixels))
        if mask.shape != frame_shape:
            return (f"is {mask.shape[1]}x{mask.shape[0]} but the frame is {frame_shape[1]}x"
                    f"{frame_shape[0]} (width x height); masks must match their frame")
        binary = binarize_mask(mask)
    except ImageError as e:
        return str(e)
    if geo.identity and binary is mask and is_png_gray8(data):
        return data
    return encode(letterbox(binary, geo, mask=True), "png")


def stored_labels(labels: dict, geo: Letterbox) -> dict:
    """Pixel-valued labels mapped from source to stored pixels by the contract's geometry (HC in
    mm is unchanged)."""
    out = dict(labels)
    if geo.identity:
        return out
    if out.get("pixel_size_mm") is not None:
        out["pixel_size_mm"] = geo.stored_pixel_size(out["pixel_size_mm"])
    if out.get("ellipse_cx") is not None:
        keys = fmt.ELLIPSE_COLUMNS   # all given or none (frames_csv checks)
        out.update(zip(keys, geo.ellipse_to_stored(*(out[k] for k in keys))))
    return out


def encode_segment(rows: list[FrameRow], opts: EncodeOptions) -> list[Encoded | Rejected]:
    """One result per row, in order (rows are not sent back: the caller holds them). Frames
    stored as is are decoded only at every ``DECODE_SAMPLE``-th row (all with
    ``opts.verify_decode``); a rejected sample makes every row of the segment decoded."""
    out = [_encode_one(row, opts, opts.verify_decode or i % DECODE_SAMPLE == 0)
           for i, row in enumerate(rows)]
    if not opts.verify_decode and any(isinstance(r, Rejected) for r in out[::DECODE_SAMPLE]):
        out = [_encode_one(row, opts, True) if isinstance(r, Encoded) and not r.decoded else r
               for row, r in zip(rows, out)]
    return out


def _encode_one(row: FrameRow, opts: EncodeOptions, decode: bool) -> Encoded | Rejected:
    try:
        return encode_frame(row, opts, decode)
    except ImageError as e:
        return Rejected(str(e))
    except MemoryError:
        return Rejected("image too large to decode in memory")
    except Exception as e:  # a decoder bug on one row must not stop the build
        return Rejected(f"unexpected error reading the image ({type(e).__name__}: {e})")
