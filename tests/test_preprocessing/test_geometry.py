"""The one stored <-> source geometry: exact round trips, and it matches the pixels build writes.

Round trip = what ``build`` puts in the index (``encode.stored_labels``: a source ellipse and
pixel size -> stored ones) followed by what ``evaluate`` writes to hc18.csv (``hc18_row`` with
the index row's letterbox: stored -> source millimetres). It must give back the source ellipse
in mm, on non-square frames at several scales (where rounding makes sx != sy).
"""
import csv
import math

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data.index import IndexView
from pipeline.eval.hc import Ellipse, fit_ellipse, hc18_row
from preprocessing.build import BuildOptions, build
from preprocessing.encode import stored_labels
from preprocessing.format import ELLIPSE_COLUMNS, Letterbox
from preprocessing.imaging import letterbox

SHAPES = [(540, 800), (800, 540), (300, 1000), (479, 641), (97, 211)]   # (h, w), all non-square
SIZES = [32, 64, 256, 1200]                                              # shrink and enlarge
PIXEL_MM = 0.154


def source_ellipse(h, w):
    return (0.41 * w, 0.57 * h, 0.3 * min(h, w), 0.2 * min(h, w), 0.7)


def round_trip(h, w, size, ell, mm=PIXEL_MM):
    """Source ellipse -> index labels (build) -> HC18 row (evaluate)."""
    labels = stored_labels(dict(zip(ELLIPSE_COLUMNS, ell), pixel_size_mm=mm),
                           Letterbox.fit(h, w, size))
    stored = Ellipse(*(labels[k] for k in ELLIPSE_COLUMNS))
    geometry = Letterbox.of_stored(h, w, size, size)   # what the index row records
    return hc18_row("x.png", stored, labels["pixel_size_mm"], geometry)


@pytest.mark.parametrize("h,w", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_build_then_hc18_round_trip_is_exact(h, w, size):
    cx, cy, a, b, angle = source_ellipse(h, w)
    row = round_trip(h, w, size, (cx, cy, a, b, angle))
    assert row["center_x_mm"] == pytest.approx(cx * PIXEL_MM, abs=1e-9)
    assert row["center_y_mm"] == pytest.approx(cy * PIXEL_MM, abs=1e-9)
    assert row["semi_axes_a_mm"] == pytest.approx(a * PIXEL_MM, abs=1e-9)
    assert row["semi_axes_b_mm"] == pytest.approx(b * PIXEL_MM, abs=1e-9)
    assert row["angle_rad"] == pytest.approx(angle, abs=1e-9)


def test_points_and_ellipses_invert_exactly():
    for h, w in SHAPES:
        for size in SIZES:
            g = Letterbox.fit(h, w, size)
            for x, y in ((0.0, 0.0), (w - 1.0, h - 1.0), (w / 3, h / 7)):
                assert g.to_source(*g.to_stored(x, y)) == pytest.approx((x, y), abs=1e-9)
            e = source_ellipse(h, w)
            assert g.ellipse_to_source(*g.ellipse_to_stored(*e)) == pytest.approx(e, abs=1e-9)


def test_an_axis_aligned_ellipse_scales_axis_by_axis():
    g = Letterbox.fit(540, 800, 256)          # sx = 0.32, sy = 173 / 540
    assert g.sx != g.sy
    _, _, a, b, angle = g.ellipse_to_stored(400, 270, 100, 50, 0.0)
    assert (a, b, angle) == pytest.approx((100 * g.sx, 50 * g.sy, 0.0))
    _, _, a, b, angle = g.ellipse_to_stored(400, 270, 100, 50, math.pi / 2)   # a along y
    assert (a, b, angle) == pytest.approx((100 * g.sy, 50 * g.sx, math.pi / 2))


def _soft_ellipse(h, w, e, ss=8):
    """A filled ellipse rendered with 8x8 supersampling: the area-exact 0..1 map."""
    big = np.zeros((h * ss, w * ss), np.uint8)
    cx, cy, a, b, angle = e
    centre = ((cx + 0.5) * ss - 0.5, (cy + 0.5) * ss - 0.5)   # pixel centres at integers
    cv2.ellipse(big, (centre, (2 * a * ss, 2 * b * ss), math.degrees(angle)), 255, -1)
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("h,w,size", [(540, 800, 256), (800, 540, 128), (300, 1000, 160),
                                      (120, 200, 256)])
def test_the_mapping_is_where_the_resized_pixels_are(h, w, size):
    """Draw a head in the source, letterbox it as build does, fit it in the stored frame: the
    stored fit mapped back lands on the source ellipse (within the fit's own ~0.1 px)."""
    e = source_ellipse(h, w)
    g = Letterbox.fit(h, w, size)
    stored = letterbox(_soft_ellipse(h, w, e), g).astype(np.float64) / 255.0
    fit = fit_ellipse(stored)
    back = g.ellipse_to_source(fit.cx, fit.cy, fit.a, fit.b, fit.angle)
    scale = 1 / g.scale   # one stored pixel in source pixels
    assert back[0] == pytest.approx(e[0], abs=0.15 * scale)
    assert back[1] == pytest.approx(e[1], abs=0.15 * scale)
    assert back[2] == pytest.approx(e[2], abs=0.15 * scale)
    assert back[3] == pytest.approx(e[3], abs=0.15 * scale)


def test_built_index_and_evaluate_give_back_the_source_mm(tmp_path):
    """End to end through the real build: non-square frames with ellipse labels -> index.parquet
    -> IndexView.letterbox -> hc18_row: the source ellipse in mm."""
    rows = []
    for i, (h, w) in enumerate(SHAPES[:3]):
        e = source_ellipse(h, w)
        img = (_soft_ellipse(h, w, e) // 2 + 40).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"{i}.png"), img)
        rows.append({"frame_path": f"{i}.png", "patient_id": f"p{i}", "video_name": "v",
                     "frame_id": "0", "pixel_size_mm": repr(PIXEL_MM),
                     **{k: repr(float(v)) for k, v in zip(ELLIPSE_COLUMNS, e)}})
    with open(tmp_path / "frames.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    build(tmp_path / "frames.csv", tmp_path / "ds",
          BuildOptions(image_size=96, val_fraction=0, test_fraction=0), progress=False)
    index = pq.read_table(tmp_path / "ds" / "index.parquet")
    view = IndexView(index)
    for r, rec in enumerate(index.to_pylist()):
        h, w = rec["src_height"], rec["src_width"]
        stored = Ellipse(*(rec[k] for k in ELLIPSE_COLUMNS))
        row = hc18_row("x", stored, rec["pixel_size_mm"], view.letterbox(r))
        cx, cy, a, b, angle = source_ellipse(h, w)
        got = [row[k] for k in ("center_x_mm", "center_y_mm", "semi_axes_a_mm", "semi_axes_b_mm")]
        assert got == pytest.approx([v * PIXEL_MM for v in (cx, cy, a, b)], abs=1e-9)
        assert row["angle_rad"] == pytest.approx(angle, abs=1e-9)
