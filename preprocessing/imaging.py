"""Image decoding, conversion to 8-bit grayscale, letterbox resizing, mask checks and encoding.

Every source image, whatever its mode (RGB, RGBA, palette, 16-bit, float), becomes an 8-bit
grayscale ``uint8`` array of shape ``(H, W)``. OpenCV decodes PNG and JPEG (the hot path; it
fails on truncated files instead of returning half an image); Pillow handles whatever OpenCV
cannot read (GIF, some TIFFs), so any format Pillow knows is accepted.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import stat

import cv2
import numpy as np
from PIL import Image

from .format import Letterbox, SonostreamError
from .headers import header_size

cv2.setNumThreads(1)  # one codec thread per worker process; parallelism is across processes
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
except AttributeError:  # older OpenCV builds without the logging module
    pass


class ImageError(SonostreamError):
    """An image that cannot be used; the message says why (it lands in rejects.csv)."""


def read_bytes(path: str) -> bytes:
    """The bytes of the regular file ``path``. A FIFO, device, socket or folder is an ImageError
    before anything is read (a FIFO would block, ``/dev/zero`` never ends): ``os.stat`` refuses
    them without opening, and the file is opened non-blocking and checked again with ``fstat``,
    so a path swapped in between cannot hang the build either."""
    try:
        _check_regular(os.stat(path).st_mode, path)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:   # os.read, not a file object: this is once per frame and mask of a build
            st = os.fstat(fd)
            _check_regular(st.st_mode, path)
            parts = [os.read(fd, st.st_size + 1)]
            while parts[-1]:   # until end of file (it may have grown since the fstat)
                parts.append(os.read(fd, 1 << 20))
        finally:
            os.close(fd)
        data = parts[0] if len(parts) == 2 else b"".join(parts)
    except FileNotFoundError:
        raise ImageError(f"file not found: {path}") from None
    except OSError as e:
        raise ImageError(f"cannot read file {path}: {e.strerror or e}") from None
    if not data:
        raise ImageError(f"file is empty (0 bytes): {path}")
    return data


def _check_regular(mode: int, path: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise ImageError(f"{path} is {kind}, not a regular file; frame_path and mask_path must name "
                     "image files")


@contextlib.contextmanager
def _no_pillow_bomb_check():
    """Pillow's own decompression-bomb limit off: ``check_pixels`` applies ours from the header
    (workers are single-threaded, so the global is safe to flip)."""
    old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone: PNG IHDR and JPEG SOF read directly
    (``headers.header_size``), any other format by ``PIL.Image.open``, which parses the header
    (TGA, TIFF, BMP, ...) and decodes no pixel; None when neither recognises the format."""
    size = header_size(data)
    if size is not None:
        return size
    try:
        with _no_pillow_bomb_check(), Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # unrecognised or broken header: the decoders say why
        return None


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} ({width * height:,} pixels), over the "
                         f"limit of {max_pixels:,} pixels; downscale it, or raise --max-pixels "
                         "if it is genuine")


def decode_raw(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Decode image bytes as stored: ``(H, W)`` or ``(H, W, C)`` in BGR(A) order, any dtype.

    With ``max_pixels``, the size in the header is checked before any pixel is decoded; a format
    Pillow cannot parse the header of is checked after decoding (OpenCV's own limit of 2^30
    pixels bounds it). Every decoder failure is an ImageError."""
    if max_pixels is not None:
        size = image_size(data)
        if size is not None:
            check_pixels(*size, max_pixels)
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageError(f"not a readable image (OpenCV: {_short(str(e))})") from None
    arr = _decode_pillow(data, own_limit=max_pixels is not None) if arr is None else arr
    if max_pixels is not None:
        check_pixels(arr.shape[1], arr.shape[0], max_pixels)
    return arr


def _short(msg: str) -> str:
    return msg.strip().splitlines()[-1] if msg.strip() else "unknown error"


def decode_gray(data: bytes) -> np.ndarray:
    """Decode image bytes to an 8-bit grayscale array ``(H, W)`` uint8."""
    return to_gray8(decode_raw(data))


def _decode_pillow(data: bytes, own_limit: bool = False) -> np.ndarray:
    """``own_limit``: the caller checked the size, so Pillow's bomb limit is off."""
    guard = _no_pillow_bomb_check() if own_limit else contextlib.nullcontext()
    try:
        with guard, Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
            if arr.ndim == 3 and arr.shape[2] in (3, 4):  # Pillow is RGB(A); OpenCV is BGR(A)
                arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
            return arr
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a readable image (neither OpenCV nor Pillow recognises the "
                         "format)") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as e:
        msg = _OBJECT_REPR.sub("", str(e)).strip() or type(e).__name__
        if "truncated" in msg:
            raise ImageError(f"truncated image file ({msg})") from None
        raise ImageError(f"not a readable image ({msg})") from None


_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")  # never in a reason


def to_gray8(arr: np.ndarray) -> np.ndarray:
    """Any decoded array (BGR/BGRA channel order) -> ``(H, W)`` uint8.

    Colour -> luma (ITU-R 601 weights); alpha is composited onto black (outside an ultrasound
    fan is black); integer images deeper than 8 bits are scaled by their bit depth (12-bit data
    by 4095, 16-bit by 65535) rather than per-image min/max, so frames of one loop keep the same
    brightness relation; float images are scaled by their own range.
    """
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif arr.shape[2] == 2:  # gray + alpha
            arr = (arr[:, :, 0].astype(np.float32) * (arr[:, :, 1] / _full_scale(arr))).astype(arr.dtype)
        elif arr.shape[2] in (3, 4):
            if arr.shape[2] == 4:
                alpha = arr[:, :, 3:4].astype(np.float32) / _full_scale(arr)
                arr = (arr[:, :, :3].astype(np.float32) * alpha).astype(arr.dtype)
            arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_BGR2GRAY)
        else:
            raise ImageError(f"unsupported channel count {arr.shape[2]}")
    elif arr.ndim != 2:
        raise ImageError(f"unsupported image shape {arr.shape}")
    if arr.size == 0:
        raise ImageError("image has zero width or height")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = int(arr.max())
        if arr.min() < 0:
            raise ImageError("signed image with negative values; convert it to unsigned first")
        if top <= 255:
            return arr.astype(np.uint8)
        bits = max(8, int(top).bit_length())
        return np.round(arr.astype(np.float64) * (255.0 / (2**bits - 1))).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("float image contains NaN or infinity")
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return np.round(scaled).astype(np.uint8)
    raise ImageError(f"unsupported pixel type {arr.dtype}")


def _full_scale(arr: np.ndarray) -> float:
    return 65535.0 if arr.dtype == np.uint16 else 255.0


def letterbox(img: np.ndarray, lb: Letterbox, mask: bool = False) -> np.ndarray:
    """``img`` (src_h, src_w) resized and centred as ``lb`` says (``format.geometry``): INTER_AREA
    to shrink, INTER_LINEAR to enlarge, INTER_NEAREST for a 0/255 mask (it stays binary)."""
    if lb.identity:
        return img
    if (lb.out_h, lb.out_w) == (lb.src_h, lb.src_w):
        small = img
    else:
        interp = cv2.INTER_NEAREST if mask else (
            cv2.INTER_AREA if lb.scale < 1 else cv2.INTER_LINEAR)
        small = cv2.resize(img, (lb.out_w, lb.out_h), interpolation=interp)
    out = np.zeros((lb.size, lb.size), img.dtype)
    out[lb.pad_y:lb.pad_y + lb.out_h, lb.pad_x:lb.pad_x + lb.out_w] = small
    return out


def encode(img: np.ndarray, codec: str, quality: int = 95) -> bytes:
    """Encode ``(H, W)`` uint8 as ``jpeg`` (baseline, given quality) or ``png`` (lossless)."""
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif codec == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise SonostreamError(f"unknown codec {codec!r}; use 'jpeg' or 'png'")
    if not ok:
        raise ImageError(f"{codec} encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


# Import frames are an intermediate the build decodes once: zlib level 1 with run-length matching
# and the Up filter (runs of black around the fan, rows alike) encodes a 640x480 ultrasound frame
# in about 1/2.5 of level 3's time, as small (61 kB), and decodes faster. Lossless: same pixels.
IMPORT_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):   # OpenCV >= 4.11; before, libpng chooses the filter
    IMPORT_PNG += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def encode_import_png(img: np.ndarray) -> bytes:
    """``(H, W)`` uint8 as the PNG an importer writes (lossless, tuned for speed)."""
    ok, buf = cv2.imencode(".png", img, IMPORT_PNG)
    if not ok:
        raise ImageError(f"png encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


def mask_levels(mask: np.ndarray) -> list[int]:
    """The values present in a uint8 mask, ascending (a histogram: 7x faster than np.unique).
    The one check of mask values: build (``binarize_mask``) and the readers use it."""
    return np.flatnonzero(cv2.calcHist([mask], [0], None, [256], [0, 256]).ravel()).tolist()


def shown_levels(levels: list[int]) -> str:
    return ", ".join(str(v) for v in levels[:6]) + (", ..." if len(levels) > 6 else "")


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """A mask as 0/255 uint8. Accepts 0/255 and 0/1 masks; anything else is an ImageError."""
    levels = set(mask_levels(mask))
    if levels <= {0, 255}:
        return mask
    if levels <= {0, 1}:
        return mask * np.uint8(255)
    raise ImageError(f"mask has values other than 0/255 (found {shown_levels(sorted(levels))}); "
                     "threshold it to 0/255")


def is_png_gray8(data: bytes) -> bool:
    """True when ``data`` is a PNG whose header says 8-bit grayscale (safe to store as is)."""
    return len(data) > 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 8 and data[25] == 0


def resolve(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.join(base_dir, path)
