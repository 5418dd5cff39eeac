"""``synth --difficulty hard``: deterministic, the standard cohort's bytes unchanged, lower
contrast and heads partly outside the fan, with masks and labels that still agree."""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from preprocessing.format import SonostreamError
from preprocessing.synth import make_cohort
from preprocessing.synth.anatomy import make_patient
from preprocessing.synth.cohort import video_frames
from preprocessing.synth.render import grid, head_mask

# sha256 over (relative path, bytes) of every file of make_cohort(patients=3,
# videos_per_patient=2, frames_per_video=6, size=64, seed=5), made before `--difficulty` existed.
# (A new OpenCV whose PNG encoder writes other bytes would change it too: check that first.)
STANDARD_SHA256 = "b96ba12b3d680d8d282d058317a90c74d231ea39a62f4e5d16ec3dba6aa73d54"
SMALL = dict(patients=3, videos_per_patient=2, frames_per_video=6, size=64, seed=5,
             progress=False)


def _tree_sha(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_standard_is_byte_identical_to_before(tmp_path):
    make_cohort(tmp_path / "std", **SMALL)
    assert _tree_sha(tmp_path / "std") == STANDARD_SHA256
    make_cohort(tmp_path / "named", difficulty="standard", **SMALL)
    assert _tree_sha(tmp_path / "named") == STANDARD_SHA256


def test_hard_same_seed_same_bytes_and_same_labels(tmp_path):
    a = make_cohort(tmp_path / "a", difficulty="hard", **SMALL)
    b = make_cohort(tmp_path / "b", difficulty="hard", **SMALL)
    assert _tree_sha(a.parent) == _tree_sha(b.parent) != STANDARD_SHA256
    std = make_cohort(tmp_path / "s", **SMALL)
    header = a.read_text().splitlines()[0]
    assert header == std.read_text().splitlines()[0]            # the same columns
    assert len(a.read_text().splitlines()) == len(std.read_text().splitlines())
    with pytest.raises(SonostreamError, match="difficulty must be one of standard, hard"):
        make_cohort(tmp_path / "x", difficulty="extreme", **SMALL)


def _head_frames(difficulty: str, patients: int = 8, size: int = 96):
    for i in range(patients):
        video, frames = video_frames(2, make_patient(2, i), 0, 10, size, difficulty)
        for f, image, mask, labels in frames:
            yield f, image, mask, labels


def _contrast(image: np.ndarray, mask: np.ndarray, fan: np.ndarray) -> float | None:
    """Michelson contrast of the brain (the mask, eroded past the skull) against a ring just
    outside the skull, within the fan."""
    k = np.ones((3, 3), np.uint8)
    inside = cv2.erode(mask, k, iterations=4) > 0
    ring = (cv2.dilate(mask, k, iterations=8) > 0) & ~(cv2.dilate(mask, k, iterations=3) > 0)
    ring &= fan > 0
    if inside.sum() < 20 or ring.sum() < 20:
        return None
    a, b = image[inside].mean(), image[ring].mean()
    return abs(a - b) / (a + b + 1e-6)


def test_hard_frames_have_less_contrast_and_heads_leave_the_fan():
    fan = grid(96).fan_mask
    contrast, outside = {}, {}
    for difficulty in ("standard", "hard"):
        values, cut = [], 0
        for f, image, mask, labels in _head_frames(difficulty):
            # The mask is the labelled ellipse, exactly; a head in the labels <=> a mask.
            assert np.array_equal(mask, head_mask(96, labels))
            assert (labels["hc_mm"] is not None) == bool(mask.any()) == f.has_head
            if mask.any():
                c = _contrast(image, mask, fan)
                values += [] if c is None else [c]
                cut += int((mask & ~fan).any() and (mask & fan).any())
                assert fan[int(round(labels["ellipse_cy"])), int(round(labels["ellipse_cx"]))]
        contrast[difficulty], outside[difficulty] = np.median(values), cut
    assert contrast["hard"] < 0.7 * contrast["standard"], contrast
    assert outside["hard"] > outside["standard"] + 5, outside   # heads cut by the fan's edge


def test_synth_cli_difficulty_and_preview(tmp_path, capsys):
    from pipeline.cli import main
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--patients", "1", "--videos-per-patient", "1",
                 "--frames-per-video", "4", "--size", "64", "--workers", "1", "--difficulty",
                 "hard", "--preview", str(tmp_path / "p.png")]) == 0
    assert (out / "frames.csv").is_file() and cv2.imread(str(tmp_path / "p.png")) is not None
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(out), "--difficulty", "extreme"])
    assert "invalid choice: 'extreme'" in capsys.readouterr().err
