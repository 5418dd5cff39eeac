"""Reading an importer's inputs in worker processes; committing them in input order.

``run_items(writer, tasks, workers)`` takes ``(name, fn, args)`` tasks, one per input file:
``fn(item_writer, *args)`` is the importer's per-file function (module-level, its arguments
picklable). Each runs in a worker (with ``workers`` 1: in this process, the same code), writing
the input's PNGs under its own staging folder (``journal.ImportState.stage``), never under the
final paths, so two inputs claiming the same (patient, video) never touch each other's files.
The main process takes the outcomes in input order and hands each to ``ImportWriter.commit``,
which decides keep-or-reject exactly as a one-process import would (an earlier claim wins),
moves a kept input's files into place and journals it: frames.csv, import_rejects.csv and every
PNG are the same bytes for any ``workers``. At most ``2 * workers`` inputs are in flight (their
pixels are on disk, only their CSV rows in memory). Inputs an interrupted run committed are
replayed from the journal, not read again. Progress is counted in frames.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.cpus import exit_with_parent
from preprocessing.format import SonostreamError
from preprocessing.importers.common import ImportWriter, ItemWriter
from preprocessing.progress import progress_bar

IN_FLIGHT = 2   # inputs per worker submitted ahead of the one being committed


@dataclass
class Outcome:
    """What reading one input gave: its rows (CSV text cells), (patient, video, item) claims,
    truncation flags and staged files, or why it failed (``error``; ``no_space``: a full disk)."""
    rows: list[dict] = field(default_factory=list)
    claims: list[list[str]] = field(default_factory=list)
    flags: list[dict] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    error: str | None = None
    no_space: bool = False


def check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise SonostreamError(f"--workers must be an integer >= 1 (1 reads the inputs in this "
                              f"process), got {workers!r}")
    return workers


def run_item(stage: str, source: str, fn, args: tuple) -> Outcome:
    """Read one input with ``fn(ItemWriter, *args)`` (in a worker); never raises for a bad
    file: a SonostreamError says why (ImportProblem, MediaError, ImageError), anything else
    is an unexpected error, a full disk is flagged."""
    writer = ItemWriter(Path(stage), source)
    out = Outcome(claims=writer.claims)
    try:
        fn(writer, *args)
    except SonostreamError as e:
        out.error = str(e)
    except Exception as e:  # a broken file must not stop the import
        if atomic.out_of_space(e):   # ...but a full disk stops it: every next file would fail
            out.no_space = True
        else:
            out.error = f"unexpected error ({type(e).__name__}: {e})"
    if out.error is not None or out.no_space:
        shutil.rmtree(stage, ignore_errors=True)
        return out
    out.rows = [{k: fmt.csv_cell(v) for k, v in row.items()} for row in writer.rows]
    out.flags, out.written = writer.flags, writer.written
    return out


def run_items(writer: ImportWriter, tasks: list[tuple], workers: int = 1, progress: bool = True,
              desc: str | None = None) -> None:
    """Read and commit ``tasks`` (``(name, fn, args)``, in input order); see the module text."""
    bar = _FrameBar(len(tasks), desc or writer.source, progress)
    todo = []
    for name, fn, args in tasks:
        if writer.committed():   # an interrupted run's: a prefix of the inputs
            bar.done(writer.replay(name))
        else:
            todo.append((name, fn, args))
    try:
        for name, outcome in _outcomes(writer, todo, workers):
            bar.done(writer.commit(name, outcome))
    finally:
        bar.close()


def _outcomes(writer: ImportWriter, todo: list, workers: int) -> Iterator[tuple[str, Outcome]]:
    first = writer.inputs   # the index (staging folder) of todo[0]
    stages = [str(writer.state.stage(first + i)) for i in range(len(todo))]
    workers = min(workers, len(todo))
    if workers <= 1:
        for (name, fn, args), stage in zip(todo, stages):
            yield name, run_item(stage, writer.source, fn, args)
        return
    # As build does: workers from a forkserver (never a fork of this process, whose threads
    # could deadlock a child), each ending when this process does, even after a kill -9.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(sorted({fn.__module__ for _, fn, _ in todo}
                                          | {__name__, "preprocessing.cpus"}))
    else:
        ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                               initargs=(os.getpid(),))
    try:
        jobs = ((name, pool.submit(run_item, stage, writer.source, fn, args))
                for (name, fn, args), stage in zip(todo, stages))
        queue = collections.deque(itertools.islice(jobs, IN_FLIGHT * workers))
        while queue:
            name, fut = queue[0]
            try:
                queue.extend(itertools.islice(jobs, 1))   # keep the window full
                outcome = fut.result()
            except BrokenProcessPool:   # a worker was killed (SIGKILL, the OOM killer, a crash)
                raise SonostreamError(_worker_died(writer, list(queue), workers)) from None
            queue.popleft()
            yield name, outcome
    finally:   # on an error: wait only for the inputs being read, not for the queued ones
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_died(writer: ImportWriter, queue: list, workers: int) -> str:
    """The message for a dead worker: the inputs it may have been reading (workers take tasks in
    order, so the first ``workers`` unfinished ones were running), and the fix."""
    concurrent.futures.wait([fut for _, fut in queue], timeout=10)  # a broken pool fails the rest
    unfinished = [name for name, fut in queue if not fut.done() or fut.exception() is not None]
    return (f"an import worker process died, most likely killed by the kernel's out-of-memory "
            f"killer (`dmesg | grep -i -e oom -e killed` shows it), while reading one of: "
            f"{'; '.join(unfinished[:workers])}. The inputs committed so far ({writer.inputs}) "
            f"are kept: rerun the same command with fewer --workers (now {workers}) to continue "
            f"after them")


class _FrameBar:
    """Progress in frames. The total is not known before every input is read (a DICOM header or
    a video container can be wrong), so it is estimated from the frames per input so far; the
    bar starts with the first frames and the postfix counts inputs."""

    def __init__(self, inputs: int, desc: str, enabled: bool):
        self.inputs, self.desc, self.enabled = inputs, desc, enabled
        self.done_inputs = self.frames = 0
        self.bar = None

    def done(self, frames: int) -> None:
        self.done_inputs += 1
        if not self.enabled or frames == 0:
            return
        self.frames += frames
        estimate = max(self.frames, round(self.frames * self.inputs / self.done_inputs))
        if self.bar is None:
            self.bar = progress_bar(estimate, self.desc, "frame", initial=self.frames - frames)
        else:
            set_total(self.bar, estimate)
        self.bar.set_postfix(inputs=f"{self.done_inputs}/{self.inputs}")
        self.bar.update(frames)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def set_total(bar, total: int) -> None:
    """A new total for a tqdm bar or a ``LineProgress``."""
    if hasattr(bar, "set_total"):
        bar.set_total(total)
    else:
        bar.total = total
