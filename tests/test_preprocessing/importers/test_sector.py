"""Sector detection: generated fans with overlay, and the real Philips, GE and SonoSite screens."""
import cv2
import numpy as np
import pytest

from importer_helpers import dicom_file, fan_loop
from preprocessing.media import Frames, read_dataset, region
from preprocessing.sector import Sector, SectorProbe, split_colour


def _box(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _probe(frames, colours=None):
    probe = SectorProbe()
    for i, f in enumerate(frames):
        probe.add(f, None if colours is None else colours[i])
    return probe


def test_single_frame_crop_drops_text_and_keeps_the_fan():
    frames, fan = fan_loop(1, 120, 160)
    sector = _probe(frames).find()
    x0, y0, x1, y1 = _box(fan)
    assert sector.method == "image"
    assert sector.box == pytest.approx((x0, y0, x1, y1), abs=2)
    out = sector.apply(frames[0])
    assert out.shape == (sector.box[3] - sector.box[1], sector.box[2] - sector.box[0])
    # Text sits above and right of the fan: after cropping nothing outside the fan is lit.
    fan_crop = fan[sector.box[1]:sector.box[3], sector.box[0]:sector.box[2]]
    grown = cv2.dilate(fan_crop.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert out[~grown].max() == 0
    assert (out[fan_crop] > 0).mean() > 0.99  # the image itself is kept


def test_loop_uses_motion_and_ignores_static_overlay():
    frames, fan = fan_loop(6, 120, 160)
    frames[:, 100:118, 0:12] = 200  # a static logo block, large enough to survive the opening
    sector = _probe(frames).find()
    assert sector.method == "motion"
    assert sector.box == pytest.approx(_box(fan), abs=2)


def test_no_black_background_keeps_the_whole_frame():
    img = np.random.default_rng(0).integers(30, 200, (64, 80), dtype=np.uint8)
    sector = _probe([img]).find()
    assert sector.box == (0, 0, 80, 64)
    assert np.array_equal(sector.apply(img), img)
    assert _probe([np.zeros((64, 80), np.uint8)]).find().method == "none"


def test_region_bounds_the_search_and_is_the_fallback():
    frames, fan = fan_loop(1, 120, 160)
    sector = _probe(frames).find(region=(40, 0, 120, 120))
    assert 40 <= sector.box[0] and sector.box[2] <= 120
    blank = _probe([np.zeros((50, 60), np.uint8)]).find(region=(10, 5, 50, 45))
    assert (blank.method, blank.box) == ("region", (10, 5, 50, 45))


def test_colour_bar_on_the_edge_is_blanked_doppler_inside_becomes_luma():
    h, w = 120, 160
    rgb = np.zeros((h, w, 3), np.uint8)
    rect = np.zeros((h, w), bool)
    rect[20:100, 10:150] = True
    rgb[rect] = np.random.default_rng(1).integers(40, 120, (rect.sum(), 1), dtype=np.uint8)
    rgb[40:80, 12:20] = (255, 200, 0)  # colour bar drawn over the image's left edge
    rgb[50:60, 70:85] = (230, 60, 20)  # a Doppler blob in the middle
    gray, colour = split_colour(rgb)
    sector = _probe([gray], [colour]).find()
    assert sector.box == (10, 20, 150, 100)
    out = sector.apply(gray, colour)
    assert out[40 - 20:80 - 20, 12 - 10:20 - 10].max() == 0
    assert out[50 - 20:60 - 20, 70 - 10:85 - 10].min() == int(gray[55, 75]) > 0


def test_split_colour_is_luma_and_flags_colour_only():
    rgb = np.array([[[255, 0, 0], [90, 90, 90], [100, 110, 120]]], np.uint8)
    gray, colour = split_colour(rgb)
    assert abs(int(gray[0, 0]) - 76) <= 1 and gray[0, 1] == 90
    assert colour.tolist() == [[True, False, False]]


def test_whole_sector_is_identity():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(Sector.whole(img.shape).apply(img), img)


def _real(name):
    path = dicom_file(name)
    ds = read_dataset(path)
    frames = list(Frames(ds, path))
    box, _ = region(ds, int(ds.Rows), int(ds.Columns))
    sector = _probe([g for g, _ in frames], [c for _, c in frames]).find(box)
    return frames, sector


def test_philips_obstetric_crop_starts_at_the_fan():
    frames, sector = _real("OBXXXX1A.dcm")  # Philips CX50, palette colour, text all around
    gray, colour = frames[0]
    x0, y0, x1, y1 = sector.box
    # The header bar (name, date, MI/TIB) ends at row 60 and the fan's top arc starts ~row 65;
    # "Gen OB ..." settings sit left of x=120, "+ Cist Mag 1.06 cm" at rows 85-100 left of the fan.
    assert 60 < y0 <= 72 and 120 <= x0 < 135
    out = sector.apply(gray, colour)
    top = out[:12]  # rows just below the crop's top: only the fan's top arc, centred
    lit = np.nonzero(top.max(axis=0))[0]
    assert lit.size and lit.min() > (330 - x0) - 15 and lit.max() < (590 - x0) + 15
    text_rows = out[85 - y0:100 - y0, :300 - x0]  # where "+ Cist Mag" was
    assert text_rows.max() == 0
    assert gray[85:100, 128:300].max() > 200  # (the text really is there in the source)


def test_ge_doppler_crop_excludes_text_rows_and_colour_bars():
    frames, sector = _real("US1_UNCR.dcm")  # GE LOGIQ 700, RGB, power Doppler, no regions
    gray, colour = frames[0]
    x0, y0, x1, y1 = sector.box
    assert gray[:100].max() > 200 and gray[360:380].max() > 200  # text above and below
    assert 100 <= y0 <= 112 and 330 <= y1 <= 345  # the image rectangle only
    out = sector.apply(gray, colour)
    bar = colour[140:215, 18:45]  # the "PWR" colour bar over the image's left edge
    assert bar.mean() > 0.5
    assert out[140 - y0:215 - y0, 18 - x0:45 - x0][bar].max() == 0
    doppler = colour[150:250, 100:300] & (gray[150:250, 100:300] > 60)
    assert doppler.sum() > 500  # Doppler inside the image is kept, as gray
    assert (out[150 - y0:250 - y0, 100 - x0:300 - x0][doppler] > 0).mean() > 0.95


def test_sonosite_cine_crop_from_motion():
    frames, sector = _real("examples_ybr_color.dcm")  # SonoSite, 30 YBR JPEG frames, 320x240
    assert sector.method == "motion"
    x0, y0, x1, y1 = sector.box
    gray = frames[0][0]
    assert gray[:20, :40].max() > 150  # "PLA / Gen THI" text top left, outside the crop
    assert y0 >= 15 and x0 >= 35 and x1 <= 305 and y1 <= 215
