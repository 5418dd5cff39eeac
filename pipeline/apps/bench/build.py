"""`sonostream bench build`: build throughput at 1 and 2 workers, measured side by side.

The same synthetic cohort (256x256 PNG frames and masks) is built to 256x256 JPEG shards,
alternating 1-worker and 2-worker runs so that both see the same machine load; the median of
each is reported. Frames/s counts CSV rows over the wall time of the whole build (plan, worker
start-up, encode, shard writing, index), which is what a user waits for. ``per_frame_us``
breaks one frame's cost into its codec steps (measured once, without masks remembered).
``main_cpu_us_per_frame`` is the CPU of this (the build's main) process per frame, median per
arm: with workers it is the part that does not scale (plan, appending, index), and CPU time
stays meaningful on a loaded machine where wall times do not.

``partitioned`` is the arm of a build split into parts (``build --plan/--part/--merge``): the
cohort planned into 2 parts, then part 0 built alone by one ``sonostream build --part`` process
vs both parts built by two such processes at once (1 encode worker each), alternating; frames/s
counts the parts' CSV rows over the wall time from starting the processes to the last exit
(interpreter start-up included, as on a cluster). Plan and merge are timed once, apart.

``jpeg_sources`` is the arm of sources that already are what the build stores: the cohort's
frames written once as 256x256 gray JPEG (q95) files with a CSV of the same rows without masks.
The build stores those bytes as they are (after the cheap structural check; 1 frame in 32
decoded), at 1 and 2 workers, beside MosaicML Streaming's ``MDSWriter`` (one process, a
``bytes`` column) reading the same files in the same order, and the build with
``verify_decode`` (every frame decoded); alternating, medians. MDSWriter needs the optional
``mosaicml-streaming``; without it that arm is reported under ``skipped``.
"""
from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from preprocessing.build import BuildOptions, build
from preprocessing.format import SonostreamError


def alternating_runs(arms, repeats: int, out_of, run, cpu: dict | None = None) -> dict:
    """{arm: [seconds per run]}: ``run(arm, out)`` timed ``repeats`` times per arm, the arms
    alternating within each round (so a drift in the machine's speed hits every arm alike);
    each run writes a fresh ``out_of(arm)``. ``cpu``: filled with {arm: [CPU seconds of this
    process per run]} (``time.process_time``: the main process only, not its workers)."""
    times = {arm: [] for arm in arms}
    for _ in range(repeats):
        for arm in arms:
            out = out_of(arm)
            shutil.rmtree(out, ignore_errors=True)
            c0, t0 = time.process_time(), time.perf_counter()
            run(arm, out)
            times[arm].append(time.perf_counter() - t0)
            if cpu is not None:
                cpu.setdefault(arm, []).append(time.process_time() - c0)
    return times


def main_cpu_us(cpu: dict, frames: int) -> dict:
    """Median CPU of the main process per frame, in microseconds, per arm: what a build's one
    main process (plan, writing, index) costs, which more workers do not share; robust to a
    loaded machine where wall times are not."""
    return {str(arm): round(statistics.median(c) / frames * 1e6, 1) for arm, c in cpu.items()}


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
                worker_counts: tuple[int, ...] = (1, 2), parts_arm: bool = True,
                jpeg_arm: bool = True) -> dict:
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
        built = {}

        def run(w, out):
            built["rows"] = build(str(csv_path), str(out), opts, workers=w, progress=False).rows
        cpu: dict = {}
        times = alternating_runs(worker_counts, repeats, lambda w: root / f"shards-w{w}", run, cpu)
        rows = built["rows"]
        fps = {str(w): round(rows / statistics.median(t), 1) for w, t in times.items()}
        out = {"frames_per_s": fps, "frames": rows,
               "seconds": {str(w): [round(x, 3) for x in t] for w, t in times.items()},
               "main_cpu_us_per_frame": main_cpu_us(cpu, rows),
               "setup": {"image_size": 256, "codec": "jpeg", "source": "PNG frames + PNG masks",
                         "repeats": repeats, "cpus": os.cpu_count(),
                         "python": platform.python_version(), "machine": platform.machine()}}
        if "1" in fps and "2" in fps:
            out["scaling_2_vs_1"] = round(fps["2"] / fps["1"], 3)
        stages = stage_costs(str(csv_path))
        stages["whole_build_1_worker"] = round(1e6 / fps[str(min(worker_counts))], 1)
        out["per_frame_us"] = stages
        if parts_arm:
            out["partitioned"] = bench_parts(csv_path, root, opts, repeats)
        if jpeg_arm:
            out["jpeg_sources"] = bench_jpeg_sources(csv_path, root, repeats)
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def bench_parts(csv_path: Path, root: Path, opts: BuildOptions, repeats: int) -> dict:
    """Part 0 of a 2-part plan built alone vs both parts built at once (two processes)."""
    from preprocessing.partition import merge, plan_parts
    cmd = [sys.executable, "-m", "pipeline.cli", "build", "--workers", "1", "--quiet",
           "--parts", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[3]), os.environ.get("PYTHONPATH")]))}
    times: dict[str, list[float]] = {"1_part_alone": [], "2_parts_at_once": []}
    rows: dict[str, int] = {}
    plan_s = merge_s = None
    for _ in range(repeats):
        for arm, parts in (("1_part_alone", [0]), ("2_parts_at_once", [0, 1])):
            out = root / f"parts-{arm}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            plan = plan_parts(str(csv_path), str(out), opts, 2)
            plan_s = time.perf_counter() - t0
            rows[arm] = sum(plan.part_frames[p] for p in parts)
            t0 = time.perf_counter()
            procs = [subprocess.Popen(cmd + ["--out", str(out), "--part", str(p)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for p in parts]
            errors = [proc.communicate()[1] for proc in procs]
            times[arm].append(time.perf_counter() - t0)
            failed = [e.decode(errors="replace") for proc, e in zip(procs, errors) if proc.returncode]
            if failed:
                raise SonostreamError(f"a part of the benchmark build failed: {failed[0][-2000:]}")
            if len(parts) == 2:
                t0 = time.perf_counter()
                merge(str(out))
                merge_s = time.perf_counter() - t0
    fps = {arm: round(rows[arm] / statistics.median(t), 1) for arm, t in times.items()}
    return {"frames_per_s": fps, "frames": rows,
            "seconds": {arm: [round(x, 3) for x in t] for arm, t in times.items()},
            "scaling_2_parts_vs_1": round(fps["2_parts_at_once"] / fps["1_part_alone"], 3),
            "plan_seconds": round(plan_s, 3), "merge_seconds": round(merge_s, 3),
            "setup": "2-part plan of the same cohort; each part one `sonostream build --part` "
                     "process with --workers 1; goal: scaling >= 1.8 on 2 idle cores"}


def jpeg_cohort(csv_path: Path, root: Path) -> Path:
    """The cohort's frames as 256x256 gray JPEG q95 files (what the build would store) and a CSV
    of the same rows without the mask column; made once under ``root/jpeg_cohort``."""
    import csv
    import cv2
    out = root / "jpeg_cohort"
    target = out / "frames.csv"
    if target.exists():
        return target
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "mask_path"]
    for r in rows:
        src = csv_path.parent / r["frame_path"]
        r["frame_path"] = str(Path(r["frame_path"]).with_suffix(".jpg"))
        dst = out / r["frame_path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(src), cv2.IMREAD_GRAYSCALE),
                               [cv2.IMWRITE_JPEG_QUALITY, 95])
        dst.write_bytes(buf.tobytes())
    tmp = out / "frames.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(target)
    return target


def write_mds_files(paths: list[str], out: Path) -> None:
    """MosaicML Streaming's writer over the files, read one by one (what a user would run)."""
    from streaming import MDSWriter
    shutil.rmtree(out, ignore_errors=True)
    with MDSWriter(out=str(out), columns={"jpg": "bytes"}) as writer:
        for path in paths:
            with open(path, "rb") as f:
                writer.write({"jpg": f.read()})


def bench_jpeg_sources(csv_path: Path, root: Path, repeats: int) -> dict:
    """Build from gray JPEG sources of the stored size (stored as they are) at 1 and 2 workers,
    with --verify-decode at 1, and MDSWriter on the same files; alternating, medians."""
    from preprocessing.frames_csv import plan_build

    from .peers import missing
    jpeg_csv = jpeg_cohort(csv_path, root)
    plan = plan_build(str(jpeg_csv), 0.0, 0.0, 0)
    paths = [f.path for v in plan.videos for f in v.frames]   # the build's read order
    skipped = {}
    arms = {"build_1_worker": (1, False), "build_2_workers": (2, False),
            "build_1_worker_verify_decode": (1, True)}
    names = [*arms, "mds_writer"]
    why = missing("mosaic_streaming")
    if why:
        skipped["mds_writer"] = why
        names.remove("mds_writer")
    built = {"rows": 0}

    def run(arm, out):
        if arm == "mds_writer":
            write_mds_files(paths, out)
            return
        workers, verify = arms[arm]
        opts = BuildOptions(image_size=256, codec="jpeg", verify_decode=verify)
        built["rows"] = build(str(jpeg_csv), str(out), opts, workers=workers, progress=False).rows
    cpu: dict = {}
    times = alternating_runs(names, repeats, lambda arm: root / f"jpeg-{arm}", run, cpu)
    rows = built["rows"]
    fps = {arm: round(len(paths) / statistics.median(t), 1) for arm, t in times.items()}
    result = {"frames_per_s": fps, "frames": len(paths), "rows": rows,
              "seconds": {arm: [round(x, 3) for x in t] for arm, t in times.items()},
              "main_cpu_us_per_frame": main_cpu_us(cpu, len(paths)),
              "skipped": skipped,
              "setup": "the cohort's frames as 256x256 gray JPEG q95 files, no masks; build "
                       "stores them as they are; MDSWriter (1 process) writes the same files, "
                       "read in the build's order, as a bytes column; goal: build >= MDSWriter"}
    if "mds_writer" in fps:
        result["vs_mds_writer"] = {arm: round(fps[arm] / fps["mds_writer"], 3) for arm in arms}
    result["verify_decode_cost"] = round(fps["build_1_worker"] / fps["build_1_worker_verify_decode"], 3)
    return result
