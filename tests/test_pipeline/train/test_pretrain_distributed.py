"""Pretraining with real process groups on CPU (gloo) through `accelerate launch`:
2 processes on one machine, two "nodes" on 127.0.0.1, and a DeepSpeed ZeRO-2 engine."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch

from pipeline.models import load_encoder
from pipeline.train.logs import read_metrics

from factories import PRETRAIN_CONFIG as DEBUG_CONFIG, PRETRAIN_FAST as FAST, ROOT

pytestmark = pytest.mark.slow
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no",
          "--dynamo_backend", "no"]


class MakesMarker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):          # unpickling this would create the file: code from a pickle
        return (open, (self.path, "w"))


def trainer_args(shards, out, *extra, steps=6):
    return ["-m", "pipeline.pretrain", "--config", str(DEBUG_CONFIG), "--data", str(shards),
            "--out", str(out), "--max-steps", str(steps), "--quiet",
            *[a for s in FAST for a in ("--set", s)], *extra]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def run(cmd, timeout=420):
    """``cmd`` in its own process group; on a hang the whole group (launcher and every rank,
    which catch SIGTERM to checkpoint) is killed, so no worker outlives the test."""
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the distributed run hung: " + " ".join(map(str, cmd)))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_run(out, steps=6, ranks=2):
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))   # one writer, no duplicates
    assert all(r["loss"] == r["loss"] for r in rows)
    ckpt = out / "checkpoints" / f"step-{steps}"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == [
        f"random_states_{r}.pkl" for r in range(ranks)]
    assert load_encoder(out / "encoder.pt").arch == "tiny"
    return rows


DDP = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]


@pytest.fixture(scope="module")
def ddp_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = run([*DDP, *trainer_args(shards, out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_two_processes_on_gloo(ddp_run):
    out, proc = ddp_run
    assert "2 process(es), 4 clips x 4 frames per rank" in proc.stdout
    assert "MULTI_CPU" in proc.stdout
    check_run(out)
    # The main rank alone logs the metrics lines and writes provenance.json.
    assert proc.stderr.count("INFO sonostream.train: step ") == 6
    p = json.loads((out / "provenance.json").read_text())
    assert p["world_size"] == 2 and p["distributed"] == "MULTI_CPU" and p["devices"] == ["cpu"]


def test_two_processes_resume_exactly(shards, ddp_run, tmp_path):
    out = tmp_path / "run"
    first = run([*DDP, *trainer_args(shards, out, "--stop-after", "3")])
    assert first.returncode == 0, first.stderr[-3000:]
    second = run([*DDP, *trainer_args(shards, out, "--resume", "latest")])
    assert second.returncode == 0, second.stderr[-3000:]
    want = {r["step"]: r["loss"] for r in read_metrics(ddp_run[0] / "metrics.jsonl")}
    assert {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")} == want


def test_two_processes_validate_on_val_patients(val_shards, tmp_path):
    # Each rank scores its share of the held-out set (whole triplets, as many forwards as the
    # other rank) and the sums are reduced: no deadlock, one row per step, val_* at 3 and 6.
    out = tmp_path / "run"
    proc = run([*DDP, *trainer_args(val_shards, out, "--set", "train.eval_every=3",
                                    "--set", "train.eval_clips=24",
                                    "--set", "loader.stride=1")])   # the val fixture's short videos
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = check_run(out)
    assert [r["step"] for r in rows if "val_io_acc" in r] == [3, 6]
    for r in rows[2::3]:
        assert 0 <= r["val_io_acc"] <= 1 and 0 <= r["val_pm_acc_cross_video"] <= 1
        assert r["val_mir_sector_mse"] > 0
    assert "held-out pretext metrics every 3 steps and at the end: 24 val clips" in proc.stderr


def test_batch_size_that_does_not_divide_fails_before_training(shards, tmp_path):
    cmd = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "0", *trainer_args(shards, tmp_path / "run", "--set", "train.batch_size=7")]
    proc = run(cmd)
    assert proc.returncode != 0
    assert "train.batch_size 7 does not divide by the world size 2" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_two_nodes_on_localhost(shards, tmp_path):
    port = str(free_port())
    nodes = [subprocess.Popen(
        [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "2", "--machine_rank",
         str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
         *trainer_args(shards, tmp_path / "run")],
        env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outs = [n.communicate(timeout=420) for n in nodes]
    except subprocess.TimeoutExpired:
        for n in nodes:
            n.kill()
        pytest.fail("the two-node run hung")
    for n, (_, err) in zip(nodes, outs):
        assert n.returncode == 0, err[-3000:]
    assert "2 process(es)" in outs[0][0]
    check_run(tmp_path / "run")


def test_deepspeed_zero2_trains_checkpoints_resumes_and_exports(shards, tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    ds = [*LAUNCH, "--config_file", str(ROOT / "launch" / "accelerate" / "deepspeed_zero2.yaml"),
          "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0"]
    first = run([*ds, *trainer_args(shards, out, "--stop-after", "3")])
    assert first.returncode == 0, first.stderr[-3000:]
    assert "DEEPSPEED" in first.stdout
    assert (out / "checkpoints" / "step-3" / "pytorch_model").is_dir()   # ZeRO's own shards
    # DeepSpeed's own loader unpickles with weights_only=False; ours makes it weights_only=True
    bad, marker = tmp_path / "bad", tmp_path / "pwned"
    shutil.copytree(out, bad)
    optim = bad / "checkpoints" / "step-3" / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": MakesMarker(marker)}, optim)
    refused = run([*ds, *trainer_args(shards, bad, "--resume", "latest")])
    assert refused.returncode != 0 and not marker.exists()
    assert "is not a DeepSpeed checkpoint this pipeline wrote" in refused.stderr
    second = run([*ds, *trainer_args(shards, out, "--resume", "latest")])
    assert second.returncode == 0, second.stderr[-3000:]
    rows = check_run(out)
    assert rows[-1]["lr_encoder"] < rows[2]["lr_encoder"]   # the schedule went on after resume
    blob = torch.load(out / "encoder.pt", weights_only=True)
    assert blob["complete"] is True and blob["step"] == 6
