"""`sonostream bench gpu`: one prepared check for a borrowed GPU machine, one JSON of figures.

Made for a short loan of one H100/H200 (CUDA + PyTorch, no network, a few minutes): one command,
every step guarded and timed, the JSON rewritten after each step so a run cut short keeps what
it measured. A failing step is recorded with its error and the check goes on. Steps, in order:

* ``environment``: torch / CUDA / device, DALI and DeepSpeed importable (and versions);
* ``pytest_gpu``: ``python -m pytest -m gpu -q`` as a subprocess (its summary line);
* ``dataset``: a small synthetic build of 256x256 gray JPEG frames (the benches' cohort);
* ``loader_cpu`` / ``loader_dali``: :class:`ClipLoader` with ``loader="cpu"`` and ``"dali"``
  (on cuda) streaming that dataset for a fixed time: frames/s and p99 seconds between batches;
* ``decode_jpeg_torchvision``: the same JPEG bytes through batched
  ``torchvision.io.decode_jpeg(device="cuda")``, a peer for DALI's decoder;
* ``train_fp32`` / ``train_bf16``: ``bench train`` (the trainer's model and step) images/s per
  precision and the peak CUDA memory of each;
* ``launch_nccl``: ``pipeline.pretrain`` (debug config, ``--max-steps 3``) under ``torchrun``
  with one process, which makes Accelerate take its MULTI_GPU path and an NCCL process group
  (``accelerate launch --multi_gpu`` refuses fewer than 2 processes);
* ``launch_deepspeed_zero2``: the same under ``accelerate launch`` with
  ``launch/accelerate/deepspeed_zero2.yaml`` (launch/deepspeed/zero2.json), one process.

``dry_run=True`` is the same script on the CPU: every GPU-only step is recorded as
``skipped: dry run``; environment, the dataset build (tiny), a ~1 s CPU loader run and a one-step
CPU ``train_fp32`` run, so the script is exercised by the tests and cannot rot.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
STEPS = ("environment", "pytest_gpu", "dataset", "loader_cpu", "loader_dali",
         "decode_jpeg_torchvision", "train_fp32", "train_bf16", "launch_nccl",
         "launch_deepspeed_zero2")
GPU_ONLY = {"pytest_gpu", "loader_dali", "decode_jpeg_torchvision", "train_bf16", "launch_nccl",
            "launch_deepspeed_zero2"}
SKIPPED_DRY = "skipped: dry run"
TAIL = 4000   # characters of a subprocess's stdout/stderr kept in the JSON (all of it in the log)


class StepFailed(Exception):
    """A step that ran and failed (a subprocess's nonzero exit): its figures are kept."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


class Check:
    """Runs the steps, records each (status, seconds, result or error), rewrites the JSON."""

    def __init__(self, json_path, log_path=None, dry_run=False, seconds=10.0, workdir=None):
        self.json_path = Path(json_path) if json_path else None
        self.log_path = Path(log_path) if log_path else None
        self.dry_run, self.seconds = dry_run, seconds
        self.workdir = Path(workdir)
        self.state: dict = {}
        self.result = {"dry_run": dry_run, "started": datetime.now(timezone.utc).isoformat(),
                       "host": platform.node(), "python": sys.version.split()[0],
                       "steps": {}}

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, file=sys.stderr, flush=True)
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(line + "\n")

    def write(self) -> None:
        if self.json_path:
            from preprocessing.atomic import write_text
            write_text(self.json_path, json.dumps(self.result, indent=2) + "\n")

    def step(self, name: str, fn) -> None:
        if self.dry_run and name in GPU_ONLY:
            self.result["steps"][name] = {"status": "skipped", "reason": SKIPPED_DRY, "seconds": 0.0}
            self.log(f"{name}: {SKIPPED_DRY}")
            self.write()
            return
        self.log(f"{name}: start")
        t0 = time.perf_counter()
        try:
            out = {"status": "ok", "result": fn()}
        except Exception as e:  # noqa: BLE001 - a failing step is a finding, not the end
            out = {"status": "error", "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc()[-TAIL:]}
            if isinstance(e, StepFailed):
                out["result"] = e.result
        out["seconds"] = round(time.perf_counter() - t0, 2)
        self.result["steps"][name] = out
        self.log(f"{name}: {out['status']} in {out['seconds']}s"
                 + (f" ({out['error']})" if out["status"] == "error" else ""))
        self.write()

    def subprocess(self, name: str, cmd: list, timeout: float, env=None) -> dict:
        """Run ``cmd`` from the repo root; its exit code and output tails (all of it to the log)."""
        full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), **(env or {})}
        t0 = time.perf_counter()
        try:
            p = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=full_env, capture_output=True,
                               text=True, timeout=timeout)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc = "timeout"
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(f"--- {name}: {' '.join(map(str, cmd))}\n--- stdout\n{out}\n--- stderr\n{err}\n")
        return {"cmd": [str(c) for c in cmd], "returncode": rc,
                "wall_s": round(time.perf_counter() - t0, 2),
                "stdout_tail": out[-TAIL:], "stderr_tail": err[-TAIL:]}

    # --- the steps ---------------------------------------------------------------------------
    def environment(self) -> dict:
        import torch
        env = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
               "torch_cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
        if env["cuda_available"]:
            env["device_count"] = torch.cuda.device_count()
            env["device_name"] = torch.cuda.get_device_name(0)
            env["device_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
            env["bf16_supported"] = torch.cuda.is_bf16_supported()
        for mod, key in (("nvidia.dali", "dali"), ("deepspeed", "deepspeed"),
                         ("torchvision", "torchvision"), ("accelerate", "accelerate")):
            try:
                m = __import__(mod, fromlist=["__version__"])
                env[key] = {"importable": True, "version": getattr(m, "__version__", None)}
            except Exception as e:  # noqa: BLE001
                env[key] = {"importable": False, "error": f"{type(e).__name__}: {e}"}
        from pipeline.data.dali import dali_available
        env["dali"]["pytorch_plugin"] = dali_available()
        return env

    def pytest_gpu(self) -> dict:
        r = self.subprocess("pytest_gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs",
                                           "-p", "no:cacheprovider", "tests"], timeout=240)
        lines = [ln for ln in r["stdout_tail"].splitlines() if ln.strip()]
        r["summary"] = lines[-1] if lines else ""
        if r.get("returncode") == 5:
            r["note"] = "returncode 5 = no test is marked gpu (none collected)"
        return r

    def dataset(self) -> dict:
        from preprocessing.build import BuildOptions, build
        from preprocessing.synth import make_cohort
        patients, frames = (4, 8) if self.dry_run else (16, 32)
        ds = self.workdir / "ds"
        csv = make_cohort(self.workdir / "cohort", patients=patients, videos_per_patient=2,
                          frames_per_video=frames, size=256, seed=0, workers=2, progress=False)
        build(str(csv), str(ds), BuildOptions(image_size=256, val_fraction=0.0, test_fraction=0.0,
                                              shard_size_mb=8, seed=0), workers=2, progress=False)
        self.state["ds"] = ds
        return {"path": str(ds), "frames": patients * 2 * frames, "frame": "256x256 gray JPEG"}

    def _ds(self) -> Path:
        if "ds" not in self.state:
            raise RuntimeError("needs the dataset step, which did not finish")
        return self.state["ds"]

    def _loader(self, kind: str, device: str) -> dict:
        from pipeline.data import ClipLoader, LoaderConfig
        seconds = 1.0 if self.dry_run else self.seconds
        cfg = LoaderConfig(batch_size=4 if self.dry_run else 32, clip_len=4, loader=kind,
                           decode_threads=2, prefetch=4)
        loader = ClipLoader(self._ds(), cfg, seed=0, device=device)
        quiet = logging.getLogger("sonostream.loader")       # no line per epoch while timed
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            return self._time(loader, cfg, device, kind, seconds)
        finally:
            quiet.setLevel(level)

    def _time(self, loader, cfg, device, kind, seconds) -> dict:
        import numpy as np
        import torch
        cuda = torch.device(device).type == "cuda"
        gaps, n, seen, warmup, t0, last = [], 0, 0, 2, None, 0.0
        while t0 is None or time.perf_counter() - t0 < seconds:
            before = seen
            for b in loader:                        # epoch after epoch until the time is up
                if cuda:
                    torch.cuda.synchronize()
                now, seen = time.perf_counter(), seen + 1
                if t0 is not None:
                    gaps.append(now - last)
                    n += b.frames.shape[0] * b.frames.shape[1]
                elif seen > warmup:                 # the first batches (start-up) are not timed
                    t0 = now
                last = now
                if t0 is not None and now - t0 > seconds:
                    break
            if seen == before:
                raise RuntimeError(f"the {kind} loader gave no batch in an epoch")
        wall = time.perf_counter() - t0
        return {"loader": loader.kind, "device": device, "frames_per_s": round(n / wall, 1),
                "batches": len(gaps), "p50_batch_s": round(float(np.percentile(gaps, 50)), 5),
                "p99_batch_s": round(float(np.percentile(gaps, 99)), 5), "timed_s": round(wall, 2),
                "batch_clips": cfg.batch_size, "clip_len": cfg.clip_len,
                "decode_threads": cfg.decode_threads, "dali_threads": cfg.dali_threads}

    def decode_jpeg_torchvision(self, batch: int = 128) -> dict:
        import numpy as np
        import pyarrow.parquet as pq
        import torch
        from torchvision.io import decode_jpeg
        from preprocessing import format as fmt
        ds = self._ds()
        t = pq.read_table(ds / fmt.INDEX_FILE).to_pandas()
        blobs = []
        for r in t.itertuples():
            with open(ds / fmt.SHARDS_DIR / r.shard, "rb") as f:
                f.seek(r.image_offset)
                blobs.append(torch.frombuffer(bytearray(f.read(r.image_size)), dtype=torch.uint8))
        batches = [blobs[i:i + batch] for i in range(0, len(blobs) - batch + 1, batch)]
        for b in batches[:2]:                                          # warm-up (nvjpeg init)
            decode_jpeg(b, device="cuda")
        torch.cuda.synchronize()
        gaps, n, t0 = [], 0, time.perf_counter()
        while time.perf_counter() - t0 < self.seconds:
            for b in batches:
                s = time.perf_counter()
                out = decode_jpeg(b, device="cuda")
                torch.cuda.synchronize()
                gaps.append(time.perf_counter() - s)
                n += len(out)
        wall = time.perf_counter() - t0
        return {"frames_per_s": round(n / wall, 1), "batch": batch,
                "p99_batch_s": round(float(np.percentile(gaps, 99)), 5),
                "shape": list(out[0].shape), "note": "decode only: from bytes in memory, no "
                "masks, labels or clip assembly (DALI's figure includes those)"}

    def train(self, precision: str) -> dict:
        import torch
        from pipeline.apps.bench.train import bench_train
        if self.dry_run:
            cfg = ROOT / "launch" / "configs" / "debug" / "pretrain.yaml"
            sets = ["loader.image_size=32", "train.batch_size=4", "loader.loader=cpu"]
            r = bench_train(self._ds(), cfg, sets, steps=1, warmup=1, precisions=(precision,))
        else:
            torch.cuda.reset_peak_memory_stats()
            # The real config (ResNet-18, 224x224, loader auto = DALI) at one GPU's share of it.
            r = bench_train(self._ds(), ROOT / "launch" / "configs" / "pretrain.yaml",
                            ["train.batch_size=32"], steps=20, warmup=3, precisions=(precision,))
            r["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return r

    def _pretrain_args(self, out: str) -> list:
        sets = ["train.trackers=[]", "loader.loader=auto", "train.checkpoint_every=3",
                "train.log_every=1"]
        return ["-m", "pipeline.pretrain", "--config",
                ROOT / "launch" / "configs" / "debug" / "pretrain.yaml", "--data", self._ds(),
                "--out", self.workdir / out, "--max-steps", "3", "--quiet",
                *[a for s in sets for a in ("--set", s)]]

    def launch_nccl(self) -> dict:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "1", *self._pretrain_args("run_nccl")]
        return self._launched(self.subprocess("launch_nccl", cmd, timeout=180), "run_nccl")

    def launch_deepspeed_zero2(self) -> dict:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               ROOT / "launch" / "accelerate" / "deepspeed_zero2.yaml", "--num_processes", "1",
               "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no",
               "--dynamo_backend", "no", *self._pretrain_args("run_zero2")]
        return self._launched(self.subprocess("launch_deepspeed_zero2", cmd, timeout=180), "run_zero2")

    def _launched(self, r: dict, out: str) -> dict:
        metrics = self.workdir / out / "metrics.jsonl"
        r["steps_logged"] = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        r["encoder_written"] = (self.workdir / out / "encoder.pt").exists()
        # The trainer's banner: "pretraining ARCH on {'loader': 'dali', ...} | ... DistributedType.X"
        kind = re.search(r"DistributedType\.(\w+)", r["stdout_tail"] + r["stderr_tail"])
        loader = re.search(r"'loader': '(\w+)'", r["stdout_tail"] + r["stderr_tail"])
        r["distributed_type"] = kind.group(1) if kind else None    # MULTI_GPU = NCCL on a GPU
        r["loader"] = loader.group(1) if loader else None
        if r["returncode"] != 0:
            raise StepFailed(f"exit code {r['returncode']}; stderr ends: {r['stderr_tail'][-800:]}", r)
        return r

    def run(self) -> dict:
        t0 = time.perf_counter()
        steps = {"environment": self.environment, "pytest_gpu": self.pytest_gpu,
                 "dataset": self.dataset, "loader_cpu": lambda: self._loader("cpu", "cpu"),
                 "loader_dali": lambda: self._loader("dali", "cuda"),
                 "decode_jpeg_torchvision": self.decode_jpeg_torchvision,
                 "train_fp32": lambda: self.train("no"), "train_bf16": lambda: self.train("bf16"),
                 "launch_nccl": self.launch_nccl,
                 "launch_deepspeed_zero2": self.launch_deepspeed_zero2}
        assert tuple(steps) == STEPS
        for name, fn in steps.items():
            self.step(name, fn)
        self.result["total_s"] = round(time.perf_counter() - t0, 1)
        self.result["failed"] = [k for k, v in self.result["steps"].items() if v["status"] == "error"]
        self.write()
        return self.result


def bench_gpu(json_path=None, log_path=None, dry_run: bool = False, seconds: float = 10.0,
              workdir=None) -> dict:
    """Run the check; returns the result (also written to ``json_path`` after every step)."""
    with tempfile.TemporaryDirectory(prefix="sonostream-gpu-check-") as tmp:
        return Check(json_path, log_path, dry_run, seconds, workdir or tmp).run()
