"""The sub-pixel ellipse fit (unbiased on rasterised ellipses) and HC18 submission rows."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy import ndimage

from pipeline.eval.hc import HC18_COLUMNS, Ellipse, fit_ellipse, hc18_row
from preprocessing.format import ellipse_perimeter
from preprocessing.synth.render import head_mask

# (cx, cy, a, b, angle): rotated, axis-aligned, angle near 0 and near pi, a near-circle.
CASES = [
    (64.3, 60.7, 40.2, 30.4, 0.7),
    (70.2, 65.9, 45.5, 25.1, 3.10),
    (60.0, 61.5, 30.3, 18.7, 0.02),
    (63.6, 64.1, 50.0, 36.0, math.pi / 2),
    (58.9, 66.2, 22.4, 21.9, 1.3),
]
SIZE = 128


def mask(cx, cy, a, b, angle, size=SIZE):
    """255 at pixel centres inside the ellipse: how the synthetic ground truth is drawn."""
    labels = dict(ellipse_cx=cx, ellipse_cy=cy, ellipse_a=a, ellipse_b=b, ellipse_angle=angle)
    return head_mask(size, labels)


def angle_error(got, want):
    return abs((got - want + math.pi / 2) % math.pi - math.pi / 2)


def check(e, case, tol_c=0.1, tol_ab=0.15):
    cx, cy, a, b, angle = case
    assert e is not None
    assert abs(e.cx - cx) < tol_c and abs(e.cy - cy) < tol_c
    assert abs(e.a - a) < tol_ab and abs(e.b - b) < tol_ab
    assert e.a >= e.b and 0.0 <= e.angle < math.pi
    assert e.perimeter() == pytest.approx(ellipse_perimeter(a, b), rel=0.003)
    if a / b > 1.1:  # the angle of a near-circle is not defined
        assert angle_error(e.angle, angle) < math.radians(1.0)


@pytest.mark.parametrize("case", CASES)
def test_fit_on_rasterised_mask_is_unbiased(case):
    m = mask(*case)
    check(fit_ellipse(m), case)
    check(fit_ellipse(m != 0), case)  # bool masks read like 0/255 ones


@pytest.mark.parametrize("case", CASES[:3])
def test_fit_on_blurred_probability_map(case):
    prob = ndimage.gaussian_filter(mask(*case) / 255.0, sigma=1.5)
    check(fit_ellipse(prob), case)
    with pytest.raises(ValueError):  # a float 0/255 map would be contoured in the wrong place
        fit_ellipse(prob * 255.0)


def test_naive_pixel_centre_fit_is_biased_inwards():
    """Why marching squares: fitting the outermost pixel centres (cv2.findContours) shrinks both
    semi-axes by about half a pixel; the sub-pixel contour does not."""
    case = CASES[0]
    m = mask(*case)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    (_, _), (w, h), _ = cv2.fitEllipse(max(contours, key=len).astype(np.float32))
    naive_a, naive_b = max(w, h) / 2, min(w, h) / 2
    assert -0.65 < naive_a - case[2] < -0.35 and -0.65 < naive_b - case[3] < -0.35
    e = fit_ellipse(m)
    assert abs(e.a - case[2]) < 0.15 and abs(e.b - case[3]) < 0.15


def test_speck_and_hole_do_not_win():
    case = CASES[0]
    m = mask(*case)
    m[2:6, 2:6] = 255  # a speck in a corner
    m[118:121, 120:127] = 255
    m[58:62, 62:66] = 0  # a hole inside the head
    check(fit_ellipse(m), case)


def test_no_head():
    assert fit_ellipse(np.zeros((32, 32), np.uint8)) is None
    assert fit_ellipse(np.zeros((32, 32), np.float32)) is None
    assert fit_ellipse(np.full((32, 32), 0.3)) is None  # nothing above the level
    tiny = np.zeros((32, 32), np.uint8)
    tiny[10:12, 10:12] = 255  # area 4 px^2 < the minimum: a speck, not a head
    assert fit_ellipse(tiny) is None
    with pytest.raises(ValueError):
        fit_ellipse(np.zeros((4, 4, 3)))


def test_head_cut_by_the_border():
    # 15 px of the ellipse lie left of the frame: the fit uses the visible arc only.
    case = (30.0, 64.0, 45.0, 35.0, 1.0)
    e = fit_ellipse(mask(*case))
    check(e, case, tol_c=0.2, tol_ab=0.2)
    full = fit_ellipse(np.ones((20, 30), bool))  # everything is "head": no crash, a sane answer
    assert full is not None and 0 < full.b <= full.a < 30


def test_ellipse_perimeter_and_hc_mm():
    e = Ellipse(10.0, 20.0, 40.0, 30.0, 0.25)
    assert e.perimeter() == ellipse_perimeter(40.0, 30.0)
    assert e.hc_mm(0.5) == pytest.approx(ellipse_perimeter(20.0, 15.0))
    for bad in (None, 0.0, -1.0, float("nan"), float("inf")):
        assert e.hc_mm(bad) is None
    assert e.as_dict() == {"cx": 10.0, "cy": 20.0, "a": 40.0, "b": 30.0, "angle": 0.25}


def test_hc18_row_of_a_frame_stored_at_its_source_size():
    # (the letterboxed case is tests/test_preprocessing/test_geometry.py's round trip)
    e = Ellipse(110.0, 70.0, 40.0, 30.0, 0.5)
    row = hc18_row("001_HC.png", e, pixel_size_mm=0.25)
    assert tuple(row) == HC18_COLUMNS
    assert row == {"filename": "001_HC.png", "center_x_mm": 27.5, "center_y_mm": 17.5,
                   "semi_axes_a_mm": 10.0, "semi_axes_b_mm": 7.5, "angle_rad": 0.5}
    # HC from the row's semi-axes is the ellipse's HC in mm.
    assert ellipse_perimeter(row["semi_axes_a_mm"], row["semi_axes_b_mm"]) == pytest.approx(
        e.hc_mm(0.25))
    for missing in (hc18_row("x.png", None, 0.25), hc18_row("x.png", e, None)):
        assert missing["filename"] == "x.png"
        assert all(missing[k] is None for k in HC18_COLUMNS[1:])
