"""Find the imaging area of an ultrasound screen (fan or rectangle) and blank everything else.

Scanner exports carry burned-in text, calipers, logos, colour bars and depth rulers around the
image; an encoder trained on them learns the overlay. ``SectorProbe`` collects what detection
needs from a loop one frame at a time, ``SectorProbe.find`` returns a ``Sector`` (crop box + mask)
and ``Sector.apply`` crops a frame to the box and zeroes everything outside the mask.

Detection, inside a search window (the DICOM ultrasound region when there is one, else the frame):

1. image   (every input): non-colour pixels above the black level in any frame, opened with
           a disc about 1/60 of the window's shorter side so thin strokes (text, calipers, tick
           marks) disappear. The largest piece, plus pieces at least KEEP_RATIO of its size (a fan
           split by a dark cavity), is the image; its convex hull is the mask.
2. motion  (loops): pixels whose gray value changes by more than MOTION_DELTA over the loop are
           imaging pixels (static overlay text never changes); the hull of their big pieces, grown
           by the still pieces of step 1 that they touch (dim, static flanks of the fan), is the
           mask. Used when the moving area covers between MIN_AREA and FULL of the window: a frozen
           loop, or one where everything changes, tells nothing.
The hull's bounding box is the crop. If nothing large enough is found, the window itself is used
(``region``) or nothing is cropped (``none``).

Colour (R, G, B differing by more than COLOUR_DELTA) is overlay outside the fan; inside it, colour
blobs reaching within 1/20 of the fan's size of its border and smaller than OVERLAY_AREA of the fan
(colour bars drawn over the image edge) are blanked, and the rest (colour Doppler) is kept as its
luma (ITU-R 601 gray).
Pure numpy/OpenCV; coordinates are source pixels, boxes are (x0, y0, x1, y1) with x1, y1 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .format import SonostreamError

COLOUR_DELTA = 40
MOTION_DELTA = 12
MIN_AREA = 0.02
FULL = 0.9
BLACK_LEVELS = (0, 1, 2, 4, 8, 16)
KEEP_RATIO = 0.25
OVERLAY_AREA = 0.05

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Sector:
    box: Box  # crop box in source pixels, x1 and y1 exclusive
    mask: np.ndarray  # (y1 - y0, x1 - x0) bool, True inside the imaging area
    method: str  # motion | image | region | none

    @classmethod
    def whole(cls, shape: tuple[int, int], box: Box | None = None, method: str = "none") -> "Sector":
        x0, y0, x1, y1 = box or (0, 0, shape[1], shape[0])
        return cls((x0, y0, x1, y1), np.ones((y1 - y0, x1 - x0), bool), method)

    def apply(self, gray: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
        """``gray`` (H, W) uint8 cropped to the box, 0 outside the mask and on colour overlay."""
        x0, y0, x1, y1 = self.box
        out = gray[y0:y1, x0:x1].copy()
        out[~self.mask] = 0
        if colour is not None:
            out[_overlay(colour[y0:y1, x0:x1] & self.mask, self.mask)] = 0
        return out


def split_colour(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8 -> (luma (H, W) uint8, colour mask (H, W) bool)."""
    rgb = np.ascontiguousarray(rgb)
    r, g, b = cv2.split(rgb)
    spread = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), spread > COLOUR_DELTA


class SectorProbe:
    """Running per-pixel min and max, the first frame and the colour pixels of a loop."""

    def __init__(self) -> None:
        self.first: np.ndarray | None = None
        self.lo = self.hi = self.colour = None
        self.frames = 0

    def add(self, gray: np.ndarray, colour: np.ndarray | None = None) -> None:
        if self.first is None:
            self.first, self.lo, self.hi = gray.copy(), gray.copy(), gray.copy()
            self.colour = np.zeros(gray.shape, bool)
        elif gray.shape != self.first.shape:
            raise SonostreamError(f"frame size changed within the loop ({self.first.shape} -> "
                                  f"{gray.shape})")
        else:
            np.minimum(self.lo, gray, out=self.lo)
            np.maximum(self.hi, gray, out=self.hi)
        if colour is not None:
            self.colour |= colour
        self.frames += 1

    def find(self, region: Box | None = None) -> Sector:
        if self.first is None:
            raise SonostreamError("no frame to find the sector in")
        h, w = self.first.shape
        x0, y0, x1, y1 = _clip(region, h, w) if region else (0, 0, w, h)
        win = (slice(y0, y1), slice(x0, x1))
        still, area = _still(self.hi[win], self.colour[win])
        method = "image"
        if self.frames > 1:
            moving = cv2.subtract(self.hi[win], self.lo[win]) > MOTION_DELTA
            moving_area = _image_area(moving) if MIN_AREA <= moving.mean() <= FULL else None
            if moving_area is not None:  # dim, static parts of the fan join the moving part
                labels = _pieces(still)[0]
                joined = np.unique(labels[moving_area])
                area, method = _hull(moving_area | np.isin(labels, joined[joined > 0])), "motion"
        if area is None:
            return Sector.whole((h, w), (x0, y0, x1, y1), "region" if region else "none")
        ys, xs = np.nonzero(area)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        box = (int(x0 + bx0), int(y0 + by0), int(x0 + bx1), int(y0 + by1))
        return Sector(box, area[by0:by1, bx0:bx1], method)


def _clip(box: Box, h: int, w: int) -> Box:
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise SonostreamError(f"region {box} lies outside the {w}x{h} frame")
    return x0, y0, x1, y1


def _kernel(shape: tuple[int, int]) -> np.ndarray:
    k = max(3, (min(shape) // 60) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _still(first: np.ndarray, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(candidate, area) of one frame: non-colour pixels above the black level.

    The black level is the lowest of BLACK_LEVELS whose area leaves part of the window out: some
    scanners draw the screen around the image in a very dark gray, one step above the black
    around the fan. When every level fills the window, the image fills it (level 0).
    """
    fallback = None
    for level in BLACK_LEVELS:
        candidate = (first > level) & ~colour
        area = _image_area(candidate)
        if area is None:
            break
        if area.mean() < FULL:
            return candidate, area
        fallback = fallback or (candidate, area)
    return fallback or ((first > 0) & ~colour, None)


def _pieces(candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected pieces of ``candidate`` after opening: (labels, area of each label)."""
    opened = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_OPEN, _kernel(candidate.shape))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA]


def _hull(pieces: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(pieces.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros(pieces.shape, np.uint8)
    cv2.fillPoly(mask, [cv2.convexHull(np.concatenate(contours))], 1)
    return mask.astype(bool)


def _image_area(candidate: np.ndarray) -> np.ndarray | None:
    """Convex hull of the big pieces of ``candidate`` after opening, or None if too small."""
    labels, areas = _pieces(candidate)
    areas = areas[1:]
    if areas.size == 0 or areas.max() < MIN_AREA * candidate.size:
        return None
    keep = np.flatnonzero(areas >= KEEP_RATIO * areas.max()) + 1
    return _hull(np.isin(labels, keep))


def _overlay(colour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Colour blobs reaching into the band along the mask's border (1/20 of its shorter side) and
    small next to it (colour bars drawn over the image's edge), as a mask."""
    if not colour.any():
        return colour
    n, labels, stats, _ = cv2.connectedComponentsWithStats(colour.astype(np.uint8), connectivity=8)
    k = max(3, (min(mask.shape) // 10) | 1)  # a band 1/20 of the shorter side wide
    inner = cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0)
    touching = np.unique(labels[mask & (inner == 0)])
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < OVERLAY_AREA * mask.sum())
    bad = np.intersect1d(touching[touching > 0], small)
    return np.isin(labels, bad) if bad.size else np.zeros_like(colour)
