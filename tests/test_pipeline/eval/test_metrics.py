"""Dice, IoU, HD95 and summarize on hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.eval.metrics import dice, hd95, iou, summarize


def rect(shape, y0, y1, x0, x1, value=255):
    m = np.zeros(shape, np.uint8)
    m[y0:y1, x0:x1] = value
    return m


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_dice_iou_overlapping_rectangles():
    # 10x10 squares offset by 5 in x and y: overlap 5x5 = 25, sizes 100 + 100, union 175.
    p, g = rect((20, 20), 0, 10, 0, 10), rect((20, 20), 5, 15, 5, 15)
    assert dice(p, g) == pytest.approx(2 * 25 / 200)
    assert iou(p, g) == pytest.approx(25 / 175)
    assert dice(p != 0, g != 0) == dice(p, g)  # bool and 0/255 read alike


def test_dice_iou_empty_cases():
    empty, full = np.zeros((8, 8), bool), rect((8, 8), 2, 5, 2, 5)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, full) == 0.0 and dice(full, empty) == 0.0
    assert iou(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert dice(full, full) == 1.0 and iou(full, full) == 1.0
    with pytest.raises(ValueError):
        dice(np.zeros((8, 8)), np.zeros((8, 9)))


def test_hd95_concentric_squares_by_hand():
    # Inner square rows/cols 10..29 (boundary 76 px), outer 7..32 (boundary 100 px): every inner
    # boundary pixel is 3 px from the outer ring. On the outer ring, near each of the 4 corners:
    # 1 pixel at sqrt(18), 2 at sqrt(13), 2 at sqrt(10); the other 80 are at 3.
    # Sorted 176 distances: 156 x 3, 8 x sqrt(10), 8 x sqrt(13) (ranks 164..171), 4 x sqrt(18).
    # np.percentile(95) is at rank 0.95 * 175 = 166.25 -> sqrt(13).
    inner, outer = rect((40, 40), 10, 30, 10, 30), rect((40, 40), 7, 33, 7, 33)
    assert hd95(inner, outer) == pytest.approx(math.sqrt(13))
    assert hd95(outer, inner) == pytest.approx(math.sqrt(13))  # symmetric
    assert hd95(inner, outer, spacing=0.5) == pytest.approx(math.sqrt(13) / 2)


def brute_hd95(p, g):
    """Independent reference: 4-neighbour boundaries found by shifting, all-pairs distances."""
    def boundary_points(m):
        q = np.pad(m != 0, 1)
        core = q[1:-1, 1:-1]
        inner = core & q[:-2, 1:-1] & q[2:, 1:-1] & q[1:-1, :-2] & q[1:-1, 2:]
        return np.argwhere(core & ~inner).astype(float)
    bp, bg = boundary_points(p), boundary_points(g)
    d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.hstack([d.min(1), d.min(0)]), 95))


def test_hd95_matches_brute_force_on_shifted_square_and_ellipse_like_blobs():
    a, b = rect((40, 40), 10, 30, 10, 30), rect((40, 40), 10, 30, 13, 33)  # shifted by 3 px
    assert hd95(a, b) == pytest.approx(brute_hd95(a, b))
    assert hd95(a, b) == pytest.approx(3.0)  # the shifted left/right sides dominate the tail
    c, d = disc((48, 48), 20, 22, 11), disc((48, 48), 25, 24, 9)
    assert hd95(c, d) == pytest.approx(brute_hd95(c, d))
    # A shape touching the image edge: its edge pixels are boundary too (MedPy's behaviour).
    e, f = rect((30, 30), 0, 12, 0, 30), rect((30, 30), 0, 15, 0, 30)
    assert hd95(e, f) == pytest.approx(brute_hd95(e, f))


def test_hd95_discs_two_pixels_apart():
    small, big = disc((80, 80), 40, 40, 20), disc((80, 80), 40, 40, 22)
    assert hd95(small, big) == pytest.approx(2.0, abs=0.5)
    assert hd95(small, big, spacing=0.5) == pytest.approx(hd95(small, big) / 2)


def test_hd95_identical_and_empty():
    m = disc((32, 32), 16, 16, 8)
    empty = np.zeros_like(m)
    assert hd95(m, m) == 0.0
    assert hd95(empty, empty) == 0.0
    assert hd95(m, empty) is None and hd95(empty, m) is None
    with pytest.raises(ValueError):
        hd95(m, m, spacing=0.0)


def test_summarize_skips_and_counts_none():
    s = summarize([1.0, None, 3.0, None, 5.0])
    assert s["n"] == 3 and s["n_missing"] == 2
    assert s["mean"] == pytest.approx(3.0) and s["median"] == pytest.approx(3.0)
    assert s["std"] == pytest.approx(math.sqrt(8 / 3))  # population std of 1, 3, 5
    assert summarize([None, None]) == {"n": 0, "n_missing": 2, "mean": None, "median": None,
                                       "std": None}
    assert summarize([])["n"] == 0
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_largest_component_drops_specks_and_keeps_the_edge():
    from pipeline.infer import largest_component
    prob = np.zeros((40, 40), np.float32)
    prob[10:30, 10:30] = 0.9
    prob[9, 10:30] = 0.3          # sub-pixel edge information below 0.5, next to the head
    prob[2:4, 35:37] = 0.8        # a speck
    mask, p = largest_component(prob)
    assert mask.sum() == 400 and not mask[2, 35]
    assert p[2, 35] == 0 and p[9, 15] == pytest.approx(0.3)
    one, same = largest_component(np.where(prob > 0.85, prob, 0))
    assert one.sum() == 400 and same is not None


def test_dice_averages_head_frames_only_and_empty_frames_are_scored_apart():
    from pipeline.eval.evaluate import aggregate
    rec = lambda dice, head, pred: {"has_mask": True, "head_true": head, "head_pred": pred,  # noqa: E731
                                    "dice": dice, "iou": dice, "hd95_mm": None, "hc_true_mm": None,
                                    "hc_abs_err_mm": None, "plane": None, "plane_pred": None}
    records = [rec(0.8, True, True), rec(0.6, True, True),            # two heads
               rec(1.0, False, False), rec(1.0, False, False),        # empty frames, answered right
               rec(0.0, False, True)]                                 # a false head
    m = aggregate(records, planes=[])
    assert m["head_frames"] == 2 and m["frames_with_mask"] == 5
    assert m["dice"] == pytest.approx(0.7)                            # not (0.8+0.6+1+1+0)/5
    assert m["dice_all"] == pytest.approx((0.8 + 0.6 + 1 + 1 + 0) / 5)
    assert m["empty_false_positive_rate"] == pytest.approx(1 / 3)
