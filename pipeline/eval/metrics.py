"""Segmentation metrics on binary masks: Dice, IoU, HD95, and a summary over cases.

Masks are (H, W) arrays, bool or 0/255 uint8 (any nonzero value is foreground); pred and gt
must have the same shape. Conventions for empty masks: an empty prediction of an empty ground
truth is a correct "no head" answer (Dice = IoU = 1, HD95 = 0); exactly one empty mask gives
Dice = IoU = 0 and an undefined HD95 (None), which callers count rather than hide.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from scipy import ndimage

from preprocessing.format import SonostreamError

# Boundary structuring element: the 4-connected cross (scipy connectivity 1), as MedPy's
# hd95 uses by default. A foreground pixel is on the boundary when one of its 4 neighbours is
# background, so the boundary is a thin 8-connected curve; the full 3x3 element would also mark
# pixels that touch background only diagonally and thicken the boundary at slanted edges.
_CROSS = ndimage.generate_binary_structure(2, 1)


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    if p.shape != g.shape or p.ndim != 2:
        raise SonostreamError(f"pred and gt must be 2-D masks of one shape, got {p.shape} and "
                              f"{g.shape}")
    return p, g


def dice(pred, gt) -> float:
    """2|P & G| / (|P| + |G|); 1.0 when both are empty, 0.0 when exactly one is."""
    p, g = _pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def iou(pred, gt) -> float:
    """|P & G| / |P | G|; 1.0 when both are empty, 0.0 when exactly one is."""
    p, g = _pair(pred, gt)
    union = int(np.logical_or(p, g).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(p, g).sum()) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: foreground pixels with a 4-neighbour in the background. Pixels on the image
    edge count as boundary (erosion treats the outside as background, as MedPy does)."""
    m = np.asarray(mask) != 0
    return m ^ ndimage.binary_erosion(m, structure=_CROSS, iterations=1)


def _surface_distances(src: np.ndarray, dst: np.ndarray, spacing: float) -> np.ndarray:
    # EDT of the complement of dst's boundary = distance of every pixel to dst's nearest
    # boundary pixel (centre to centre, in the units of `spacing`); read it at src's boundary.
    dt = ndimage.distance_transform_edt(~boundary(dst), sampling=(spacing, spacing))
    return dt[boundary(src)]


def hd95(pred, gt, spacing: float = 1.0) -> float | None:
    """95th percentile of the symmetric boundary-to-boundary distances (MedPy's ``hd95``).

    ``spacing`` is the (isotropic) pixel size; the result is in its unit (pixels by default,
    mm when spacing is in mm/pixel). Both masks empty -> 0.0; exactly one empty -> None.
    """
    p, g = _pair(pred, gt)
    if not (math.isfinite(spacing) and spacing > 0):
        raise SonostreamError(f"spacing must be a positive number, got {spacing}")
    p_any, g_any = bool(p.any()), bool(g.any())
    if not p_any and not g_any:
        return 0.0
    if p_any != g_any:
        return None  # no boundary to measure against: undefined, not 0 and not infinity
    d_pg = _surface_distances(p, g, spacing)
    d_gp = _surface_distances(g, p, spacing)
    return float(np.percentile(np.hstack([d_pg, d_gp]), 95))


def summarize(values: Iterable[float | None]) -> dict:
    """{mean, median, std, n, n_missing} over ``values``; None entries are left out and counted
    in n_missing. std is the population std (ddof=0). mean/median/std are None when n == 0.
    A NaN or infinite value is an error (a bug upstream), not a silent missing value."""
    values = list(values)
    kept = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    if not np.isfinite(kept).all():
        raise SonostreamError("summarize got a NaN or infinite value; use None for missing values")
    n = int(kept.size)
    out = {"n": n, "n_missing": len(values) - n, "mean": None, "median": None, "std": None}
    if n:
        out.update(mean=float(kept.mean()), median=float(np.median(kept)), std=float(kept.std()))
    return out
