"""What every importer shares: writing frames, masks, frames.csv and import_rejects.csv.

An import folder holds::

    frames/<video_key>/<frame:06d>.png   8-bit grayscale frame (cropped to the sector if asked)
    masks/<video_key>/<frame:06d>.png    0/255 head mask, where the source has one
    frames.csv                           the frames CSV contract (preprocessing.format); last
    import_rejects.csv                   source, item, reason: every input that did not make it

Each input file is one transaction (``ImportWriter.item``): it lands whole in frames.csv, or not at
all and in import_rejects.csv with a reason that names it. One bad file never stops the import.
An input kept although it is incomplete (a truncated video with ``--keep-truncated``) is listed
in ``ImportResult.truncated`` (the summary counts it) and its rows get ``truncated=true``.
The file is not ``rejects.csv`` (the build's), so a build into the same folder keeps both.
``with ImportWriter(...)`` holds the folder's writer lock (``preprocessing.lock``) throughout.
"""
from __future__ import annotations

import contextlib
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

    def summary(self) -> str:
        rate = self.frames / self.seconds if self.seconds else 0.0
        text = (f"imported {self.frames} frames of {self.videos} videos ({self.patients} patients) "
                f"from {self.inputs} inputs in {self.seconds:.1f}s ({rate:.0f} frames/s); "
                f"{len(self.rejects)} rejected")
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


class ImportWriter:
    """Writes frames and masks as PNGs, collects CSV rows, and publishes both CSVs at the end.

    Use as ``with ImportWriter(out, source, overwrite) as w: ...; return w.finish()``: entering
    takes the folder's writer lock and clears an earlier import; leaving releases the lock."""

    def __init__(self, out_dir: str, source: str, overwrite: bool = False):
        self.out = Path(out_dir)
        self.source = source
        self.overwrite = overwrite
        self._lock = contextlib.ExitStack()
        self.rows: list[dict] = []
        self.rejects: list[dict] = []
        self.truncated: list[dict] = []
        self.inputs = 0
        self.videos: dict[tuple[str, str], str] = {}  # (patient, video) -> item that made it
        self._pending: list[dict] | None = None
        self._flags: list[dict] = []
        self._written: list[Path] = []
        self._t0 = time.perf_counter()

    def __enter__(self) -> "ImportWriter":
        self._lock.enter_context(folder_lock(self.out, f"import {self.source}"))
        try:
            self._clear()
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    def _clear(self) -> None:
        leftovers = [n for n in (FRAMES_CSV, "frames", "masks") if (self.out / n).exists()]
        if leftovers and not self.overwrite:
            raise SonostreamError(f"{self.out} already holds {', '.join(leftovers)} (an earlier "
                                  "import?); pass --overwrite to replace them or choose another "
                                  "--out")
        for name in (FRAMES_CSV, REJECTS_CSV):
            (self.out / name).unlink(missing_ok=True)
        for name in ("frames", "masks"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        atomic.remove_leftovers(self.out)

    def reject(self, item: str, reason: str) -> None:
        self.rejects.append({"source": self.source, "item": str(item), "reason": reason})

    @contextlib.contextmanager
    def item(self, name: str):
        """One input: its rows are kept if the block finishes, else it is rejected with the error."""
        self.inputs += 1
        self._pending, self._written, self._flags = [], [], []
        try:
            yield
        except SonostreamError as e:   # ImportProblem, MediaError, ImageError: says why
            self._discard(name, str(e))
        except Exception as e:  # a broken file must not stop the import
            if atomic.out_of_space(e):   # ...but a full disk stops it: every next file would fail
                raise self._no_space() from None
            self._discard(name, f"unexpected error ({type(e).__name__}: {e})")
        else:
            self.rows += self._pending
            self.truncated += self._flags
        finally:
            self._pending = None

    def _discard(self, name: str, reason: str) -> None:
        for path in self._written:
            path.unlink(missing_ok=True)
        for key in [k for k, v in self.videos.items() if v == name]:
            del self.videos[key]
        self.reject(name, reason if name in reason else f"{name}: {reason}")

    def flag_truncated(self, item: str, reason: str) -> None:
        """The current input is kept although cut off: its rows so far get ``truncated=true``
        and, once it lands, it is listed in ``ImportResult.truncated``."""
        if self._pending is None:
            raise RuntimeError("flag_truncated outside ImportWriter.item()")
        for row in self._pending:
            row["truncated"] = "true"
        self._flags.append({"source": self.source, "item": str(item), "reason": reason})

    def start_video(self, patient_id: str, video_name: str, item: str) -> str:
        """Claims (patient, video) for ``item``; a second claim is an ImportProblem."""
        key = (patient_id, video_name)
        if key in self.videos:
            raise ImportProblem(f"{item}: patient {patient_id!r} video {video_name!r} was already "
                                f"imported from {self.videos[key]} (a copy of the same recording?)")
        self.videos[key] = item
        return fmt.video_key(patient_id, video_name)

    def add_frame(self, patient_id: str, video_name: str, frame_id: int, image: np.ndarray,
                  mask: np.ndarray | None = None, **columns) -> None:
        """Write ``image`` ((H, W) uint8) and its optional 0/255 mask; queue the CSV row."""
        if self._pending is None:
            raise RuntimeError("add_frame outside ImportWriter.item()")
        rel = f"{fmt.video_key(patient_id, video_name)}/{frame_id:06d}.png"
        row = {"frame_path": f"frames/{rel}", "patient_id": patient_id, "video_name": video_name,
               "frame_id": str(frame_id)}
        self._write(row["frame_path"], image)
        if mask is not None:
            row[fmt.MASK_COLUMN] = f"masks/{rel}"
            self._write(row[fmt.MASK_COLUMN], mask)
        row.update(columns)
        self._pending.append(row)

    def _write(self, rel: str, image: np.ndarray) -> None:
        path = self.out / rel
        atomic.write_bytes(path, encode_import_png(image))
        self._written.append(path)

    def _no_space(self) -> SonostreamError:
        """A full disk: remove all this import wrote (an import does not resume: a rerun starts
        over), and say so."""
        for name in ("frames", "masks"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in (FRAMES_CSV, REJECTS_CSV):
            (self.out / name).unlink(missing_ok=True)
        atomic.remove_leftovers(self.out)
        return SonostreamError(atomic.no_space_message(
            self.out, "the imported frames", fix="what this import wrote was removed. Free space "
            "there or choose another --out, then rerun the import"))

    def finish(self) -> ImportResult:
        """Write import_rejects.csv, then frames.csv (last: a folder with it is complete)."""
        try:
            return self._finish()
        except OSError as e:
            if atomic.out_of_space(e):
                raise self._no_space() from None
            raise

    def _finish(self) -> ImportResult:
        atomic.write_text(self.out / REJECTS_CSV, fmt.csv_text(REJECT_COLUMNS, self.rejects))
        first = [*fmt.REQUIRED_COLUMNS, fmt.MASK_COLUMN, *fmt.LABEL_COLUMNS]
        seen = list(dict.fromkeys(k for row in self.rows for k in row))
        columns = [c for c in first if c in seen or c in fmt.REQUIRED_COLUMNS]
        columns += [c for c in seen if c not in first]
        csv_path = self.out / FRAMES_CSV
        atomic.write_text(csv_path, fmt.csv_text(columns, self.rows))
        videos = {(r["patient_id"], r["video_name"]): r.get("crop_method") for r in self.rows}
        methods = Counter(m for m in videos.values() if m)
        return ImportResult(str(self.out), str(csv_path), self.inputs, len(self.rows), len(videos),
                            len({r["patient_id"] for r in self.rows}), self.rejects,
                            dict(methods), time.perf_counter() - self._t0, self.truncated)
