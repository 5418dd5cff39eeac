"""A build split into parts that run at once, on one machine or across a Slurm job array.

    sonostream build --csv F --out D --plan --parts N     read and check the CSV once; write the plan
    sonostream build --out D --part I --parts N           build part I (any order, all at once)
    sonostream build --out D --merge                      check every part; write the index

The plan is the one-machine build's plan (``frames_csv.plan_build``: the same rejects, splits
and video order) with each video given to one of N parts, largest videos first, each into the
part with the fewest frames so far (ties: the lower part), so parts take about the same time.
It lives in ``D/.work/plan/``: ``part-III.json`` (the rows of part III's videos, in plan order)
and ``plan.json``, written last (the options, the CSV's sha256, per part its videos, frames and
the sha256 of its rows file, and the rejects found at planning). The plan's fingerprint is the
sha256 of ``plan.json``.

A part writes its shards into ``D/shards/`` under names of its own (``{split}-pIII-NNNNNN.tar``,
``fmt.shard_name``) and its state into ``D/.work/part-III/``: ``build.json`` (the plan it
follows), the per-shard markers of ``shards.ShardWriter`` (so a killed part resumes after its
last finished shard, as ``build`` does) and ``done.json`` (its shards and rejects), written
last. Each part holds the lock of its own folder; plan and merge hold the dataset's and every
part's.

The merge reads the parts the plan names, never a folder listing: it checks each is finished,
from this plan, with its shards present at their recorded sizes, and refuses (naming every part
that is not, and the command that finishes it) before writing anything. It then writes
rejects.csv, the wids lists, manifest.json and, last, index.parquet as ``build`` does, shards in
split order, then part, then number. The dataset holds the frames, splits, rejects and per-video
frame order of a one-machine build of the same CSV and options; only the shard names and the
frames' places in them differ. The same CSV, options and N give the same bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from . import atomic
from . import format as fmt
from .build import (BUILD_STATE, PLAN_DIR, BuildError, BuildOptions, BuildResult, _finish,
                    _result_from_manifest, _sha256, clear_out_dir, option_record, write_shards)
from .dataset import read_manifest
from .frames_csv import FrameRow, Plan, Video, plan_build
from .lock import folder_lock
from .shards import PARTS, load_finished

PLAN_FILE = "plan.json"
DONE_FILE = "done.json"


@dataclass
class PlanResult:
    out_dir: str
    rows: int
    videos: int
    rejects: int
    part_frames: list[int]        # CSV rows each part builds
    unchanged: bool = False       # the same plan was already there (its parts keep their work)
    up_to_date: bool = False      # the dataset is already built (merged) from this plan
    warnings: list = field(default_factory=list)


def plan_dir(out: Path) -> Path:
    return Path(out) / fmt.WORK_DIR / PLAN_DIR


def part_dir(out: Path, part: int) -> Path:
    return Path(out) / fmt.WORK_DIR / f"part-{part:03d}"


def part_command(out, part: int, parts: int) -> str:
    return f"sonostream build --out {out} --part {part} --parts {parts}"


def assign_parts(videos: list[Video], parts: int) -> list[list[int]]:
    """Positions of the videos of each part, in plan order: largest video first into the part
    with the fewest frames (ties: the earlier video, the lower part)."""
    lightest = [(0, p) for p in range(parts)]
    groups: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(videos)), key=lambda i: (-len(videos[i].frames), i)):
        frames, p = heapq.heappop(lightest)
        groups[p].append(i)
        heapq.heappush(lightest, (frames + len(videos[i].frames), p))
    return [sorted(g) for g in groups]


def plan_parts(csv_path: str, out_dir: str, opts: BuildOptions = BuildOptions(), parts: int = 2,
               overwrite: bool = False) -> PlanResult:
    """``build --plan``: reads the CSV once and writes the plan of ``parts`` parts into
    ``out_dir``. The same plan already there is kept (its parts keep their progress)."""
    if parts < 1:
        raise BuildError(f"--parts must be at least 1, got {parts}")
    out = Path(out_dir)
    plan = plan_build(csv_path, opts.val_fraction, opts.test_fraction, opts.seed)
    fingerprint = {"format_version": fmt.FORMAT_VERSION, "csv_sha256": _sha256(csv_path),
                   "options": option_record(opts), "parts": parts}
    groups = assign_parts(plan.videos, parts)
    rows = [json.dumps({"part": p, "videos": [asdict(plan.videos[i]) for i in g]},
                       sort_keys=True, separators=(",", ":")) + "\n" for p, g in enumerate(groups)]
    doc = {"fingerprint": fingerprint, "csv": str(csv_path), "num_rows": plan.num_rows,
           "extra_columns": plan.extra_columns, "rejects": plan.rejects,
           "parts": [{"part": p, "frames": sum(len(plan.videos[i].frames) for i in g),
                      "videos": [plan.videos[i].key for i in g], "rows_file": _rows_file(p),
                      "rows_sha256": hashlib.sha256(text.encode()).hexdigest()}
                     for p, (g, text) in enumerate(zip(groups, rows))]}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    result = PlanResult(str(out), plan.num_rows, len(plan.videos), len(plan.rejects),
                        [e["frames"] for e in doc["parts"]], warnings=plan.warnings)
    with folder_lock(out, "build --plan"), _part_locks(out, "build --plan"):
        atomic.remove_leftovers(out)
        if overwrite:
            clear_out_dir(out)
        if (out / fmt.INDEX_FILE).exists():
            if _built_from(out, fingerprint):
                result.up_to_date = True
                return result
            raise BuildError(f"{out} already holds a dataset built from other inputs or options; "
                             "pass --overwrite to replace it, or choose another --out")
        path = plan_dir(out) / PLAN_FILE
        if path.exists():
            if path.read_text(encoding="utf-8") == text:
                result.unchanged = True
                return result
            raise BuildError(f"{out} holds a plan of another CSV, other options or another "
                             f"--parts ({path}); rerun with the same ones to keep it and its "
                             "parts' work, or pass --overwrite to discard it and every part built "
                             "from it")
        if (out / fmt.WORK_DIR / BUILD_STATE).exists() or (out / fmt.SHARDS_DIR).exists():
            raise BuildError(f"{out} holds shards or an unfinished one-machine build; finish it "
                             "with `sonostream build` (no --plan), or pass --overwrite to discard "
                             "it, or choose another --out")
        for p, part_rows in enumerate(rows):
            atomic.write_text(plan_dir(out) / _rows_file(p), part_rows)
        atomic.write_text(path, text)   # last: a plan without it is unwritten
    return result


def build_part(out_dir: str, part: int, parts: int, workers: int = 1, overwrite: bool = False,
               progress: bool = True) -> BuildResult:
    """``build --part I --parts N``: builds part ``part`` of the plan in ``out_dir``, resuming
    after its finished shards; a part already finished returns at once (``up_to_date``)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    doc, sha = _read_plan(out)
    if doc is None:
        return _merged_or_unplanned(out)
    n = len(doc["parts"])
    if parts != n:
        raise BuildError(f"the plan in {out} splits the build into {n} parts, not {parts}: run "
                         f"--part 0..{n - 1} with --parts {n}, or write another plan with --plan "
                         f"--parts {parts} --overwrite")
    if not 0 <= part < n:
        raise BuildError(f"--part {part} is not a part of the plan in {out}: its parts are "
                         f"0..{n - 1}")
    pdir = part_dir(out, part)
    with folder_lock(pdir, f"build part {part}"):
        if _read_plan(out)[1] != sha:   # merged or replanned while we waited for the lock
            return _merged_or_unplanned(out)
        if overwrite:
            _clear_part(out, part)
        state, want = pdir / BUILD_STATE, {"part": part, "plan_sha256": sha}
        if state.exists() and _load_json(state) != want:
            raise BuildError(f"part {part} in {pdir} was started from another plan than the one "
                             f"in {plan_dir(out) / PLAN_FILE}; pass --overwrite "
                             f"(`{part_command(out, part, n)} --overwrite`) to discard that part's "
                             "shards and build it from this plan")
        if (pdir / DONE_FILE).exists():
            done = _load_json(pdir / DONE_FILE)
            return BuildResult(str(out), done["rows"], done["frames"], len(done["rejects"]),
                               len(done["shards"]), len(done["shards"]), up_to_date=True)
        atomic.write_json(state, want)
        videos = _part_videos(out, doc, part)
        rows = sum(len(v.frames) for v in videos)
        opts = BuildOptions(**doc["fingerprint"]["options"])
        markers = pdir / PARTS
        try:
            reused, leftover = write_shards(out, videos, rows, doc["extra_columns"], opts,
                                            workers, progress, part, markers)
        except Exception as e:
            if not atomic.out_of_space(e, out):
                raise
            raise BuildError(atomic.no_space_message(
                out, f"the shards of part {part}", fix="the unfinished shard was removed. Free "
                "space there and rerun the same command (the part's finished shards are kept)")
            ) from None
        records, tables, rejects = load_finished(out, part, markers)
        rejects = sorted(rejects + leftover, key=lambda r: r["csv_line"])
        frames = sum(t.num_rows for t in tables)
        if frames + len(rejects) != rows:
            raise BuildError(f"internal error: part {part} has {rows} CSV rows but {frames} "
                             f"indexed + {len(rejects)} rejected; please report this with the CSV")
        atomic.write_json(pdir / DONE_FILE, {"part": part, "plan_sha256": sha, "rows": rows,
                                             "frames": frames, "shards": records,
                                             "rejects": rejects})   # last: the part is finished
    return BuildResult(str(out), rows, frames, len(rejects), len(records), reused,
                       seconds=time.perf_counter() - t0)


def merge(out_dir: str) -> BuildResult:
    """``build --merge``: checks every part of the plan in ``out_dir`` and writes the dataset's
    index, manifest, rejects and wids lists; refuses, writing nothing, while a part is not
    finished."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    with folder_lock(out, "build --merge"):
        doc, sha = _read_plan(out)
        if doc is None:
            return _merged_or_unplanned(out)
        fingerprint, n = doc["fingerprint"], len(doc["parts"])
        if (out / fmt.INDEX_FILE).exists():
            if not _built_from(out, fingerprint):
                raise BuildError(f"{out} already holds a dataset built from other inputs or "
                                 "options; choose another --out, or replan with --overwrite")
            atomic.remove_leftovers(out)   # an earlier merge stopped after writing the index
            with _part_locks(out, "build --merge"):
                shutil.rmtree(out / fmt.WORK_DIR, ignore_errors=True)
            return _result_from_manifest(out, read_manifest(out))
        with _part_locks(out, "build --merge"):
            done, problems = [], []
            for p in range(n):
                info, problem = _check_part(out, sha, p, n)
                done.append(info)
                if problem:
                    problems.append(problem)
            if problems:
                raise BuildError(
                    f"cannot merge {out}: {len(problems)} of its {n} parts are not ready, so "
                    "nothing was written:\n  " + "\n  ".join(problems) + "\nthen rerun `sonostream "
                    f"build --out {out} --merge` (on Slurm: rerun launch/slurm/build_submit.sh "
                    "with the same settings: it resubmits only the unfinished parts)")
            records, tables, rejects = [], [], []
            for split in fmt.SPLITS:
                for p, info in enumerate(done):
                    for rec in info["shards"]:
                        if rec["split"] == split:
                            records.append(rec)
                            tables.append(pq.read_table(part_dir(out, p) / PARTS
                                                        / f"{rec['name']}.parquet"))
            for info in done:
                rejects += info["rejects"]
            plan = Plan(doc["csv"], doc["num_rows"], [], doc["rejects"], doc["extra_columns"])
            opts = BuildOptions(**fingerprint["options"])
            atomic.remove_leftovers(out)
            result = _finish(out, plan, opts, fingerprint, rejects, (records, tables, []))
    result.seconds = time.perf_counter() - t0
    return result


# -- helpers ----------------------------------------------------------------------------------
def _rows_file(part: int) -> str:
    return f"part-{part:03d}.json"


def _load_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except ValueError:
        raise BuildError(f"{path} is not readable JSON (damaged or edited); rewrite it: for the "
                         "plan `--plan --overwrite`, for a part `--part I --parts N --overwrite`"
                         ) from None


def _read_plan(out: Path) -> tuple[dict | None, str | None]:
    path = plan_dir(out) / PLAN_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    doc = _load_json(path)
    return doc, hashlib.sha256(data).hexdigest()


def _merged_or_unplanned(out: Path) -> BuildResult:
    if (out / fmt.INDEX_FILE).exists() and "parts" in read_manifest(out).get("fingerprint", {}):
        return _result_from_manifest(out, read_manifest(out))
    raise BuildError(f"{out} has no build plan ({plan_dir(out) / PLAN_FILE} is missing); write it "
                     f"first: `sonostream build --csv CSV --out {out} --plan --parts N`")


def _built_from(out: Path, fingerprint: dict) -> bool:
    fix = "pass --overwrite to rebuild the dataset, or choose another --out"
    return read_manifest(out, fix=fix).get("fingerprint") == fingerprint


@contextlib.contextmanager
def _part_locks(out: Path, job: str):
    """Holds the lock of every part folder there is: no part runs while we plan or merge."""
    with contextlib.ExitStack() as stack:
        work = Path(out) / fmt.WORK_DIR
        for pdir in sorted(work.glob("part-*")) if work.is_dir() else []:
            if pdir.is_dir():
                stack.enter_context(folder_lock(pdir, job))
        yield


def _part_videos(out: Path, doc: dict, part: int) -> list[Video]:
    entry = doc["parts"][part]
    path = plan_dir(out) / entry["rows_file"]
    data = path.read_bytes() if path.is_file() else b""
    if hashlib.sha256(data).hexdigest() != entry["rows_sha256"]:
        raise BuildError(f"{path} is missing or not the one {PLAN_FILE} lists (damaged or from "
                         "another plan); rewrite the plan with `sonostream build --csv CSV --out "
                         f"{out} --plan --parts {len(doc['parts'])} --overwrite`")
    return [Video(**{**v, "frames": [FrameRow(**f) for f in v["frames"]]})
            for v in json.loads(data)["videos"]]


def _clear_part(out: Path, part: int) -> None:
    """What ``--part I --overwrite`` removes: the part's shards and state (not its lock)."""
    mine = tuple(fmt.shard_prefix(s, part) for s in fmt.SPLITS)
    sdir = Path(out) / fmt.SHARDS_DIR
    for p in sdir.iterdir() if sdir.is_dir() else []:
        if p.name.lstrip(".").startswith(mine):
            p.unlink(missing_ok=True)
    pdir = part_dir(out, part)
    for p in pdir.iterdir():
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name != ".sonostream.lock":
            p.unlink(missing_ok=True)


def _check_part(out: Path, sha: str, part: int, parts: int) -> tuple[dict | None, str | None]:
    """(the part's done.json, None) when it is finished and whole; else (None, what is wrong
    and the command that fixes it)."""
    pdir, cmd = part_dir(out, part), part_command(out, part, parts)
    if not (pdir / BUILD_STATE).exists():
        return None, f"part {part} was never built: run `{cmd}`"
    state = _load_json(pdir / BUILD_STATE)
    done = _load_json(pdir / DONE_FILE) if (pdir / DONE_FILE).exists() else None
    if state.get("plan_sha256") != sha or (done and done.get("plan_sha256") != sha):
        return None, (f"part {part} was built from another plan: rebuild it with "
                      f"`{cmd} --overwrite`")
    if done is None:
        finished = len(list((pdir / PARTS).glob("*.json"))) if (pdir / PARTS).is_dir() else 0
        return None, (f"part {part} is unfinished ({finished} of its shards done, no {DONE_FILE}; "
                      f"it was stopped or is still queued): run `{cmd}`, which continues after "
                      "its finished shards")
    sdir = out / fmt.SHARDS_DIR
    for rec in done["shards"]:
        tar, idx = sdir / rec["name"], sdir / rec["dali_index"]["name"]
        rows = pdir / PARTS / f"{rec['name']}.parquet"
        whole = (tar.is_file() and tar.stat().st_size == rec["bytes"] and idx.is_file()
                 and idx.stat().st_size == rec["dali_index"]["bytes"] and rows.is_file()
                 and pq.read_metadata(rows).num_rows == rec["frames"])
        if not whole:
            return None, (f"part {part}: shard {rec['name']} (or its index or rows) is missing or "
                          f"not the size its part recorded: rebuild the part with "
                          f"`{cmd} --overwrite`")
    return done, None
