"""Pretraining runs end to end in a subprocess (one process, CPU): losses, exact resume, export."""
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from torchvision.models.resnet import BasicBlock, ResNet

from pipeline.models import load_encoder
from pipeline.pretrain import main
from pipeline.train.logs import read_metrics

from factories import PRETRAIN_CONFIG as DEBUG_CONFIG, PRETRAIN_FAST as FAST, ROOT

STEPS = 30


def pretrain(shards, out, *extra, check=True, **kw):
    cmd = [sys.executable, "-m", "pipeline.pretrain", "--config", str(DEBUG_CONFIG), "--data",
           str(shards), "--out", str(out), "--max-steps", str(STEPS), "--quiet",
           *[a for s in FAST for a in ("--set", s)], *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kw)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    pretrain(shards, out)
    return out


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl")}


def test_losses_are_finite_and_decrease(full_run):
    rows = read_metrics(full_run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "loss_mir", "loss_pm", "loss_io", "acc_pm", "acc_io", "lr_encoder"):
        assert all(math.isfinite(r[key]) for r in rows), key
    first = lambda k: sum(r[k] for r in rows[:5]) / 5
    last = lambda k: sum(r[k] for r in rows[-5:]) / 5
    assert last("loss_mir") < 0.5 * first("loss_mir")
    assert last("loss") < first("loss")
    assert rows[-1]["nonfinite_skipped"] == 0


def test_run_folder_has_what_the_readme_promises(full_run):
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "encoder.pt", "checkpoints/latest"):
        assert (full_run / name).exists(), name
    assert (full_run / "checkpoints" / "latest").read_text().strip() == f"step-{STEPS}"
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == [
        "latest", f"step-{STEPS - 2}", f"step-{STEPS}"]          # keep_checkpoints: 2
    figs = sorted(p.name for p in (full_run / "figures").iterdir())
    assert figs[0] == "recon-step-000004.png" and len(figs) == STEPS // 4


def test_run_files_are_readable_by_the_group_like_any_file(full_run):
    umask = os.umask(0)
    os.umask(umask)
    modes = {str(p.relative_to(full_run)): stat.S_IMODE(p.stat().st_mode)
             for p in full_run.rglob("*") if p.is_file()}
    assert "checkpoints/step-%d/model.safetensors" % STEPS in modes
    assert {k: oct(m) for k, m in modes.items() if m != 0o666 & ~umask} == {}


def test_stop_then_resume_gives_the_same_losses(shards, full_run, tmp_path):
    out = tmp_path / "run"
    pretrain(shards, out, "--stop-after", "13")   # not a checkpoint or log multiple of 4
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-13"
    assert max(losses(out)) == 13
    pretrain(shards, out, "--resume", "latest")
    assert losses(out) == losses(full_run)       # exactly, every step after the resume too


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_and_resume_continues_exactly(shards, full_run, tmp_path,
                                                                sig, status):
    """SIGTERM (Slurm) and Ctrl-C both save a checkpoint at the step they stop at; the advice
    printed is a command that continues the run exactly."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline.pretrain", "--config", str(DEBUG_CONFIG), "--data",
            str(shards), "--out", str(out), "--max-steps", str(STEPS), "--quiet",
            *[a for s in FAST for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if (out / "metrics.jsonl").exists() and len(read_metrics(out / "metrics.jsonl")) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(sig)
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == status, err[-2000:]
    stopped = int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert 3 <= stopped < STEPS and max(losses(out)) == stopped   # saved where it stopped
    assert "rerun the same command with --resume latest" in stdout + err
    if sig == signal.SIGTERM:   # the resume after a stop is the same path for both signals
        pretrain(shards, out, "--resume", "latest")
        assert losses(out) == losses(full_run)


class MakesMarker:
    """Unpickling this creates ``path``: the stand-in for a pickle that runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
                                  "random_states_0.pkl", "optimizer.bin"])
def test_resume_never_unpickles_code_from_a_checkpoint(shards, full_run, tmp_path, name):
    out, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(full_run, out)
    ckpt = out / "checkpoints" / f"step-{STEPS}"
    torch.save({"state": MakesMarker(marker)}, ckpt / name)
    proc = pretrain(shards, out, "--resume", "latest", check=False)
    assert not marker.exists()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{ckpt / name} " in proc.stderr and "not a sonostream checkpoint file" in proc.stderr
    assert "weights_only=False" not in proc.stderr


def test_encoder_export_loads_into_a_fresh_resnet(full_run):
    blob = torch.load(full_run / "encoder.pt", weights_only=True)
    assert blob["arch"] == "tiny" and blob["step"] == STEPS and blob["complete"] is True
    ckpt = load_file(full_run / "checkpoints" / f"step-{STEPS}" / "model.safetensors")
    enc = load_encoder(full_run / "encoder.pt")
    for k, v in enc.state_dict().items():
        assert torch.equal(v, ckpt[f"encoder.{k}"]), k          # the trained values, not an init
    plain = ResNet(BasicBlock, [1, 1, 1, 1])                      # torchvision's own class
    plain.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    missing, unexpected = plain.load_state_dict(blob["state_dict"], strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    with pytest.raises(ValueError, match="holds a tiny encoder, not resnet18"):
        load_encoder(full_run / "encoder.pt", arch="resnet18")


def test_bad_input_errors_before_training(shards, full_run, tmp_path, capsys):
    base = ["--config", str(DEBUG_CONFIG)]
    (tmp_path / "empty").mkdir()
    assert main([*base, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no index.parquet, so it is not a finished dataset" in capsys.readouterr().err
    assert main([*base, "--data", str(shards), "--out", str(tmp_path / "o2"), "--resume", "latest"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert main([*base, "--data", str(shards), "--out", str(full_run)]) == 2
    assert "already holds checkpoints; pass --resume latest" in capsys.readouterr().err
    assert main([*base, "--data", str(shards), "--out", str(tmp_path / "o3"), "--set", "train.bach_size=4"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o3").exists()


def test_a_loss_that_stays_non_finite_stops_the_run_with_advice(shards, tmp_path):
    proc = pretrain(shards, tmp_path / "run", "--set", "optim.lr_encoder=1e30", "--set",
                    "optim.lr_heads=1e30", "--set", "optim.warmup_steps=0", "--set",
                    "train.clip_grad=0", "--set", "train.max_nonfinite=2", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "not finite for 2 steps in a row" in proc.stderr and "lower optim.lr_encoder" in proc.stderr
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["step"] == 1 and math.isfinite(rows[0]["loss"])


def test_gradient_accumulation_and_tensorboard(shards, tmp_path):
    out = tmp_path / "run"
    # stride 1: the fixture's 12-frame videos give 48 clips, one epoch for the 3 x 2 x 8 below
    pretrain(shards, out, "--max-steps", "3", "--set", "train.grad_accum=2", "--set",
             "train.trackers=[tensorboard]", "--set", "loader.stride=1")
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]       # optimizer steps, not micro-steps
    state = torch.load(out / "checkpoints" / "step-3" / "custom_checkpoint_1.pkl", weights_only=False)
    assert state["loader"]["position"] == 3 * 2 * 8      # 2 micro-batches of 8 clips per step
    assert list((out / "sonostream").rglob("events.out.tfevents.*"))   # train.tracker_project
