"""Held-out pretext metrics during pretraining: the val set and its cross-video pairs, the
sector mask, the hook in the loop (every train.eval_every steps and at the end), the report."""
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.apps import report
from pipeline.data import ShardSource
from pipeline.data.batch import label_batch
from pipeline.data.heldout import clip_slice, cross_video_triplets, eval_share, triplet_pairs
from pipeline.data.index import IndexView
from pipeline.data.tasks import sector_mask
from pipeline.train.heldout import batch_sums, pretext_validator
from pipeline.train.job import Context
from pipeline.train.logs import read_metrics
from pipeline.train.pretraining import build_model, load_pretrain_config, pretrain_forward, train
from preprocessing.format import SonostreamError

from factories import PRETRAIN_CONFIG, PRETRAIN_FAST as _FAST

# The val fixture's videos are short: stride 1 (the debug config's 3 leaves few val clips).
PRETRAIN_FAST = _FAST + ["loader.stride=1"]

VAL = {"val_io_acc", "val_pm_acc_cross_video", "val_mir_sector_mse"}


def test_triplets_pair_a_clip_with_another_video_of_its_patient_and_another_patient():
    # patient 0: videos 0, 1, 2; patient 1: videos 3, 4; patient 2: video 5 only
    video = np.repeat([0, 1, 2, 3, 4, 5], [3, 2, 4, 3, 1, 5])
    patient = np.array([0, 0, 0, 1, 1, 2])[video]
    t = cross_video_triplets(patient, video, 100, seed=0)
    a, s, n = t.T
    assert sorted(a.tolist()) == np.flatnonzero(video < 5).tolist()   # each eligible clip once
    assert (patient[s] == patient[a]).all() and (video[s] != video[a]).all()
    assert (patient[n] != patient[a]).all()
    assert set(video[a[:5]].tolist()) == {0, 1, 2, 3, 4}   # a clip of every video first
    assert np.array_equal(t, cross_video_triplets(patient, video, 100, seed=0))
    assert not np.array_equal(t, cross_video_triplets(patient, video, 100, seed=1))
    assert len(cross_video_triplets(patient, video, 4, seed=0)) == 4
    # no patient with two videos, or a single patient: no pairs that need identity
    assert cross_video_triplets(np.arange(3), np.arange(3), 10, 0).shape == (0, 3)
    assert cross_video_triplets(np.zeros(4, int), np.array([0, 0, 1, 1]), 10, 0).shape == (0, 3)


def test_pairs_are_balanced_slices_keep_whole_triplets_and_ranks_run_equal_forwards():
    a, b, label = triplet_pairs(3, 4, seed=0)
    assert label.tolist() == [1.0, 0.0] * 3
    assert a[:, 0].tolist() == [0, 0, 3, 3, 6, 6] and b[:, 0].tolist() == [1, 2, 4, 5, 7, 8]
    assert ((a[:, 1] >= 0) & (a[:, 1] < 4)).all()
    frames = torch.arange(9, dtype=torch.uint8).view(9, 1, 1, 1, 1).expand(9, 4, 1, 2, 2).clone()
    batch = label_batch(frames, np.repeat([0, 0, 1], 3), np.arange(9), np.arange(9),
                        np.tile(np.arange(4), (9, 1)), seed=0, epoch=0, step=0)
    batch = replace(batch, pm_a=torch.from_numpy(a), pm_b=torch.from_numpy(b),
                    pm_label=torch.from_numpy(label))
    part = clip_slice(batch, 3, 9)
    assert part.batch_size == 6 and torch.equal(part.frames, batch.frames[3:9])
    assert torch.equal(part.io_perm, batch.io_perm[3:9])
    assert part.pm_a[:, 0].tolist() == [0, 0, 3, 3] and part.pm_b[:, 0].tolist() == [1, 2, 4, 5]
    assert part.pm_label.tolist() == [1.0, 0.0, 1.0, 0.0]
    shares = [eval_share(5, r, 2) for r in range(2)]
    assert sorted(i for s in shares for i, w in s if w) == [0, 1, 2, 3, 4]
    assert len(shares[0]) == len(shares[1]) == 3 and shares[1][-1] == (0, 0.0)
    assert eval_share(1, 1, 2) == [(0, 0.0)]


def test_mir_error_counts_hidden_pixels_inside_the_sector_only():
    """The held-out MIR error is scored in the fan training scores (``tasks.sector_mask``)."""
    frames = torch.zeros(1, 2, 1, 8, 8, dtype=torch.uint8)
    frames[0, 0, 0, :6] = 100                           # the sector: the top six rows
    target = torch.zeros(2, 1, 8, 8)
    recon = torch.full((2, 1, 8, 8), 5.0)
    recon[:, :, :6] = 1.0                               # error 1 inside, 25 outside
    mask = torch.ones(1, 2, 1, 8, 8, dtype=torch.bool)
    mask[0, 1, 0, 0] = False                            # one visible row: not scored
    batch = type("B", (), {"frames": frames})()
    s, c = batch_sums({"recon": recon, "target": target, "mask": mask}, batch)["mir_sector_mse"]
    assert c == int((mask & sector_mask(frames)).sum()) == 5 * 8 + 4 * 8   # eroded by one row
    assert s / c == pytest.approx(1.0)


class Acc:
    def __init__(self, rank=0, world=1):
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")
        self.is_main_process = rank == 0


def _validator(cfg, data, rank=0, world=1, per_rank=8):
    view = IndexView(ShardSource(str(data)).index)
    ctx = Context(Acc(rank, world), per_rank, str(data), Path("unused"))
    return pretext_validator(cfg, ctx, view, pretrain_forward)


def test_the_same_set_and_values_for_any_split_over_ranks(val_shards):
    cfg = load_pretrain_config(PRETRAIN_CONFIG, PRETRAIN_FAST + ["train.eval_clips=24"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        one = _validator(cfg, val_shards)[0](model)
        again = _validator(cfg, val_shards)[0](model)          # built anew: the same set
        ranks = [_validator(cfg, val_shards, r, 2, per_rank=9)[0](model) for r in (0, 1)]   # 9, 9, 6 clips
    assert again == one and set(one) == {k[len("val_"):] for k in VAL}
    assert one["pm_acc_cross_video"][1] == 16 and one["io_acc"][1] == 24   # 8 triplets
    both = load_pretrain_config(PRETRAIN_CONFIG, PRETRAIN_FAST + ["loader.splits=[train, val]"])
    validate, why = _validator(both, val_shards)
    assert validate is None and "not held out" in why   # training on val: nothing held out
    for k, (s, c) in one.items():
        assert ranks[0][k][1] + ranks[1][k][1] == c, k
        assert ranks[0][k][0] + ranks[1][k][0] == pytest.approx(s, rel=1e-5), k


def test_validation_every_eval_every_steps_and_at_the_end_deterministic(val_shards, tmp_path):
    cfg = load_pretrain_config(PRETRAIN_CONFIG, PRETRAIN_FAST + [
        "train.eval_every=2", "train.eval_clips=24", "train.log_every=10", "train.figure_every=0",
        "train.checkpoint_every=10"], max_steps=3)
    summary = train(cfg, str(val_shards), tmp_path / "pretrain", quiet=True)
    rows = read_metrics(tmp_path / "pretrain" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]       # step 2 logged for its validation
    val = {r["step"]: {k: v for k, v in r.items() if k.startswith("val_")} for r in rows}
    assert val[1] == {} and set(val[2]) == set(val[3]) == VAL   # every 2 steps and at the end
    for v in val.values():
        assert all(0 <= v[k] <= 1 for k in ("val_io_acc", "val_pm_acc_cross_video") if k in v)
        assert all(math.isfinite(x) for x in v.values())
    assert summary["validation"] == {"step": 3, **val[3]}
    assert (tmp_path / "pretrain" / "curves.png").is_file()
    again = train(cfg, str(val_shards), tmp_path / "again", quiet=True)
    assert again["validation"] == summary["validation"]   # same seed, same values
    # the demo report shows the final values with the IO chance level
    lines = report._pretrain(tmp_path, {"pretrain": {"result": summary}})
    line = next(ln for ln in lines if ln.startswith("Held-out pretext metrics"))
    assert f"IO accuracy {val[3]['val_io_acc']:.3f} (chance 0.083)" in line
    assert f"cross-video pairs {val[3]['val_pm_acc_cross_video']:.3f}" in line and "24 clips" in line


def test_no_val_split_says_so_once_and_trains_without_validation(shards, tmp_path, caplog):
    with pytest.raises(SonostreamError, match="train.eval_every must be >= 0"):
        load_pretrain_config(None, ["train.eval_every=-1"])
    cfg = load_pretrain_config(PRETRAIN_CONFIG, PRETRAIN_FAST + ["train.eval_every=1"], max_steps=2)
    with caplog.at_level(logging.WARNING, logger="sonostream.train"):
        summary = train(cfg, str(shards), tmp_path / "run", quiet=True)
    said = [r.getMessage() for r in caplog.records if "validation is off" in r.getMessage()]
    assert len(said) == 1 and "has no val split" in said[0] and "--val-fraction" in said[0]
    assert summary["validation"] is None and summary["step"] == 2
    assert not any(k.startswith("val_") for r in read_metrics(tmp_path / "run" / "metrics.jsonl")
                   for k in r)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["eval_every"] == 1
