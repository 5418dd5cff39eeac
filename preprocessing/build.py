"""`sonostream build`: a frames CSV -> shards (+ DALI .idx), {split}.wids.json, index.parquet,
manifest.json, rejects.csv.

Read top to bottom, one build is:
1. plan   read and check the CSV; group rows into videos in temporal order; split patients
          (the CSV's split column, else the hash);
          order videos (split, then a seeded shuffle). Bad rows go to rejects here.
2. resume if an earlier run of the same inputs was interrupted, keep its finished shards and
          skip every frame they hold.
3. encode workers read, convert and encode segments of videos in parallel, and pack each
          frame's members as its tar holds them (``packing``: index row, JSON, tar headers,
          CRC-32s); the main process takes the results in plan order, checks the numbering of
          the surviving frames of each video and appends their bytes to the shard writer,
          which is the only thing touching tar files.
4. finish index rows of every shard, in shard order -> index.parquet, written after
          rejects.csv, the wids shard lists and manifest.json: a dataset without an index is
          unfinished.
Every input row ends in the index or in rejects.csv; the build checks that sum before it
writes the index.

A build split into parts (``preprocessing.partition``: --plan, --part, --merge) uses the same
steps: step 1 at --plan, steps 2-3 per part (``write_shards``), step 4 at --merge (``_finish``).
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import atomic
from . import format as fmt
from .cpus import exit_with_parent
from .dataset import read_manifest
from .encode import EncodeOptions, Rejected, encode_segment
from .frames_csv import Plan, Video, plan_build, reject
from .lock import folder_lock
from .packing import VideoInfo, pack_segment, renumber
from .progress import progress_bar
from .shards import ShardWriter, load_finished
from .summary import count_reasons, read_rejects, single_frame_videos, split_counts

SEGMENT_FRAMES = 64  # frames per worker task: small enough to balance, large enough to amortise
BUILD_STATE = "build.json"
PLAN_DIR = "plan"   # .work/plan/: the plan of a build split into parts (preprocessing.partition)


class BuildError(fmt.SonostreamError):
    """The build cannot start or finish; the message says what to do."""


@dataclass(frozen=True)
class BuildOptions:
    image_size: int = 256
    codec: str = "jpeg"
    jpeg_quality: int = 95
    shard_size_mb: float = 64.0
    val_fraction: float | None = None    # None: 0.1, or 0 for a split the CSV names
    test_fraction: float | None = None
    seed: int = 0
    min_video_frames: int = 1
    max_pixels: int = fmt.DEFAULT_MAX_PIXELS  # a frame or mask over it is rejected from its header
    verify_decode: bool = False  # decode every frame, also sources stored as is (encode.py)

    def __post_init__(self):
        if self.image_size < 0 or 0 < self.image_size < 16:
            raise fmt.SonostreamError(f"image size must be 0 (keep source size) or >= 16, got "
                                      f"{self.image_size}")
        if self.codec not in fmt.IMAGE_EXT:
            raise fmt.SonostreamError(f"codec must be one of {sorted(fmt.IMAGE_EXT)}, got "
                                      f"{self.codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise fmt.SonostreamError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if self.shard_size_mb <= 0:
            raise fmt.SonostreamError(f"shard size must be positive, got {self.shard_size_mb} MB")
        if self.min_video_frames < 1:
            raise fmt.SonostreamError(f"min video frames must be >= 1, got {self.min_video_frames}")
        if self.max_pixels < 1:
            raise fmt.SonostreamError(f"max pixels must be >= 1, got {self.max_pixels}")
        fmt.resolve_fractions(self.val_fraction, self.test_fraction)


def option_record(opts: BuildOptions) -> dict:
    """The options as the fingerprint records them. ``verify_decode`` only when on: a default
    build's manifest stays what it was before the option existed, and a dataset built without
    the full decode is not taken as built with it."""
    record = asdict(opts)
    if not record["verify_decode"]:
        del record["verify_decode"]
    return record


@dataclass
class BuildResult:
    out_dir: str
    rows: int
    frames: int
    rejects: int
    shards: int
    reused_shards: int = 0
    seconds: float = 0.0
    up_to_date: bool = False
    splits: dict = field(default_factory=dict)
    reject_reasons: dict = field(default_factory=dict)
    single_frame_videos: int = 0
    warnings: list = field(default_factory=list)  # about the CSV, e.g. a misspelled column


def build(csv_path: str, out_dir: str, opts: BuildOptions = BuildOptions(), workers: int = 1,
          overwrite: bool = False, progress: bool = True) -> BuildResult:
    t0 = time.perf_counter()
    out = Path(out_dir)
    if workers > 1:
        pool_context(start=True)   # the workers' imports overlap the plan
    plan = plan_build(csv_path, opts.val_fraction, opts.test_fraction, opts.seed)
    fingerprint = {"format_version": fmt.FORMAT_VERSION, "csv_sha256": _sha256(csv_path),
                   "options": option_record(opts)}
    with folder_lock(out, "build"):  # one writer per folder, from here to the index
        try:
            result = _build(out, plan, fingerprint, opts, workers, overwrite, progress)
        except Exception as e:
            if not atomic.out_of_space(e, out):
                raise
            raise BuildError(_no_space(out, plan)) from None
    result.seconds = time.perf_counter() - t0
    return result


def _build(out: Path, plan: Plan, fingerprint: dict, opts: BuildOptions, workers: int,
           overwrite: bool, progress: bool) -> BuildResult:
    done = _prepare_out_dir(out, fingerprint, overwrite)
    if done is not None:
        done.warnings = plan.warnings
        return done
    reused, leftover = write_shards(out, plan.videos, plan.num_rows, plan.extra_columns, opts,
                                    workers, progress)
    result = _finish(out, plan, opts, fingerprint, leftover)
    result.reused_shards = reused
    result.warnings = plan.warnings
    return result


def write_shards(out: Path, videos: list[Video], num_rows: int, extra_columns: list[str],
                 opts: BuildOptions, workers: int, progress: bool, part: int | None = None,
                 marker_dir: Path | None = None) -> tuple[int, list[dict]]:
    """Encodes ``videos`` into shards after those an interrupted run finished (steps 2 and 3);
    returns (shards kept from that run, rejects not stored with any shard). ``part`` and
    ``marker_dir``: one part of a partitioned build (``preprocessing.partition``)."""
    records, tables, part_rejects = load_finished(out, part, marker_dir)
    written = {(k, f) for t in tables for k, f in zip(t["video_key"].to_pylist(),
                                                       t["frame_id"].to_pylist())}
    rejected_lines = {r["csv_line"] for r in part_rejects}
    schema = fmt.index_schema(extra_columns)
    next_numbers = collections.Counter(r["split"] for r in records)
    todo = [v for v in videos
            if any((v.key, f.frame_id) not in written and f.csv_line not in rejected_lines
                   for f in v.frames)]
    accounted = num_rows - sum(len(v.frames) for v in todo)
    enc = EncodeOptions(opts.image_size, opts.codec, opts.jpeg_quality, opts.max_pixels,
                        opts.verify_decode)
    bar = progress_bar(num_rows, "build" if part is None else f"build part {part}", "frame",
                       enabled=progress, initial=accounted)
    with ShardWriter(out, int(opts.shard_size_mb * 2**20), schema, next_numbers, part,
                     marker_dir) as writer:
        for video, results in _encode_videos(todo, enc, workers):
            _write_video(writer, video, results, opts, written, rejected_lines)
            bar.update(len(video.frames))
        leftover = writer.close()
    bar.close()
    return len(records), leftover


def _no_space(out: Path, plan: Plan) -> str:
    """The message for a disk that filled up mid-build, after removing the unfinished shard
    (``load_finished`` deletes whatever a shard without its marker left)."""
    try:
        records = load_finished(out)[0]
    except Exception:  # noqa: BLE001 - the message matters more than the estimate
        records = []
    frames, size = sum(r["frames"] for r in records), sum(r["bytes"] for r in records)
    needed = size / frames * (plan.num_rows - frames) if frames else None
    kept = (f"the {len(records)} finished shards ({atomic.mb(size)}) are kept and the build "
            "continues after them" if records else "it starts from the first shard again")
    return atomic.no_space_message(
        out, "the dataset's shards", needed=needed,
        fix=f"the unfinished shard was removed. Free space there and rerun the same command "
            f"({kept}), or build into another --out")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare_out_dir(out: Path, fingerprint: dict, overwrite: bool) -> BuildResult | None:
    """Clears, resumes or refuses ``out``; returns a result when it is already built."""
    state = out / fmt.WORK_DIR / BUILD_STATE
    atomic.remove_leftovers(out)  # temp files of a killed run (we hold the lock: none is live)
    if overwrite:
        clear_out_dir(out)
    if (out / fmt.INDEX_FILE).exists():
        if not (out / fmt.MANIFEST_FILE).exists():
            raise BuildError(f"{out} has an index but no {fmt.MANIFEST_FILE}; pass --overwrite "
                             "to rebuild it")
        try:
            raw = json.loads((out / fmt.MANIFEST_FILE).read_bytes())
        except ValueError:
            raw = None
        if isinstance(raw, dict) and raw.get("format_version") != fmt.FORMAT_VERSION:
            raise BuildError(f"{out} holds a dataset of format {raw.get('format_version')} "
                             f"(this sonostream writes {fmt.FORMAT_VERSION}); pass --overwrite to "
                             "rebuild it, or choose another --out")
        manifest = read_manifest(out, fix="pass --overwrite to rebuild the dataset, or choose "
                                 "another --out")
        if manifest.get("fingerprint") == fingerprint:
            return _result_from_manifest(out, manifest)
        raise BuildError(f"{out} already holds a dataset built from other inputs or options; "
                         "pass --overwrite to replace it, or choose another --out")
    if (out / fmt.WORK_DIR / PLAN_DIR).exists():
        raise BuildError(f"{out} holds a plan of a build split into parts (`--plan`); finish it "
                         f"with --part and --merge, or pass --overwrite to discard it")
    if state.exists() and json.loads(state.read_text()) != fingerprint:
        raise BuildError(f"{out} holds an unfinished build of other inputs or options; pass "
                         "--overwrite to discard it, or rerun with the same CSV and options")
    if not state.exists() and (out / fmt.SHARDS_DIR).exists():
        raise BuildError(f"{out}/{fmt.SHARDS_DIR} exists but no build state does; pass "
                         "--overwrite to replace it, or choose another --out")
    atomic.write_json(state, fingerprint)
    return None


def clear_out_dir(out: Path) -> None:
    """What --overwrite removes: the dataset's files and any unfinished build (or plan)."""
    for name in (fmt.INDEX_FILE, fmt.MANIFEST_FILE, fmt.REJECTS_FILE,
                 *map(fmt.wids_name, fmt.SPLITS)):
        (out / name).unlink(missing_ok=True)
    for name in (fmt.SHARDS_DIR, fmt.WORK_DIR):
        shutil.rmtree(out / name, ignore_errors=True)


def _encode_videos(videos: list[Video], enc: EncodeOptions,
                   workers: int) -> Iterator[tuple[Video, list]]:
    """(video, its segments' (blob, results)) in plan order; workers encode and pack segments
    (``packing.pack_segment``) ahead of the writer."""
    tasks = [(vi, VideoInfo.of(video), i, video.frames[i:i + SEGMENT_FRAMES])
             for vi, video in enumerate(videos)
             for i in range(0, len(video.frames), SEGMENT_FRAMES)]
    pending: dict[int, list] = collections.defaultdict(list)
    remaining = collections.Counter(vi for vi, *_ in tasks)
    for vi, packed in _ordered_map(tasks, enc, workers):
        pending[vi].append(packed)
        remaining[vi] -= 1
        if remaining[vi] == 0:
            yield videos[vi], pending.pop(vi)


def pool_context(start: bool = False):
    """The workers' multiprocessing context: a forkserver with the encoder preloaded (as cheap
    as fork per worker, but never a fork of this process, whose OpenCV or tqdm threads could
    deadlock a child), else spawn. ``start``: launch the forkserver now, so that its imports
    (OpenCV, NumPy, PyArrow: ~0.4 s of a core) run while this process plans the build."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["preprocessing.packing", "preprocessing.cpus"])
    if start:
        from multiprocessing import forkserver
        forkserver.ensure_running()
    return ctx


def _ordered_map(tasks: list, enc: EncodeOptions, workers: int) -> Iterator[tuple[int, tuple]]:
    if workers <= 1:
        for vi, video, start, rows in tasks:
            yield vi, pack_segment(rows, enc, video, start, encode_segment)
        return
    ctx = pool_context()
    window = 4 * workers  # bounded read-ahead: encoded bytes in flight stay bounded
    # Each worker exits when this process does, so a kill -9 of the build leaves no process.
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        def submit(task):
            vi, video, start, rows = task
            return vi, rows, pool.submit(pack_segment, rows, enc, video, start, encode_segment)
        it = iter(tasks)
        queue = collections.deque(map(submit, itertools.islice(it, window)))
        while queue:
            vi, rows, fut = queue[0]
            try:
                for task in itertools.islice(it, 1):  # keep the window full
                    queue.append(submit(task))
                result = fut.result()
            except BrokenProcessPool:   # a worker was killed (SIGKILL, the OOM killer, a crash)
                raise BuildError(_worker_died(list(queue), enc, workers)) from None
            queue.popleft()
            yield vi, result


def _worker_died(queue: list, enc: EncodeOptions, workers: int) -> str:
    """The message for a dead encode worker: the segments it may have been encoding (workers
    take tasks in order, so the first ``workers`` unfinished ones were running), and the fix."""
    futures = [fut for _, _, fut in queue]
    concurrent.futures.wait(futures, timeout=10)   # the broken pool fails the rest at once
    unfinished = [seg for _, seg, fut in queue if not fut.done() or fut.exception() is not None]
    running = "; ".join(f"{len(seg)} frames from line {seg[0].csv_line} {seg[0].frame_path} to "
                        f"line {seg[-1].csv_line} {seg[-1].frame_path}"
                        for seg in unfinished[:workers])
    return (f"a build worker process died while encoding, most likely killed by the kernel's "
            f"out-of-memory killer (`dmesg | grep -i -e oom -e killed` shows it); the CSV rows "
            f"being encoded were among: {running} (one of them, or all together, took too much "
            f"memory). The finished shards are kept: rerun the same command with fewer --workers "
            f"(now {workers}) or a lower --max-pixels (now {enc.max_pixels}) to continue after "
            f"them")


def _write_video(writer: ShardWriter, video: Video, segments: list, opts: BuildOptions,
                 written: set, rejected_lines: set) -> None:
    """Numbers the usable frames of one video 0..n-1 and appends those not yet in a shard.
    ``segments``: (blob, results) per segment, in order (``packing.pack_segment``)."""
    results = [(blob, r) for blob, rs in segments for r in rs]
    kept = [(row, blob, r) for row, (blob, r) in zip(video.frames, results)
            if not isinstance(r, Rejected)]
    failed = [(row, r.reason) for row, (_, r) in zip(video.frames, results)
              if isinstance(r, Rejected)]
    if 0 < len(kept) < opts.min_video_frames:
        reason = (f"video has {len(kept)} usable frame(s), fewer than --min-video-frames "
                  f"{opts.min_video_frames}")
        failed += [(row, reason) for row, *_ in kept]
        kept = []
    for row, reason in failed:
        if row.csv_line not in rejected_lines:
            writer.reject(reject(row.csv_line, row.frame_path, video.patient_id,
                                 video.video_name, row.frame_id, reason))
    samples = []
    for index, (row, blob, p) in enumerate(kept):
        if (video.key, row.frame_id) in written:
            continue  # already in a shard an interrupted run finished
        if p.row["frame_index"] != index:   # a frame before it was rejected
            blob, p = renumber(blob, p, index)
        samples.append((blob, p))
    if samples:
        writer.start_video(video.split, sum(p.budget for _, p in samples))
        for blob, p in samples:
            writer.append(blob, p)


def _finish(out: Path, plan: Plan, opts: BuildOptions, fingerprint: dict,
            leftover: list[dict], finished: tuple | None = None) -> BuildResult:
    """Step 4. ``finished``: (records, tables, rejects) of the shards, in order; default: what
    ``load_finished`` gives (a merge of parts passes its own, in plan order)."""
    records, tables, part_rejects = finished if finished is not None else load_finished(out)
    schema = fmt.index_schema(plan.extra_columns)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    counts = pc.value_counts(table["video_key"]).to_pylist()
    per_video = {c["values"]: c["counts"] for c in counts}
    num_frames = pa.array([per_video[k] for k in table["video_key"].to_pylist()], pa.int32())
    table = table.set_column(schema.get_field_index("num_frames"), schema.field("num_frames"),
                             num_frames).cast(schema)
    rejects = sorted(plan.rejects + part_rejects + leftover, key=lambda r: r["csv_line"])
    if table.num_rows + len(rejects) != plan.num_rows:
        raise BuildError(f"internal error: {plan.num_rows} CSV rows but {table.num_rows} indexed "
                         f"+ {len(rejects)} rejected; please report this with the CSV")
    _write_rejects(out / fmt.REJECTS_FILE, rejects)
    result = _summarize(str(out), plan.num_rows, table, rejects, len(records))
    wids = {}
    for split in fmt.SPLITS:
        path = out / fmt.wids_name(split)
        if any(r["split"] == split for r in records):
            atomic.write_json(path, fmt.wids_shardlist(split, records))
            wids[split] = path.name
        else:
            path.unlink(missing_ok=True)
    manifest = {"format_version": fmt.FORMAT_VERSION, "fingerprint": fingerprint,
                "codec": opts.codec, "image_ext": fmt.IMAGE_EXT[opts.codec],
                "image_size": opts.image_size, "shards": records,
                "counts": {"rows": plan.num_rows, "frames": table.num_rows,
                           "rejects": len(rejects), "splits": result.splits,
                           "single_frame_videos": result.single_frame_videos},
                "extra_columns": plan.extra_columns, "wids": wids,
                fmt.PSEUDONYM_COLUMN: _pseudonym_key(table)}
    atomic.write_json(out / fmt.MANIFEST_FILE, manifest)
    with atomic.atomic_open(out / fmt.INDEX_FILE) as f:  # last: its presence means "finished"
        pq.write_table(table, f)
    shutil.rmtree(out / fmt.WORK_DIR, ignore_errors=True)
    return result


def _pseudonym_key(table: pa.Table) -> str | None:
    """The fingerprint of the key the ids were pseudonymised with (one per CSV: frames_csv
    checks), None when they were not."""
    if fmt.PSEUDONYM_COLUMN not in table.column_names:
        return None
    keys = sorted({k for k in table[fmt.PSEUDONYM_COLUMN].to_pylist() if k})
    return keys[0] if len(keys) == 1 else None


def _write_rejects(path: Path, rejects: list[dict]) -> None:
    atomic.write_text(path, fmt.csv_text(fmt.REJECT_COLUMNS, rejects))


def _summarize(out_dir: str, rows: int, table: pa.Table, rejects: list[dict],
               shards: int) -> BuildResult:
    cols = table.select(["split", "patient_id", "video_key", "frame_index", "num_frames"]).to_pandas()
    return BuildResult(out_dir, rows, table.num_rows, len(rejects), shards,
                       splits=split_counts(cols), reject_reasons=count_reasons(rejects),
                       single_frame_videos=single_frame_videos(cols))


def _result_from_manifest(out: Path, manifest: dict) -> BuildResult:
    c = manifest["counts"]
    return BuildResult(str(out), c["rows"], c["frames"], c["rejects"], len(manifest["shards"]),
                       reused_shards=len(manifest["shards"]), up_to_date=True, splits=c["splits"],
                       reject_reasons=count_reasons(read_rejects(out)),
                       single_frame_videos=c["single_frame_videos"])
