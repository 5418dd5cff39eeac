"""What every importer shares: writing frames, masks, frames.csv and import_rejects.csv.

An import folder holds::

    frames/<video_key>/<frame:06d>.png   8-bit grayscale frame (cropped to the sector if asked)
    masks/<video_key>/<frame:06d>.png    0/255 head mask, where the source has one
    frames.csv                           the frames CSV contract (preprocessing.format); last
    import_rejects.csv                   source, item, reason: every input that did not make it
    .import/                             the resume state of an unfinished import (journal.py)

Each input file is one transaction: an importer's per-file function writes it into an
:class:`ItemWriter` (in a worker process, under the input's own staging folder), and
:class:`ImportWriter` commits it in input order: it lands whole in frames.csv, or not at all and
in import_rejects.csv with a reason that names it. One bad file never stops the import, and the
output is the same bytes for any number of workers (``parallel.run_items``). An input kept
although it is incomplete (a truncated video with ``--keep-truncated``) is listed in
``ImportResult.truncated`` (the summary counts it) and its rows get ``truncated=true``.
The file is not ``rejects.csv`` (the build's), so a build into the same folder keeps both.
``with ImportWriter(...)`` holds the folder's writer lock (``preprocessing.lock``) throughout; an
import killed part-way resumes when rerun with the same inputs and options.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.format import SonostreamError
from preprocessing.imaging import encode_import_png
from preprocessing.importers.journal import ImportState
from preprocessing.lock import folder_lock

FRAMES_CSV = "frames.csv"
REJECTS_CSV = "import_rejects.csv"  # not the build's rejects.csv: both can share a folder
REJECT_COLUMNS = ("source", "item", "reason")
CROP_COLUMNS = ("crop_x0", "crop_y0", "crop_x1", "crop_y1", "crop_method")


class ImportProblem(SonostreamError):
    """One input cannot be imported; the message says why (it lands in import_rejects.csv)."""


@dataclass
class ImportResult:
    out_dir: str
    csv_path: str
    inputs: int  # files (or HC18 images) looked at
    frames: int
    videos: int
    patients: int
    rejects: list[dict] = field(default_factory=list)
    crop_methods: dict = field(default_factory=dict)  # crop_method -> videos
    seconds: float = 0.0
    truncated: list[dict] = field(default_factory=list)  # kept although cut off: item, reason
    resumed: int = 0          # inputs an interrupted run had committed (not read again)
    resumed_frames: int = 0   # their frames

    def summary(self) -> str:
        read = self.frames - self.resumed_frames
        rate = read / self.seconds if self.seconds else 0.0
        text = (f"imported {self.frames} frames of {self.videos} videos ({self.patients} patients) "
                f"from {self.inputs} inputs in {self.seconds:.1f}s ({rate:.0f} frames/s); "
                f"{len(self.rejects)} rejected")
        if self.resumed:
            text += (f"; {self.resumed} inputs ({self.resumed_frames} frames) kept from an "
                     "interrupted run")
        if self.truncated:
            text += f"; {len(self.truncated)} truncated, kept (--keep-truncated)"
        if self.crop_methods:
            text += "; sector found by " + ", ".join(f"{m}: {n}" for m, n in
                                                      sorted(self.crop_methods.items()))
        return text + f"\nframes CSV: {self.csv_path}"


def path_hash(path: str) -> str:
    return hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12]


def crop_columns(sector) -> dict:
    x0, y0, x1, y1 = sector.box
    return dict(zip(CROP_COLUMNS, (x0, y0, x1, y1, sector.method)))


def conflict(item: str, patient_id: str, video_name: str, holder: str) -> str:
    return (f"{item}: patient {patient_id!r} video {video_name!r} was already imported from "
            f"{holder} (a copy of the same recording?)")


class ItemWriter:
    """One input file's frames and masks (PNGs under ``stage``, at their final relative paths)
    and CSV rows; what an importer's per-file function ``fn(writer, ...)`` writes into."""

    def __init__(self, stage: Path, source: str):
        self.stage = stage
        self.source = source
        self.rows: list[dict] = []
        self.claims: list[list[str]] = []   # [patient, video, item] in the order claimed
        self.flags: list[dict] = []
        self.written: list[str] = []
        self._folders: set[Path] = set()

    def flag_truncated(self, item: str, reason: str) -> None:
        """The input is kept although cut off: its rows so far get ``truncated=true`` and, once
        it lands, it is listed in ``ImportResult.truncated``."""
        for row in self.rows:
            row["truncated"] = "true"
        self.flags.append({"source": self.source, "item": str(item), "reason": reason})

    def start_video(self, patient_id: str, video_name: str, item: str) -> str:
        """Claims (patient, video) for ``item``; a second claim is an ImportProblem (one by an
        earlier input is found when this one is committed: ``ImportWriter.commit``)."""
        for p, v, holder in self.claims:
            if (p, v) == (patient_id, video_name):
                raise ImportProblem(conflict(item, patient_id, video_name, holder))
        self.claims.append([patient_id, video_name, item])
        return fmt.video_key(patient_id, video_name)

    def add_frame(self, patient_id: str, video_name: str, frame_id: int, image: np.ndarray,
                  mask: np.ndarray | None = None, **columns) -> None:
        """Write ``image`` ((H, W) uint8) and its optional 0/255 mask; queue the CSV row."""
        rel = f"{fmt.video_key(patient_id, video_name)}/{frame_id:06d}.png"
        row = {"frame_path": f"frames/{rel}", "patient_id": patient_id, "video_name": video_name,
               "frame_id": str(frame_id)}
        self._write(row["frame_path"], image)
        if mask is not None:
            row[fmt.MASK_COLUMN] = f"masks/{rel}"
            self._write(row[fmt.MASK_COLUMN], mask)
        row.update(columns)
        self.rows.append(row)

    def _write(self, rel: str, image: np.ndarray) -> None:
        """A plain write and fsync, no temporary file and rename per frame: the staging folder
        is what is atomic (an input whose reading fails or is cut off has its whole folder
        removed, and only a finished one is moved into place and journalled), so a per-file
        rename bought nothing. Measured on 2,400 JPEG DICOM frames, 1 worker, 3 alternating runs:
        20.2 s -> 17.7 s, system time 4.9 s -> 2.8-3.6 s (BENCHMARKS.md, Import)."""
        path = self.stage / rel
        if path.parent not in self._folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._folders.add(path.parent)
        atomic.write_staged(path, encode_import_png(image))
        self.written.append(rel)


class ImportWriter:
    """Commits inputs in order (their files into place, a journal line), collects the rejects,
    and publishes both CSVs at the end.

    Use as ``with ImportWriter(out, source, overwrite, fingerprint) as w: ...; return
    w.finish()``: entering takes the folder's writer lock and clears an earlier import, or
    resumes an interrupted one of the same ``fingerprint`` (``journal.fingerprint``); leaving
    releases the lock. ``parallel.run_items`` feeds it."""

    def __init__(self, out_dir: str, source: str, overwrite: bool = False,
                 fingerprint: dict | None = None):
        self.out = Path(out_dir)
        self.source = source
        self.overwrite = overwrite
        self.fingerprint = {"source": source} if fingerprint is None else fingerprint
        self.state = ImportState(self.out)
        self._lock = contextlib.ExitStack()
        self.rejects: list[dict] = []
        self.truncated: list[dict] = []
        self.inputs = 0        # inputs committed (kept or rejected) so far: the next one's index
        self.frames = 0
        self.videos: dict[tuple[str, str], str] = {}  # (patient, video) -> item that made it
        self._columns: dict[str, None] = {}           # CSV columns in order of first use
        self._crops: dict[tuple[str, str], str] = {}  # (patient, video) -> crop_method
        self._patients: set[str] = set()
        self._replay = None
        self._resumed_frames = 0
        self._t0 = time.perf_counter()

    def __enter__(self) -> "ImportWriter":
        self._lock.enter_context(folder_lock(self.out, f"import {self.source}"))
        self._lock.callback(self.state.close)
        try:
            self._prepare()
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._replay is not None:
            self._replay.close()
        self._lock.close()

    def _prepare(self) -> None:
        """Clear ``out`` for a new import, or resume the interrupted one it holds."""
        leftovers = [n for n in (FRAMES_CSV, "frames", "masks") if (self.out / n).exists()]
        if not self.overwrite and FRAMES_CSV in leftovers:   # a finished import
            raise self._taken(leftovers)
        if not self.overwrite and self.state.exists():
            if self.state.stored_fingerprint() != self.fingerprint:
                raise SonostreamError(
                    f"{self.out} holds an unfinished import of other inputs or options; rerun it "
                    "with the same inputs and options to continue it, or pass --overwrite to "
                    "discard it and start over (or choose another --out)")
            (self.out / REJECTS_CSV).unlink(missing_ok=True)
            atomic.remove_leftovers(self.out)
            self.state.resume()
            self._replay = self.state.records()
            return
        if leftovers and not self.overwrite:   # frames of an import without a resume state
            raise self._taken(leftovers)
        for name in (FRAMES_CSV, REJECTS_CSV):
            (self.out / name).unlink(missing_ok=True)
        for name in ("frames", "masks"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        atomic.remove_leftovers(self.out)
        self.state.start(self.fingerprint)

    def _taken(self, leftovers: list[str]) -> SonostreamError:
        return SonostreamError(f"{self.out} already holds {', '.join(leftovers)} (an earlier "
                               "import?); pass --overwrite to replace them or choose another "
                               "--out")

    def reject(self, item: str, reason: str) -> None:
        """An input that is not one (a missing path, a CSV row without its image): not journaled,
        as every run finds it again."""
        self.rejects.append({"source": self.source, "item": str(item), "reason": reason})

    # -- committing inputs, in input order -----------------------------------------------------
    def committed(self) -> bool:
        """Whether the next input was committed by an interrupted run (then :meth:`replay` it)."""
        return self.inputs < self.state.committed

    def replay(self, name: str) -> int:
        """Take the next input from the journal instead of reading it; returns its frames."""
        record = next(self._replay)
        if record["item"] != name:
            raise SonostreamError(
                f"{self.out}/{self.state.dir.name}: the journal of the interrupted import lists "
                f"{record['item']} where this run has {name}; pass --overwrite to start over")
        frames = self._account(record)
        self._resumed_frames += frames
        return frames

    def commit(self, name: str, outcome) -> int:
        """The next input, read into ``outcome`` (``parallel.Outcome``): kept or rejected as a
        sequential import would; returns its frames."""
        try:
            return self._commit(name, outcome)
        except OSError as e:
            if atomic.out_of_space(e):
                raise self._no_space() from None
            raise

    def _commit(self, name: str, outcome) -> int:
        stage = self.state.stage(self.inputs)
        reason = outcome.error
        for patient, video, item in outcome.claims:   # claimed before any error: checked first
            if (patient, video) in self.videos:
                reason = conflict(item, patient, video, self.videos[(patient, video)])
                break
        else:
            if outcome.no_space:
                raise self._no_space()
        if reason is not None:
            record = {"item": name, "reject": reason if name in reason else f"{name}: {reason}"}
        else:
            record = {"item": name, "rows": outcome.rows, "claims": outcome.claims,
                      "flags": outcome.flags}
            self.state.move_into_place(self.inputs, stage, outcome.written)
        self.state.append(record)
        shutil.rmtree(stage, ignore_errors=True)
        return self._account(record)

    def _account(self, record: dict) -> int:
        self.inputs += 1
        if "reject" in record:
            self.reject(record["item"], record["reject"])
            return 0
        for patient, video, _ in record["claims"]:
            self.videos[(patient, video)] = record["item"]
        self.truncated += record["flags"]
        for row in record["rows"]:
            self._columns.update(dict.fromkeys(row))
            self._crops[(row["patient_id"], row["video_name"])] = row.get("crop_method")
            self._patients.add(row["patient_id"])
        self.frames += len(record["rows"])
        return len(record["rows"])

    def _no_space(self) -> SonostreamError:
        """A full disk: keep the inputs committed so far (a rerun continues after them), remove
        the rest, and say so."""
        self.state.discard_uncommitted(self.inputs)
        atomic.remove_leftovers(self.out)
        kept = (f"the inputs committed so far ({self.inputs}) are kept" if self.inputs else
                "nothing was kept")
        return SonostreamError(atomic.no_space_message(
            self.out, "the imported frames", fix=f"{kept}. Free space there and rerun the same "
            "command to continue, or import into another --out"))

    def finish(self) -> ImportResult:
        """Write import_rejects.csv, then frames.csv (last: a folder with it is complete), then
        remove the resume state."""
        try:
            return self._finish()
        except OSError as e:
            if atomic.out_of_space(e):
                raise self._no_space() from None
            raise

    def _finish(self) -> ImportResult:
        atomic.write_text(self.out / REJECTS_CSV, fmt.csv_text(REJECT_COLUMNS, self.rejects))
        first = [*fmt.REQUIRED_COLUMNS, fmt.MASK_COLUMN, *fmt.LABEL_COLUMNS]
        columns = [c for c in first if c in self._columns or c in fmt.REQUIRED_COLUMNS]
        columns += [c for c in self._columns if c not in first]
        csv_path = self.out / FRAMES_CSV
        with atomic.atomic_open(csv_path, "w") as f:   # rows streamed from the journal
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            for record in self.state.records():
                w.writerows([row.get(c, "") for c in columns] for row in record.get("rows", ()))
        self.state.remove()
        methods = Counter(m for m in self._crops.values() if m)
        return ImportResult(str(self.out), str(csv_path), self.inputs, self.frames,
                            len(self._crops), len(self._patients), self.rejects, dict(methods),
                            time.perf_counter() - self._t0, self.truncated, self.state.committed,
                            self._resumed_frames)
