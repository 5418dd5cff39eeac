"""Pretraining through a step whose clips are all bad (every clip has a corrupt member): the
step counts, takes no update, is logged, and the run still ends at train.steps and resumes
exactly (CPU, in a subprocess like test_pretrain_run)."""
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.train.logs import read_metrics

from factories import PRETRAIN_CONFIG, PRETRAIN_FAST as FAST, ROOT, corrupt_members

pytestmark = pytest.mark.slow

WEIGHTS_SCRIPT = Path(__file__).with_name("weights_script.py")
STEPS = 8
# a whole step of bad clips is more than the default fault budget (loader.max_fault_share) of
# this small dataset allows; stride 1, as the plan with_empty_steps corrupts (the debug config's
# stride is 3)
NO_BUDGET = ("loader.max_fault_share=1", "loader.stride=1")
EMPTY = 4    # global step 4 = step 3 of epoch 0 (6 steps of 8 clips per epoch): all its clips bad


def pretrain(shards, out, *extra):
    cmd = [sys.executable, "-m", "pipeline.pretrain", "--config", str(PRETRAIN_CONFIG), "--data",
           str(shards), "--out", str(out), "--max-steps", str(STEPS), "--quiet",
           *[a for s in (*FAST, *NO_BUDGET) for a in ("--set", s)], *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def with_empty_steps(shards, out, steps, world_size: int = 1):
    """A copy of ``shards`` where one member of every clip that rank r reads at loader step s
    of epoch 0 is zeroed, for each (r, s) of ``steps`` (the loader the debug config + FAST
    builds, seed 0)."""
    shutil.copytree(shards, out)
    cfg = LoaderConfig(batch_size=8 // world_size, clip_len=4, shuffle_window=256,
                       image_size=32, loader="cpu")
    for rank, step in steps:
        plan = ClipLoader(out, cfg, seed=0, rank=rank, world_size=world_size).plan()
        corrupt_members(out, plan.clip_rows(step)[:, 0])
    return out


@pytest.fixture(scope="module")
def bad_shards(shards, tmp_path_factory):
    return with_empty_steps(shards, tmp_path_factory.mktemp("empty") / "shards", [(0, EMPTY - 1)])


def losses(run):
    return {r["step"]: r.get("loss") for r in read_metrics(run / "metrics.jsonl")}


def test_an_all_bad_step_counts_and_the_run_ends_at_train_steps(bad_shards, tmp_path):
    out = tmp_path / "run"
    proc = pretrain(bad_shards, out)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    skipped = rows[EMPTY - 1]
    assert "loss" not in skipped                        # nothing trained: no losses that step
    assert all(math.isfinite(r["loss"]) for r in rows if r is not skipped)
    assert [r["empty_skipped"] for r in rows] == [int(r["step"] >= EMPTY) for r in rows]
    assert all(r["nonfinite_skipped"] == 0 for r in rows)
    # no update at the empty step: the schedule (still warming up) did not move either
    assert skipped["lr_encoder"] == rows[EMPTY - 2]["lr_encoder"] != rows[EMPTY]["lr_encoder"]
    assert f"step {EMPTY}: no clips left (every clip had a corrupt member); skipped" in proc.stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{STEPS}"
    assert (out / "encoder.pt").exists()
    figs = sorted(p.name for p in (out / "figures").iterdir())   # figure_every 4: step 4 is empty
    assert figs == ["recon-step-000008.png"]

    resumed = tmp_path / "resumed"                      # stop at the empty step, then resume
    pretrain(bad_shards, resumed, "--stop-after", str(EMPTY))
    assert (resumed / "checkpoints" / "latest").read_text().strip() == f"step-{EMPTY}"
    pretrain(bad_shards, resumed, "--resume", "latest")
    assert losses(resumed) == losses(out)
    assert read_metrics(resumed / "metrics.jsonl")[-1]["empty_skipped"] == 1


def test_two_processes_skip_together_and_stay_in_step(shards, tmp_path):
    """2 ranks, 2 micro-steps per step. Step 1: rank 1's second (sync) micro-batch is empty;
    step 2: rank 1's first and rank 0's second are. A rank that sat out a forward alone would
    leave DDP's collectives unmatched (a hang), so both skip each such micro-step; step 1 still
    trains on its first micro-step (its gradients averaged over the ranks by hand, as DDP would
    have in the skipped backward), step 2 trains on nothing and takes no update."""
    from test_pretrain_distributed import DDP, run
    bad = with_empty_steps(shards, tmp_path / "shards", [(1, 1), (1, 2), (0, 3)], world_size=2)
    out = tmp_path / "run"
    proc = run([*DDP, str(WEIGHTS_SCRIPT), "--config", str(PRETRAIN_CONFIG), "--data", str(bad),
                "--out", str(out), "--max-steps", "3", "--quiet",
                *[a for s in [*FAST, *NO_BUDGET, "train.grad_accum=2"] for a in ("--set", s)]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "loss" not in rows[1] and math.isfinite(rows[0]["loss"]) and math.isfinite(rows[2]["loss"])
    assert [r["empty_skipped"] for r in rows] == [0, 1, 1]
    for step, rank in ((1, 1), (2, 1), (2, 0)):
        assert (f"step {step}: no clips left (every clip had a corrupt member) on rank(s) {rank}; "
                "skipped on every rank") in proc.stderr
    weights = dict(re.findall(r"weights rank (\d): ([-+0-9.e]+?)(?=weights|\s|$)", proc.stdout))
    assert len(weights) == 2 and weights["0"] == weights["1"], weights
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-3"
