"""Overlays: outline colours where the outlines are, PNGs that decode, no temp files left."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.eval.hc import Ellipse
from pipeline.eval.overlay import GREEN, RED, YELLOW, overlay, save_overlays, save_png

H = W = 64


def frame():
    return np.tile(np.arange(W, dtype=np.uint8) * 2, (H, 1))  # a gray ramp, never pure colour


def square(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def is_color(rgb, color):
    return np.all(rgb == np.array(color, np.uint8), axis=-1)


def test_outline_colours_are_where_the_outlines_are():
    gt, pred = square(10, 30, 10, 30), square(35, 55, 35, 55)  # disjoint 20x20 squares
    out = overlay(frame(), pred, gt)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    green, red = is_color(out, GREEN), is_color(out, RED)
    ring = lambda m: (m != 0) & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)
    assert np.array_equal(green, ring(gt)) and green.sum() == 76  # the 20x20 square's edge
    assert np.array_equal(red, ring(pred)) and red.sum() == 76
    untouched = ~(green | red)
    assert np.array_equal(out[untouched], np.repeat(frame()[untouched][:, None], 3, axis=1))


def test_nothing_drawn_for_missing_or_empty_masks():
    gray = np.repeat(frame()[..., None], 3, axis=2)
    assert np.array_equal(overlay(frame(), None), gray)
    assert np.array_equal(overlay(frame(), np.zeros((H, W), bool), np.zeros((H, W), bool)), gray)
    # Float frames in 0..1 are scaled to 0..255.
    assert np.array_equal(overlay(frame() / 255.0, None), gray)
    with pytest.raises(ValueError):
        overlay(frame(), np.zeros((H, W + 1), bool))


def test_ellipse_is_yellow_and_follows_the_angle_convention():
    # a = 20 along +x: yellow at (x=52, y=32) and (x=12, y=32); b = 10 along y.
    out = overlay(frame(), None, ellipse=Ellipse(32.0, 32.0, 20.0, 10.0, 0.0))
    yellow = is_color(out, YELLOW)
    assert yellow[32, 52] and yellow[32, 12] and yellow[22, 32] and yellow[42, 32]
    assert not yellow[32, 32]
    # angle pi/2: the a axis points along +y (down).
    yellow = is_color(overlay(frame(), None, ellipse=Ellipse(32.0, 32.0, 20.0, 10.0,
                                                                math.pi / 2)), YELLOW)
    assert yellow[12, 32] and yellow[52, 32] and not yellow[32, 52]
    # A wild fit draws nothing instead of crashing.
    wild = overlay(frame(), None, ellipse=Ellipse(1e9, 0.0, 1e9, 1.0, 0.0))
    assert not is_color(wild, YELLOW).any()


def test_save_png_round_trips(tmp_path):
    rgb = overlay(frame(), square(35, 55, 35, 55), square(10, 30, 10, 30))
    path = save_png(rgb, tmp_path / "one.png")
    back = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rgb)  # lossless, and channels not swapped
    assert [p.name for p in tmp_path.iterdir()] == ["one.png"]


def test_save_overlays_writes_a_decodable_png_grid(tmp_path):
    rgb = overlay(frame(), square(35, 55, 35, 55), square(10, 30, 10, 30))
    items = [(rgb, f"case {i}: dice 0.{i}") for i in range(5)]
    path = save_overlays(items, tmp_path / "grid" / "val.png", title="epoch 3", cols=4)
    assert path == tmp_path / "grid" / "val.png"
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] > img.shape[0]  # 4 columns x 2 rows: wider than tall
    assert [p.name for p in path.parent.iterdir()] == ["val.png"]  # no temp file left behind
    with pytest.raises(ValueError):
        save_overlays([], tmp_path / "none.png")
