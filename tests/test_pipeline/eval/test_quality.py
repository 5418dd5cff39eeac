"""The quality floor of measurements: its calibration rule, a frame below it is uncertain (no HC,
never the best frame, counted), segmenter.pt carries it (an old one gets the default), and
finetune / calibrate-quality store it."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.eval.cine.measure import segment_cine
from pipeline.eval.cine.run import describe, segment_video
from pipeline.eval.cine.source import Cine
from pipeline.eval.cine.temporal import Track
from pipeline.eval.hc import Ellipse
from pipeline.eval.quality import (DEFAULT_MIN_QUALITY, calibrate_segmenter, choose_floor,
                                   floor_of, measure)
from pipeline.models.segmenter import (SegmenterConfig, build_segmenter, export_segmenter,
                                       load_segmenter, read_segmenter_blob, update_segmenter)
from preprocessing.format import SonostreamError

from factories import FINETUNE_CONFIG, FINETUNE_FAST

SIZE = 64


# --- the calibration rule, on synthetic (quality, truth) arrays ------------------------------------
def test_the_floor_keeps_99_percent_of_heads_and_rejects_the_most_false_regions_lowest():
    heads = np.concatenate([[0.05], np.linspace(0.3, 0.9, 100)])   # 101 heads: one may go
    false = np.array([0.01, 0.1, 0.2, 0.5, 0.7])
    q = np.concatenate([heads, false])
    truth = np.r_[np.ones(101, bool), np.zeros(5, bool)]
    c = choose_floor(q, truth)
    # t99 = 0.3 (the 2nd lowest head: 100 of 101 kept); below it the false regions 0.01, 0.1, 0.2;
    # the lowest floor rejecting all three: midway between 0.2 and the next quality above, 0.3.
    assert c["keep_threshold"] == pytest.approx(0.3)
    assert c["min_quality"] == pytest.approx(0.25) and c["source"] == "val"
    assert (c["heads_kept"], c["head_regions"], c["false_rejected"], c["false_regions"]) == (100, 101, 3, 5)
    assert c["heads_kept_pct"] == pytest.approx(100 * 100 / 101)
    assert c["false_rejected_pct"] == pytest.approx(60.0)
    # 200 heads: 2 of them (1 %) may go
    heads = np.r_[0.01, 0.02, np.linspace(0.4, 0.9, 198)]
    c = choose_floor(np.r_[heads, 0.1, 0.6], np.r_[np.ones(200, bool), False, False])
    assert c["keep_threshold"] == pytest.approx(0.4) and c["min_quality"] == pytest.approx(0.25)
    assert c["heads_kept"] == 198 and c["false_rejected"] == 1


def test_without_evidence_the_floor_is_the_default_never_above_the_heads():
    heads = np.linspace(0.5, 0.9, 50)
    c = choose_floor(heads, np.ones(50, bool))   # no false region at all
    assert c["min_quality"] == DEFAULT_MIN_QUALITY and c["source"] == "default"
    assert "no false region" in c["reason"] and c["heads_kept"] == 50
    low = np.linspace(0.1, 0.9, 50)              # the heads' 1st percentile is below the default
    c = choose_floor(np.r_[low, 0.95], np.r_[np.ones(50, bool), False])
    assert c["min_quality"] == pytest.approx(0.1) and c["source"] == "default"
    c = choose_floor([0.9, 0.8, 0.01], [True, True, False])   # too few heads to calibrate
    assert c["min_quality"] == DEFAULT_MIN_QUALITY and "fewer than" in c["reason"]


# --- a frame below the floor ------------------------------------------------------------------------
class Brightness(torch.nn.Module):
    """A stand-in segmenter: a pixel's head probability is sigmoid(20 (intensity - 0.5))."""

    def forward(self, x):
        return 20.0 * (x - 0.5), None


META = {"image_size": [SIZE, SIZE], "planes": []}


def frame(value: int, axes=(18, 12)) -> np.ndarray:
    img = np.zeros((SIZE, SIZE), np.uint8)
    if value:
        cv2.ellipse(img, (32, 32), axes, 20, 0, 360, value, -1)
    return img


def quality_of(img) -> float:
    prob = torch.sigmoid(Brightness()(torch.from_numpy(img / 255.0))[0]).numpy()
    return measure(prob)[2]


def test_a_frame_whose_only_region_is_below_the_floor_is_uncertain(tmp_path):
    dim = frame(131)               # a faint region: probability ~0.57, quality ~0.1
    q = quality_of(dim)
    assert 0.0 < q < 0.3
    cine = Cine("two", "two.dcm", "dicom", [frame(0), dim], [0, 1], 0.5, None)
    s = segment_video("model.pt", tmp_path / "o", cine=cine, model=(Brightness(), {**META, "min_quality": 0.3}),
                      video=False, quiet=True)
    assert s["uncertain_frames"] == 1 and s["head_frames"] == 0 and s["head_frames_raw"] == 0
    assert s["best_frame"] is None and s["best_hc_mm"] is None
    assert s["min_quality"] == 0.3
    assert "uncertain in 1" in describe(s) and "HC" not in describe(s).replace("no HC", "")
    with open(tmp_path / "o" / "per_frame.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["uncertain"] == "1" and rows[1]["head_present"] == "0" and rows[1]["hc_mm"] == ""
    assert float(rows[1]["quality"]) == pytest.approx(q, rel=1e-4) and rows[0]["uncertain"] == "0"
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["uncertain_frames"] == 1
    # The same loop with a floor below its quality: a head, measured (what the floor changes).
    s = segment_video("model.pt", tmp_path / "p", cine=cine, model=(Brightness(), META),
                      video=False, quiet=True, min_quality=0.01)
    assert s["uncertain_frames"] == 0 and s["best_frame"] == 1 and s["best_hc_mm"] > 0


def test_an_uncertain_frame_is_never_the_best_one_even_when_largest():
    bright, big_dim = frame(255), frame(150, axes=(26, 18))
    qb, qd = quality_of(bright), quality_of(big_dim)
    assert qb * 0.5 < qd < qb      # good enough for the loop's relative rule, and the largest head
    frames = [bright, bright, big_dim]
    r = segment_cine(Brightness(), META, frames, "cpu", min_quality=0.0)
    assert r.best == 2             # without a floor the large faint head wins
    r = segment_cine(Brightness(), META, frames, "cpu", min_quality=(qb + qd) / 2)
    assert r.best in (0, 1) and r.raw.uncertain.tolist() == [False, False, True]
    assert not r.smooth.present[2] and r.smooth.uncertain[2]


def test_track_drops_the_ellipse_of_uncertain_frames_but_keeps_their_quality():
    e = Ellipse(30.0, 30.0, 10.0, 8.0, 0.3)
    t = Track.from_ellipses([e, e, None], [0.8, 0.1, 0.0], min_quality=0.2)
    assert t.present.tolist() == [True, False, False] and t.uncertain.tolist() == [False, True, False]
    rows = t.rows(0.5)
    assert rows[1]["hc_mm"] is None and rows[1]["quality"] == 0.1 and rows[1]["uncertain"] == 1
    assert rows[2]["quality"] == 0.0 and rows[2]["uncertain"] == 0


# --- segmenter.pt -----------------------------------------------------------------------------------
def tiny_segmenter(path, **meta):
    model = build_segmenter(SegmenterConfig(arch="tiny", decoder_channels=(16, 16, 8, 8, 8)))
    export_segmenter(model.state_dict(), SegmenterConfig(arch="tiny", decoder_channels=(16, 16, 8, 8, 8)),
                     path, image_size=(32, 32), planes=[], **meta)
    return path


def test_segmenter_pt_round_trips_the_floor_and_an_old_one_gets_the_default(tmp_path):
    old = tiny_segmenter(tmp_path / "old.pt", mode="supervised")
    assert "min_quality" not in read_segmenter_blob(old)
    meta = load_segmenter(old)[1]
    assert floor_of(meta) == (DEFAULT_MIN_QUALITY, "default")
    cal = {"source": "val", "min_quality": 0.37, "heads_kept_pct": 99.4}
    update_segmenter(old, tmp_path / "new.pt", min_quality=0.37, quality_calibration=cal)
    meta = load_segmenter(tmp_path / "new.pt")[1]
    assert meta["min_quality"] == 0.37 and meta["quality_calibration"] == cal
    assert floor_of(meta) == (0.37, "val") and floor_of(meta, 0.05) == (0.05, "option")
    assert "min_quality" not in read_segmenter_blob(old)   # --out leaves the original alone
    with pytest.raises(SonostreamError, match="--min-quality"):
        floor_of(meta, 1.5)


def test_calibrate_quality_stores_the_figures(trained_segmenter, seg_shards, tmp_path, capsys):
    out = tmp_path / "cal.pt"
    assert main(["calibrate-quality", "--checkpoint", str(trained_segmenter), "--data",
                 str(seg_shards), "--split", "test", "--out", str(out), "--device", "cpu"]) == 0
    assert "quality floor" in capsys.readouterr().out
    meta = load_segmenter(out)[1]
    cal = meta["quality_calibration"]
    assert meta["min_quality"] == cal["min_quality"] and cal["split"] == "test"
    assert cal["frames"] == cal["head_frames"] + cal["no_head_frames"] > 0
    assert cal["head_regions"] <= cal["head_frames"]
    assert "quality_calibration" not in read_segmenter_blob(trained_segmenter)


def test_evaluate_gives_no_hc_below_the_floor_and_counts_it(trained_segmenter, seg_shards, tmp_path):
    from pipeline.eval.evaluate import evaluate
    low = evaluate(trained_segmenter, seg_shards, "test", tmp_path / "a", overlays=0, quiet=True,
                   min_quality=0.0)
    high = evaluate(trained_segmenter, seg_shards, "test", tmp_path / "b", overlays=0, quiet=True,
                    min_quality=1.0)   # every region is below a floor of 1
    assert low["uncertain_frames"] == 0 and low["hc_frames"] > 0
    assert high["uncertain_frames"] >= low["hc_frames"] and high["hc_frames"] == 0
    assert high["dice"] == low["dice"]   # the floor withholds measurements, not segmentations
    with open(tmp_path / "b" / "per_image.csv") as f:
        per = list(csv.DictReader(f))
    assert sum(r["uncertain"] == "true" for r in per) == high["uncertain_frames"]
    assert all(r["hc_pred_mm"] == "" for r in per)


def test_finetune_calibrates_its_segmenter_on_val(seg_shards, tmp_path, capsys):
    out = tmp_path / "run"
    sets = [a for s in FINETUNE_FAST for a in ("--set", s)]
    assert main(["finetune", "--config", str(FINETUNE_CONFIG), "--data", str(seg_shards), "--out",
                 str(out), "--max-steps", "2", "--quiet", *sets]) == 0
    assert "quality floor" in capsys.readouterr().out
    cal = read_segmenter_blob(out / "segmenter.pt")["quality_calibration"]
    # seg_shards has no val split: the default floor, saying why
    assert cal["split"] == "val" and cal["source"] == "default" and "split 'val'" in cal["reason"]
