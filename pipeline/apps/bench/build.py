"""`sonostream bench build`: build throughput at 1 and 2 workers, measured side by side.

The same synthetic cohort (256x256 PNG frames and masks) is built to 256x256 JPEG shards,
alternating 1-worker and 2-worker runs so that both see the same machine load; the median of
each is reported. Frames/s counts CSV rows over the wall time of the whole build (plan, worker
start-up, encode, shard writing, index), which is what a user waits for. ``per_frame_us``
breaks one frame's cost into its codec steps (measured once, without masks remembered).
"""
from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from preprocessing.build import BuildOptions, build
from preprocessing.format import SonostreamError


def stage_costs(csv_path: str, n: int = 256) -> dict:
    """Microseconds per frame of each codec step, on the first ``n`` rows, in this process.

    Shows where a 1-worker build's time goes: what is left after these is the Python work of
    planning, JSON, tar writing and hashing.
    """
    from preprocessing.frames_csv import plan_build
    from preprocessing.imaging import binarize_mask, decode_gray, encode, read_bytes
    plan = plan_build(csv_path, 0.0, 0.0, 0)
    rows = [f for v in plan.videos for f in v.frames][:n]
    frames = [read_bytes(r.path) for r in rows]
    masks = [read_bytes(r.mask_path) for r in rows if r.mask_path]
    t = {}
    t0 = time.perf_counter()
    for r in rows:
        read_bytes(r.path)
    t["read_file"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    imgs = [decode_gray(b) for b in frames]
    t["decode_frame_png"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in masks:
        binarize_mask(decode_gray(m))
    t["decode_and_check_mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for img in imgs:
        encode(img, "jpeg", 95)
    t["encode_jpeg"] = time.perf_counter() - t0
    return {k: round(v / len(rows) * 1e6, 1) for k, v in t.items()}


def bench_build(frames: int = 4096, repeats: int = 3, workdir: str | None = None,
                worker_counts: tuple[int, ...] = (1, 2)) -> dict:
    if frames < 64:
        raise SonostreamError(f"--frames must be at least 64 for a meaningful figure, got {frames}")
    from preprocessing.synth import make_cohort
    tmp = None
    if workdir is None:
        tmp = tempfile.mkdtemp(prefix="sonostream-bench-")
        workdir = tmp
    root = Path(workdir)
    frames_per_video, videos = 32, 2
    patients = max(1, round(frames / (frames_per_video * videos)))
    try:
        csv_path = root / "cohort" / "frames.csv"
        if not csv_path.exists():
            make_cohort(root / "cohort", patients=patients, videos_per_patient=videos,
                        frames_per_video=frames_per_video, size=256, seed=0,
                        workers=max(worker_counts), progress=False)
        opts = BuildOptions(image_size=256, codec="jpeg")
        times: dict[int, list[float]] = {w: [] for w in worker_counts}
        rows = 0
        for _ in range(repeats):
            for w in worker_counts:
                out = root / f"shards-w{w}"
                shutil.rmtree(out, ignore_errors=True)
                t0 = time.perf_counter()
                result = build(str(csv_path), str(out), opts, workers=w, progress=False)
                times[w].append(time.perf_counter() - t0)
                rows = result.rows
        fps = {str(w): round(rows / statistics.median(t), 1) for w, t in times.items()}
        out = {"frames_per_s": fps, "frames": rows,
               "seconds": {str(w): [round(x, 3) for x in t] for w, t in times.items()},
               "setup": {"image_size": 256, "codec": "jpeg", "source": "PNG frames + PNG masks",
                         "repeats": repeats, "cpus": os.cpu_count(),
                         "python": platform.python_version(), "machine": platform.machine()}}
        if "1" in fps and "2" in fps:
            out["scaling_2_vs_1"] = round(fps["2"] / fps["1"], 3)
        stages = stage_costs(str(csv_path))
        stages["whole_build_1_worker"] = round(1e6 / fps[str(min(worker_counts))], 1)
        out["per_frame_us"] = stages
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
