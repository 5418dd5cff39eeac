"""`sonostream bench gpu --dry-run`: the prepared GPU check runs on CPU, so it cannot rot before a
GPU machine is lent; every step is in its JSON, the GPU-only ones marked skipped, a failing step
recorded and the rest run; `make gpu-check` / `gpu-wheels` and launch/gpu_check.sh exist."""
import json
import re
import shutil
import subprocess
import sys

import pytest

from pipeline.apps.bench import gpu
from pipeline.cli import main

from factories import ROOT

STEPS = ["environment", "pytest_gpu", "dataset", "loader_cpu", "loader_dali",
         "decode_jpeg_torchvision", "train_fp32", "train_bf16", "launch_nccl",
         "launch_deepspeed_zero2"]
GPU_ONLY = {"pytest_gpu", "loader_dali", "decode_jpeg_torchvision", "train_bf16", "launch_nccl",
            "launch_deepspeed_zero2"}

# What the trainer prints first (its banner), then a failure.
BANNER = ("import sys; print(\"pretraining tiny on {'loader': 'dali', 'videos': 8} | 1 process(es), "
          "DistributedType.MULTI_GPU\"); sys.exit('boom')")


def test_dry_run_writes_every_step(tmp_path, capsys):
    out, log = tmp_path / "gpu.json", tmp_path / "gpu.log"
    assert main(["bench", "gpu", "--dry-run", "--json", str(out), "--log", str(log),
                 "--workdir", str(tmp_path / "work")]) == 0
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["failed"] == []
    assert list(r["steps"]) == STEPS
    for name, step in r["steps"].items():
        assert isinstance(step["seconds"], float), name
        if name in GPU_ONLY:
            assert step == {"status": "skipped", "reason": "skipped: dry run", "seconds": 0.0}, name
        else:
            assert step["status"] == "ok", (name, step.get("error"))
    env = r["steps"]["environment"]["result"]
    assert {"torch", "cuda_available", "dali", "deepspeed"} <= set(env)
    assert isinstance(env["dali"]["importable"], bool)
    assert r["steps"]["dataset"]["result"]["frames"] == 64
    cpu = r["steps"]["loader_cpu"]["result"]
    assert cpu["loader"] == "cpu" and cpu["frames_per_s"] > 0 and cpu["p99_batch_s"] > 0
    train = r["steps"]["train_fp32"]["result"]
    assert train["device"] == "cpu" and train["synthetic_images_per_s"]["no"] > 0
    text = log.read_text()
    assert all(f"{name}: " in text for name in STEPS)
    assert "none failed" in capsys.readouterr().out


def test_a_failing_step_is_recorded_and_the_rest_run(tmp_path, monkeypatch):
    def broken(self):
        raise OSError("disk full")
    monkeypatch.setattr(gpu.Check, "environment", lambda self: {"torch": "x"})
    monkeypatch.setattr(gpu.Check, "dataset", broken)
    r = gpu.bench_gpu(tmp_path / "gpu.json", dry_run=True, workdir=tmp_path)
    assert list(r["steps"]) == STEPS
    assert r["steps"]["dataset"]["status"] == "error"
    assert r["steps"]["dataset"]["error"] == "OSError: disk full"
    assert "needs the dataset step" in r["steps"]["loader_cpu"]["error"]
    assert r["failed"] == ["dataset", "loader_cpu", "train_fp32"]
    assert json.loads((tmp_path / "gpu.json").read_text()) == r     # on disk as returned


def test_launch_subprocess_failure_keeps_its_figures(tmp_path):
    check = gpu.Check(None, dry_run=False, workdir=tmp_path)
    check.step("launch_nccl", lambda: check._launched(
        check.subprocess("x", [sys.executable, "-c", BANNER], timeout=60), "run"))
    step = check.result["steps"]["launch_nccl"]
    assert step["status"] == "error" and "exit code 1" in step["error"]
    assert step["result"]["returncode"] == 1 and "boom" in step["result"]["stderr_tail"]
    assert step["result"]["distributed_type"] == "MULTI_GPU" and step["result"]["loader"] == "dali"


def test_make_targets_and_the_gpu_machine_script():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^gpu-check:", make, re.M) and re.search(r"^gpu-wheels:", make, re.M)
    assert ("sonostream bench gpu --json runs/gpu_check.json --log runs/gpu_check.log "
            "$(if $(DRY_RUN),--dry-run)") in make
    assert "nvidia-dali-cuda130" in make and "split -b 60M" in make
    assert "/wheels/" in (ROOT / ".gitignore").read_text().splitlines()
    script = ROOT / "launch" / "gpu_check.sh"
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "bench gpu" in script.read_text() and "--no-index" in script.read_text()
