"""The synthetic cohort: determinism, the frames.csv contract, label geometry and image physics.

Small cohorts (128 px, 16 frames) keep the file fast; seed 1 gives head, abdomen and femur
videos and a patient with several head sweeps in the first four patients.
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from preprocessing.format import LABEL_COLUMNS, MASK_COLUMN, REQUIRED_COLUMNS
from preprocessing.synth import make_cohort, save_preview
from preprocessing.synth.anatomy import make_patient, plan_video, rng_for
from preprocessing.synth.render import RANGE_DB, TOP_DB, Scene, Speckle, amplitude, grid, to_frame

SIZE, FRAMES, PATIENTS, SEED = 128, 16, 4, 1
KW = dict(patients=PATIENTS, videos_per_patient=3, frames_per_video=FRAMES, size=SIZE,
          progress=False)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("cohort"), seed=SEED, **KW)


@pytest.fixture(scope="module")
def table(cohort) -> pd.DataFrame:
    return pd.read_csv(cohort, dtype=str, keep_default_na=False)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read(cohort: Path, rel: str) -> np.ndarray:
    return cv2.imread(str(cohort.parent / rel), cv2.IMREAD_UNCHANGED)


def _videos(table: pd.DataFrame):
    for (_, _), video in table.groupby(["patient_id", "video_name"]):
        yield video.assign(i=video.frame_id.astype(int)).sort_values("i")


def _hc(video: pd.DataFrame) -> np.ndarray:
    return pd.to_numeric(video.hc_mm.replace("", np.nan)).to_numpy()


def test_same_seed_same_bytes_whatever_the_workers(cohort, tmp_path):
    again = make_cohort(tmp_path / "w2", seed=SEED, workers=2, **KW)
    assert _digest(cohort.parent) == _digest(again.parent)


def test_other_seed_other_cohort(cohort, tmp_path):
    other = make_cohort(tmp_path / "s2", seed=SEED + 1, **{**KW, "patients": 1})
    assert other.read_bytes() != cohort.read_bytes()
    name = "frames/P0001/sweep_01/0.png"
    assert (other.parent / name).read_bytes() != (cohort.parent / name).read_bytes()


def test_csv_columns_ids_and_cells(cohort, table):
    assert tuple(table.columns) == (*REQUIRED_COLUMNS, MASK_COLUMN, *LABEL_COLUMNS, "ga_weeks")
    assert len(table) == PATIENTS * 3 * FRAMES
    assert table.patient_id.str.fullmatch(r"P\d{4}").all()
    assert table.video_name.str.fullmatch(r"sweep_\d{2}").all()
    assert table.frame_id.str.fullmatch(r"0|[1-9]\d*").all()  # plain integers, no padding
    raw = pd.read_csv(cohort)  # a naive reader would turn ids into numbers: they stay strings
    assert raw.patient_id.str.startswith("P000").all()
    assert set(table.is_standard_plane) == {"true", "false"}
    assert set(table.plane) <= {"head", "abdomen", "femur"}
    ids = table.frame_id.astype(int).tolist()
    assert ids != sorted(ids) and table.patient_id.tolist() != sorted(table.patient_id)  # shuffled
    for video in _videos(table):
        assert video.i.tolist() == list(range(FRAMES))
        assert video.pixel_size_mm.nunique() == 1 and float(video.pixel_size_mm.iloc[0]) > 0
        row = video.iloc[3]
        assert row.frame_path == f"frames/{row.patient_id}/{row.video_name}/3.png"
        assert row.mask_path == f"masks/{row.patient_id}/{row.video_name}/3.png"
    assert (table.groupby("patient_id").ga_weeks.nunique() == 1).all()
    assert table.ga_weeks.astype(float).between(18, 38).all()
    assert (table[table.video_name == "sweep_01"].plane == "head").all()
    geometry = ["hc_mm", "ellipse_cx", "ellipse_cy", "ellipse_a", "ellipse_b", "ellipse_angle"]
    empty = table[geometry].eq("")
    assert (empty.all(axis=1) | ~empty.any(axis=1)).all()  # all geometry or none, never 0
    assert empty[table.plane != "head"].all().all()
    assert not list(cohort.parent.glob("*.tmp"))


def test_outside_the_fan_is_black(cohort, table):
    fan = grid(SIZE).fan_mask > 0
    for rel in table.frame_path.iloc[::7]:
        image = _read(cohort, rel)
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8
        assert not image[~fan].any()
        assert (image[fan] > 0).mean() > 0.3


def test_masks_match_the_ellipse(cohort, table):
    checked = 0
    for _, row in table.iterrows():
        mask = _read(cohort, row.mask_path)
        assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) <= {0, 255}
        if row.hc_mm == "":
            assert not mask.any()
            continue
        cx, cy, a, b, ang = (float(row["ellipse_" + k]) for k in ("cx", "cy", "a", "b", "angle"))
        assert a >= b > 0 and 0 <= ang < math.pi
        if b >= 8 and a + 1 < min(cx, cy, SIZE - 1 - cx, SIZE - 1 - cy):
            assert (mask > 0).sum() == pytest.approx(math.pi * a * b, rel=0.03)
            u = np.array([math.cos(ang), math.sin(ang)])  # the a-axis end is inside, beyond not
            for k, inside in ((0.9, True), (1.1, False)):
                x, y = np.round(np.array([cx, cy]) + k * a * u).astype(int)
                assert bool(mask[y, x]) is inside
            checked += 1
        pix = float(row.pixel_size_mm)
        ra, rb = a * pix, b * pix
        ramanujan = math.pi * (3 * (ra + rb) - math.sqrt((3 * ra + rb) * (ra + 3 * rb)))
        assert float(row.hc_mm) == pytest.approx(ramanujan, rel=1e-4)
    assert checked > 20


def test_standard_plane_is_the_peak_of_each_head_sweep(cohort, table):
    fan = grid(SIZE).fan_mask > 0
    for video in _videos(table):
        flags = video.is_standard_plane.eq("true").to_numpy()
        if video.plane.iloc[0] != "head":
            assert not flags.any()
            continue
        assert flags.sum() == 1
        s, hc = int(np.argmax(flags)), _hc(video)
        assert 0.2 * (FRAMES - 1) - 1 <= s <= 0.8 * (FRAMES - 1) + 1
        assert hc[s] == np.nanmax(hc)
        before, after = hc[: s + 1], hc[s:]
        assert np.all(np.diff(before[~np.isnan(before)]) >= 0)  # grows ...
        assert np.all(np.diff(after[~np.isnan(after)]) <= 0)  # ... then shrinks
        assert np.isnan(hc).any()  # the sweep leaves the head: empty cells (and empty masks)
        assert 120 < hc[s] < 360
        mask = _read(cohort, video.mask_path.iloc[s]) > 0
        assert mask.any() and not (mask & ~fan).any()  # the zoom fits the whole head in the fan


def test_a_patient_has_one_head_size(table):
    std = table[table.is_standard_plane == "true"]
    per_patient = std.groupby("patient_id").hc_mm.apply(lambda s: s.astype(float).to_numpy())
    repeated = [hcs for hcs in per_patient if len(hcs) > 1]
    assert repeated  # seed 1 has patients with several head sweeps
    for hcs in repeated:
        assert hcs.max() / hcs.min() - 1 < 0.01
    # ... and a head that fits the fan: the zoom changes with the video, the size in mm does not
    assert table[table.is_standard_plane == "true"].pixel_size_mm.nunique() > 1


def test_abdomen_and_femur_frames_are_not_heads(cohort, table):
    """A head is a bright ring (skull) around a dark brain; an abdomen is a filled disc with a
    faint wall, a femur a bright bar inside its thigh. Measure the ring against the interior."""
    fan, (yy, xx) = grid(SIZE).fan_mask > 0, np.mgrid[0:SIZE, 0:SIZE]
    contrast = {"head": [], "abdomen": [], "femur": []}
    for i in range(PATIENTS):
        patient = make_patient(SEED, i)
        for v in range(3):
            video = plan_video(SEED, patient, v, FRAMES, SIZE)
            f = video.frames[video.standard_index if video.plane == "head" else FRAMES // 2]
            rel = f"{patient.patient_id}/{video.name}/{f.index}.png"
            image = _read(cohort, "frames/" + rel).astype(float)
            assert _read(cohort, "masks/" + rel).any() == (video.plane == "head")
            c, s = math.cos(f.angle), math.sin(f.angle)
            b = f.b_px if video.plane != "femur" else 3.0  # the thigh's outline, roughly
            dx, dy = xx - f.cx, yy - f.cy
            r = np.hypot((dx * c + dy * s) / f.a_px, (dy * c - dx * s) / b)
            ring, inside = image[(r > 0.86) & (r <= 1) & fan], image[(r < 0.7) & fan]
            contrast[video.plane].append(ring.mean() / inside.mean())
    assert all(contrast.values())  # seed 1 has all three planes in its first patients
    assert min(contrast["head"]) > 1.6 > max(contrast["abdomen"] + contrast["femur"])


def test_consecutive_frames_look_alike(cohort, table):
    fan = grid(SIZE).fan_mask > 0
    near, far = [], []
    for video in _videos(table):
        x = np.array([_read(cohort, r)[fan] for r in video.frame_path], np.float64)
        x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
        corr = x @ x.T / x.shape[1]
        near.append(np.diag(corr, 1).mean())
        far.append(np.diag(corr, FRAMES // 2).mean())
        assert near[-1] > far[-1]
    assert np.mean(near) > 0.6 and np.mean(near) - np.mean(far) > 0.1


def test_speckle_is_rayleigh_and_evolves_smoothly():
    s = Speckle(np.random.default_rng(0), (200, 200), sigma_axial=1.0, sigma_lateral=2.0)
    frames = [s.next() for _ in range(12)]
    amp = frames[-1][20:-20, 20:-20]
    assert amp.mean() == pytest.approx(1.0, abs=0.06)
    assert 0.47 < amp.std() / amp.mean() < 0.58  # Rayleigh: sqrt(4 / pi - 1) = 0.523
    lag = [np.corrcoef(frames[0].ravel(), frames[k].ravel())[0, 1] for k in (1, 10)]
    assert lag[0] > 0.5 and lag[1] < 0.2


def test_rendered_tissue_has_rayleigh_speckle():
    """In the frame itself, divide out the speckle-free echo level and look at what is left in
    smooth tissue: the display's compression and scan conversion must keep Rayleigh contrast."""
    size, g = 256, grid(256)
    patient = make_patient(SEED, 0)
    video = plan_video(SEED, patient, 0, 8, size)
    f = video.frames[0]
    scene = Scene(g, video, rng_for(SEED, 99))
    speckle = Speckle(np.random.default_rng(1), g.x.shape, 1.0, 1.8).next()
    frame = to_frame(amplitude(video, f, scene, speckle), size)
    level = amplitude(video, f, scene, np.ones_like(speckle))
    level = cv2.remap(level, g.map_x, g.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    smooth = cv2.erode(level, np.ones((7, 7))) > 0.85 * cv2.dilate(level, np.ones((7, 7)))
    yy, xx = np.mgrid[0:size, 0:size]
    deep = np.hypot(xx - g.fan.apex_x, yy - g.fan.apex_y) > g.fan.r0 + 0.25 * g.fan.depth_px
    region = (g.fan_mask > 0) & smooth & deep & (level > 0.3) & (frame > 30) & (frame < 250)
    assert region.sum() > 2000
    ratio = 10.0 ** ((frame[region] / 255.0 * RANGE_DB + TOP_DB - RANGE_DB) / 20.0) / level[region]
    assert 0.4 < ratio.std() / ratio.mean() < 0.65


def test_arguments_are_checked(tmp_path):
    for bad, hint in (({"size": 32}, "size"), ({"frames_per_video": 1}, "frames_per_video"),
                      ({"patients": 0}, "patients"), ({"workers": 0}, "workers"),
                      ({"seed": -1}, "seed"), ({"videos_per_patient": 0}, "videos")):
        with pytest.raises(ValueError, match=hint):
            make_cohort(tmp_path, **{**KW, **bad})
    assert not (tmp_path / "frames.csv").exists()


def test_preview_is_written(tmp_path):
    out = save_preview(tmp_path / "docs" / "p.png", seed=0, size=96)
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > 7 * 96 and image.shape[2] == 3
    assert re.search(r"\.png$", out.name)
