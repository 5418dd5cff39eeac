"""Baseline-JPEG DICOM loops decoded by OpenCV (libjpeg-turbo) instead of pydicom's decoders.

pydicom decodes a YBR_FULL_422 JPEG frame with pylibjpeg to YCbCr and converts it to RGB in
numpy floats: about 20 ms of a 640x480 frame. OpenCV decodes the same bytes (the frame's
fragments, ``pydicom.encaps.generate_frames``) straight to RGB with SIMD in about 3 ms. The two
decoders' IDCT, chroma upsampling and colour conversion round differently: on pydicom-data's
loops the stored gray differs by at most 2 levels (mean 0.01), and the colour-overlay flags of
about 0.01 % of pixels. So that a JPEG whose colour transform OpenCV reads differently from the
header cannot slip through (an RGB JPEG stored without the colour transform and without a marker
saying so: OpenCV converts it from YCbCr, pydicom does not), the first frame of every file is
decoded by both and compared: beyond TOLERANCE gray levels, or COLOUR_SHARE of the colour flags, the
file is left to pydicom. Only 8-bit YBR and MONOCHROME loops take this path: an RGB-labelled
JPEG is often stored without the colour transform, and a single image gains nothing.
"""
from __future__ import annotations

from typing import Callable, Iterator

import cv2
import numpy as np

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PHOTOMETRIC = ("YBR_FULL_422", "YBR_FULL", "MONOCHROME2", "MONOCHROME1")
TOLERANCE = 3   # gray levels: OpenCV's decode of a first frame vs pydicom's, at most
COLOUR_SHARE = 0.002   # share of pixels whose colour-overlay flag may differ


def eligible(ds, photometric: str, count: int) -> bool:
    meta = getattr(ds, "file_meta", None)
    samples = int(ds.get("SamplesPerPixel", 1))
    return (count > 1 and meta is not None and str(meta.get("TransferSyntaxUID")) == JPEG_BASELINE
            and int(ds.get("BitsAllocated", 8)) == 8 and photometric in PHOTOMETRIC
            and samples == (1 if photometric.startswith("MONO") else 3))


def frames(ds, count: int, photometric: str, display: Callable) -> Iterator[np.ndarray]:
    """Frames 0, 1, ... as pydicom's ``iter_pixels(as_rgb=True)`` gives them ((H, W, 3) RGB or
    (H, W) uint8), while OpenCV decodes them; it stops early, without raising, at a frame OpenCV
    cannot decode or when the first frame disagrees with pydicom's (through ``display``, the
    caller's gray + colour conversion): the caller decodes the rest with pydicom."""
    from pydicom.encaps import generate_frames
    colour = not photometric.startswith("MONO")
    flag = (getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR) if colour
            else cv2.IMREAD_GRAYSCALE)
    swap = colour and not hasattr(cv2, "IMREAD_COLOR_RGB")   # OpenCV < 4.10 decodes to BGR
    shape = (int(ds.Rows), int(ds.Columns))
    try:
        for n, data in enumerate(generate_frames(ds.PixelData, number_of_frames=count)):
            if n >= count:
                return
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            if arr is not None and swap:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
            if arr is None or arr.shape[:2] != shape or (n == 0 and not _agrees(ds, arr, display)):
                return
            yield arr
    except (ValueError, cv2.error):   # fragments that cannot be split into frames, ...
        return


def _agrees(ds, arr: np.ndarray, display: Callable) -> bool:
    from pydicom.pixels import iter_pixels
    try:
        ref = next(iter_pixels(ds, as_rgb=True, indices=[0]))
    except Exception:   # pydicom's own error is raised when it decodes the file instead
        return False
    if ref.shape != arr.shape or ref.dtype != arr.dtype:
        return False
    (g0, c0), (g1, c1) = display(ref), display(arr)
    if c0 is not None and np.count_nonzero(c0 != c1) > COLOUR_SHARE * c0.size:
        return False
    return int(cv2.absdiff(g0, g1).max()) <= TOLERANCE
