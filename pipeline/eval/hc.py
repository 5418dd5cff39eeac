"""Head circumference from a segmentation: a sub-pixel ellipse fit, and HC18 submission rows.

Pixel coordinates: (0, 0) is the centre of the top-left pixel, x = column, y = row (down).
An ellipse is (cx, cy, a, b, angle): semi-axes a >= b in pixels, angle of the a axis from +x
towards +y in radians, in [0, pi). HC is ``preprocessing.format.ellipse_perimeter`` (Ramanujan).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
from skimage.measure import EllipseModel, find_contours

from preprocessing.format import Letterbox, SonostreamError, ellipse_perimeter

HC18_COLUMNS = ("filename", "center_x_mm", "center_y_mm", "semi_axes_a_mm", "semi_axes_b_mm",
                "angle_rad")
MIN_POINTS = 5  # a conic has 5 degrees of freedom
MIN_AREA = 8.0  # px^2: smaller blobs are specks, not heads


@dataclasses.dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    a: float
    b: float
    angle: float

    def perimeter(self) -> float:
        """Circumference in pixels."""
        return ellipse_perimeter(self.a, self.b)

    def hc_mm(self, pixel_size_mm: float | None) -> float | None:
        """Circumference in mm; None when the pixel size is missing, not finite or <= 0."""
        if not _valid_size(pixel_size_mm):
            return None
        return ellipse_perimeter(self.a * pixel_size_mm, self.b * pixel_size_mm)

    def as_dict(self) -> dict:
        """{"cx", "cy", "a", "b", "angle"} as plain floats (JSON-ready)."""
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}


def _valid_size(pixel_size_mm) -> bool:
    return pixel_size_mm is not None and math.isfinite(pixel_size_mm) and pixel_size_mm > 0


def _area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def fit_ellipse(mask_or_prob: np.ndarray, level: float = 0.5) -> Ellipse | None:
    """Ellipse of the head in an (H, W) mask (bool, or integer with nonzero = foreground) or
    probability map (float, 0..1, contoured at ``level``); None when there is no head.

    Why marching squares: a pixel mask's boundary lies half a pixel outside its outermost
    foreground pixel centres. A fit to those centres (cv2.findContours) shrinks both semi-axes by
    about 0.5 px (~2.4 mm of HC at 0.75 mm/pixel); the 0.5 iso-contour of the 0/1 map runs along
    the pixel edges (sub-pixel, interpolated) and is unbiased for a rasterised filled ellipse.
    """
    m = np.asarray(mask_or_prob)
    if m.ndim != 2:
        raise SonostreamError(f"expected an (H, W) mask or probability map, got shape {m.shape}")
    if m.dtype.kind in "biu":
        f = (m != 0).astype(np.float64)
    else:
        f = np.nan_to_num(m.astype(np.float64), nan=0.0)
        if f.max(initial=0.0) > 1.0 + 1e-6:  # a float 0/255 mask contoured at 0.5 is biased
            raise SonostreamError("a float map must hold probabilities in [0, 1]; pass masks as "
                                  "bool or integer arrays")
    if not (f > level).any():
        return None
    h, w = f.shape
    # Zero padding closes contours that run off the frame; the pad is subtracted below.
    contours = [c for c in find_contours(np.pad(f, 1), level) if len(c) > MIN_POINTS
                and np.allclose(c[0], c[-1])]
    if not contours:
        return None
    xys = [c[:-1, ::-1] - 1.0 for c in contours]  # (row, col) -> (x, y), last point = first
    # The head is the contour enclosing the largest area (not the longest: a ragged speck or a
    # hole can have a long outline but encloses little).
    areas = [_area(xy) for xy in xys]
    k = int(np.argmax(areas))
    xy = xys[k]
    if areas[k] < MIN_AREA:
        return None
    # Points with a coordinate outside [0, W-1] x [0, H-1] lie on the pad: they trace the frame
    # edge, not the head. Fitting only the true arc recovers a head cut off by the border
    # instead of an ellipse squashed against it.
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
    if inside.sum() >= MIN_POINTS:
        xy = xy[inside]
    # EllipseModel (Halir & Flusser's direct fit) in float64: always an ellipse, never a
    # hyperbola, and the same numbers as cv2.fitEllipseDirect without float32 points. On
    # rasterised ellipses it matched cv2.fitEllipse to ~0.01 px; either is accurate.
    model = EllipseModel.from_estimate(xy)
    if not model:
        return None
    (cx, cy), (a, b), theta = model.center, model.axis_lengths, float(model.theta)
    if not all(math.isfinite(v) for v in (cx, cy, a, b, theta)) or min(a, b) <= 0:
        return None
    if b > a:  # the convention wants a >= b: swap and turn the axis by 90 degrees
        a, b, theta = b, a, theta + math.pi / 2
    angle = theta % math.pi
    if angle >= math.pi:  # float rounding of a tiny negative theta
        angle = 0.0
    return Ellipse(float(cx), float(cy), float(a), float(b), float(angle))


def hc18_row(filename: str, ellipse: Ellipse | None, pixel_size_mm: float | None,
             geometry: Letterbox | None = None) -> dict:
    """One row of an HC18 submission CSV (keys = HC18_COLUMNS), in mm of the source image.

    ``ellipse`` and ``pixel_size_mm`` are those of the STORED frame; ``geometry`` is how that
    frame was made from its source (an index row's letterbox; None: stored = source). The
    ellipse goes back to source pixels through the contract's one mapping
    (``Letterbox.ellipse_to_source``: centre, axes and angle exactly), and is scaled by the
    source pixel size (``Letterbox.source_pixel_size``). Centres are measured from the centre of
    the source's top-left pixel. No ellipse (no head, or an uncertain one: below the quality
    floor, see ``quality``) or no valid pixel size -> every numeric field is None.
    """
    row = dict.fromkeys(HC18_COLUMNS)
    row["filename"] = filename
    if ellipse is None or not _valid_size(pixel_size_mm):
        return row
    cx, cy, a, b, angle = (ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle)
    mm = pixel_size_mm
    if geometry is not None and not geometry.identity:
        cx, cy, a, b, angle = geometry.ellipse_to_source(cx, cy, a, b, angle)
        mm = geometry.source_pixel_size(pixel_size_mm)
    row.update(center_x_mm=cx * mm, center_y_mm=cy * mm, semi_axes_a_mm=a * mm,
               semi_axes_b_mm=b * mm, angle_rad=angle)
    return row
