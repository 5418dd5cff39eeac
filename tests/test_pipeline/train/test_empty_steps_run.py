"""Pretraining through a step whose clips are all bad (every clip has a corrupt member): the
step counts, takes no update, is logged, and the run still ends at train.steps and resumes
exactly (CPU, in a subprocess like test_pretrain_run)."""
import math
import os
import shutil
import subprocess
import sys

import pytest

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.train.logs import read_metrics

from factories import PRETRAIN_CONFIG, PRETRAIN_FAST as FAST, ROOT, corrupt_members

pytestmark = pytest.mark.slow

STEPS = 8
EMPTY = 4    # global step 4 = step 3 of epoch 0 (6 steps of 8 clips per epoch): all its clips bad


def pretrain(shards, out, *extra):
    cmd = [sys.executable, "-m", "pipeline.pretrain", "--config", str(PRETRAIN_CONFIG), "--data",
           str(shards), "--out", str(out), "--max-steps", str(STEPS), "--quiet",
           *[a for s in FAST for a in ("--set", s)], *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def with_empty_step(shards, out, step: int, rank: int = 0, world_size: int = 1):
    """A copy of ``shards`` where one member of every clip that ``rank`` reads at ``step`` of
    epoch 0 is zeroed (the loader the debug config + FAST builds, seed 0)."""
    shutil.copytree(shards, out)
    cfg = LoaderConfig(batch_size=8 // world_size, clip_len=4, shuffle_window=256,
                       image_size=32, loader="cpu")
    plan = ClipLoader(out, cfg, seed=0, rank=rank, world_size=world_size).plan()
    corrupt_members(out, plan.clip_rows(step)[:, 0])
    return out


@pytest.fixture(scope="module")
def bad_shards(shards, tmp_path_factory):
    return with_empty_step(shards, tmp_path_factory.mktemp("empty") / "shards", EMPTY - 1)


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


def test_two_processes_skip_a_step_one_rank_has_no_clips_for(shards, tmp_path):
    """Rank 1's batch of step 2 is empty, rank 0's is not: both ranks skip that micro-step (a
    rank that sat out the forward alone would leave DDP's collectives unmatched)."""
    from test_pretrain_distributed import DDP, run, trainer_args
    bad = with_empty_step(shards, tmp_path / "shards", 1, rank=1, world_size=2)
    out = tmp_path / "run"
    proc = run([*DDP, *trainer_args(bad, out, steps=3)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "loss" not in rows[1] and math.isfinite(rows[0]["loss"]) and math.isfinite(rows[2]["loss"])
    assert [r["empty_skipped"] for r in rows] == [0, 1, 1]
    assert ("step 2: no clips left (every clip had a corrupt member) on rank(s) 1; skipped on "
            "every rank") in proc.stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-3"
