"""The per-frame work of a build, run in worker processes: read, check, convert, encode.

``encode_segment`` takes consecutive frames of one video and returns, per frame, either the
encoded members and the labels in stored-pixel coordinates, or the reason the frame is
rejected. It never raises for a bad image: that is data, and it lands in rejects.csv.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from . import format as fmt
from .format import Letterbox
from .frames_csv import FrameRow
from .imaging import (ImageError, binarize_mask, decode_raw, encode, is_png_gray8, letterbox,
                      read_bytes, to_gray8)


@dataclass(frozen=True)
class EncodeOptions:
    image_size: int = 256  # stored frames are image_size x image_size; 0 keeps the source size
    codec: str = "jpeg"  # jpeg | png
    jpeg_quality: int = 95
    max_pixels: int | None = fmt.DEFAULT_MAX_PIXELS  # checked from the header before decoding


@dataclass
class Encoded:
    image: bytes
    mask: bytes | None
    geometry: Letterbox
    labels: dict  # in stored-pixel coordinates


@dataclass
class Rejected:
    reason: str


def _is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def encode_frame(row: FrameRow, opts: EncodeOptions) -> Encoded:
    data = read_bytes(row.path)
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
    """One result per row, in order (rows are not sent back: the caller holds them)."""
    out: list[Encoded | Rejected] = []
    for row in rows:
        try:
            out.append(encode_frame(row, opts))
        except ImageError as e:
            out.append(Rejected(str(e)))
        except MemoryError:
            out.append(Rejected("image too large to decode in memory"))
        except Exception as e:  # a decoder bug on one row must not stop the build
            out.append(Rejected(f"unexpected error reading the image ({type(e).__name__}: {e})"))
    return out
