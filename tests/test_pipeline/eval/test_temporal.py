"""Temporal smoothing and best-frame choice on synthetic sweeps whose ellipses are known.

The "segmentations" are the sweep's true head masks with the jitter a real network adds: every
frame's ellipse is perturbed (axes, centre, angle), drawn as a soft probability map, and sent
through the same measurement (largest region, sub-pixel ellipse fit, quality) as segment-video.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.eval.cine.measure import measure
from pipeline.eval.cine.temporal import Track, best_frame, clean_presence, jitter, smooth_track
from preprocessing.format import ellipse_perimeter
from preprocessing.synth.anatomy import make_patient, plan_video

SIZE = 128


def sweep(patient: int, frames: int = 40, seed: int = 0):
    video = plan_video(seed, make_patient(seed, patient), 0, frames, SIZE)
    assert video.plane == "head" and video.standard_index >= 0
    return video


def noisy_prob(f, rng, rel: float = 0.03, outlier: bool = False) -> np.ndarray:
    """A soft map of frame f's head, with per-frame jitter of the axes, centre and angle."""
    prob = np.zeros((SIZE, SIZE), np.float32)
    if not f.has_head:
        return prob
    a, b = (v * (1 + rng.normal(0, rel)) * (1.12 if outlier else 1.0) for v in (f.a_px, f.b_px))
    cx, cy = f.cx + rng.normal(0, 0.6), f.cy + rng.normal(0, 0.6)
    ang = f.angle + rng.normal(0, 0.05)
    s = 16
    cv2.ellipse(prob, (round(cx * s), round(cy * s)), (round(a * s), round(b * s)),
                math.degrees(ang), 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    return cv2.GaussianBlur(prob, (0, 0), 0.8) * 0.96 + 0.02


def measured(video, rng, **kw) -> Track:
    fits = [measure(noisy_prob(f, rng, outlier=(i % 11 == 5), **kw)) for i, f in enumerate(video.frames)]
    return Track.from_ellipses([e for _, e, _ in fits], [q for _, _, q in fits])


def true_hc(video) -> np.ndarray:
    ps = video.pixel_size_mm
    return np.array([ellipse_perimeter(f.a_px * ps, f.b_px * ps) if f.has_head else np.nan
                     for f in video.frames])


@pytest.mark.parametrize("patient", [0, 1, 2, 3])
def test_smoothing_reduces_hc_jitter_and_error(patient):
    video = sweep(patient)
    raw = measured(video, np.random.default_rng(patient))
    smooth = smooth_track(raw)
    ps = video.pixel_size_mm
    raw_hc, smooth_hc, truth = raw.hc_mm(ps), smooth.hc_mm(ps), true_hc(video)
    # No head is invented and none is lost where the measurement saw one for 2+ frames.
    assert np.array_equal(smooth.present, clean_presence(raw.present))
    # Jitter of the measurement error (the sweep's own rise and fall taken out), and of HC itself.
    assert jitter(smooth_hc - truth) < 0.5 * jitter(raw_hc - truth)
    assert jitter(smooth_hc) < 0.5 * jitter(raw_hc)
    both = smooth.present & np.isfinite(truth)
    assert np.mean(np.abs(smooth_hc - truth)[both]) < np.mean(np.abs(raw_hc - truth)[both])


@pytest.mark.parametrize("patient", [0, 1, 2, 3, 4, 5])
def test_best_frame_is_within_two_frames_of_the_standard_plane(patient):
    video = sweep(patient)
    smooth = smooth_track(measured(video, np.random.default_rng(100 + patient)))
    best = best_frame(smooth)
    assert best is not None and abs(best - video.standard_index) <= 2, (best, video.standard_index)


def test_no_head_gives_no_hc_and_no_best_frame():
    track = Track.from_ellipses([None] * 6, [0.9] * 6)
    smooth = smooth_track(track)
    assert not smooth.present.any() and np.isnan(smooth.hc_mm(0.5)).all()
    assert best_frame(smooth) is None
    rows = smooth.rows(0.5)
    assert all(r["head_present"] == 0 and r["hc_mm"] is None and r["quality"] == 0.0 for r in rows)


def test_a_one_frame_blip_is_dropped_and_a_gap_is_not_filled():
    from pipeline.eval.hc import Ellipse
    e = Ellipse(30, 30, 12, 9, 0.3)
    blip = [None, None, e, None, None, None]
    assert not smooth_track(Track.from_ellipses(blip, [1] * 6)).present.any()
    gap = [e, e, e, None, e, e, e]
    s = smooth_track(Track.from_ellipses(gap, [1] * 7))
    assert s.present.tolist() == [True, True, True, False, True, True, True]
    assert np.isnan(s.hc_mm(0.5)[3]) and np.allclose(s.a[s.present], 12)


def test_angle_is_smoothed_across_the_zero_pi_wrap():
    from pipeline.eval.hc import Ellipse
    angles = [0.02, math.pi - 0.02, 0.03, math.pi - 0.01, 0.01]
    s = smooth_track(Track.from_ellipses([Ellipse(0, 0, 10, 5, t) for t in angles], [1] * 5))
    dist = np.minimum(s.angle, math.pi - s.angle)   # distance to 0 on the half-turn circle
    assert (dist < 0.03).all()


def _peak_track(area: np.ndarray) -> Track:
    n = len(area)
    return Track(cx=np.full(n, 50.0), cy=np.full(n, 50.0), a=30 * area, b=np.full(n, 10.0),
                 angle=np.zeros(n), quality=np.ones(n))


def test_best_frame_is_the_vertex_of_the_peak_not_its_noisiest_frame():
    """A sweep through the widest section: its area is a flat-topped parabola (vertex at frame
    20) with 1 % noise. The largest single area wanders (up to 3 frames here); the vertex of the
    parabola through the peak does not."""
    t = np.arange(41)
    picked, naive = [], []
    for seed in range(8):
        area = (1 - ((t - 20) / 30) ** 2) * (1 + np.random.default_rng(seed).normal(0, 0.01, 41))
        picked.append(best_frame(_peak_track(area)))
        naive.append(int(np.argmax(area)))
    assert max(abs(p - 20) for p in picked) <= 1, picked
    assert np.mean([abs(n - 20) for n in naive]) >= 1, naive   # the case is a real one


def _region(shape: str) -> np.ndarray:
    prob = np.full((96, 96), 0.01, np.float32)
    if shape == "ellipse":
        cv2.ellipse(prob, (48, 48), (30, 20), 25, 0, 360, 0.99, -1)
    else:   # an L: confident, as big, but nothing like a skull
        prob[18:78, 18:40] = 0.99
        prob[56:78, 18:78] = 0.99
    return prob


def test_quality_scores_how_elliptical_the_region_is():
    """Two regions of equal confidence: the head-shaped one is good, the L-shaped one is not."""
    _, e_ell, q_ell = measure(_region("ellipse"))
    _, e_l, q_l = measure(_region("L"))
    assert e_ell is not None and e_l is not None
    assert q_ell > 0.9
    assert q_l < 0.75 * q_ell, (q_l, q_ell)
