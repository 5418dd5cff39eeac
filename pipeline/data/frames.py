"""Single labelled frames for segmentation: which frames are labelled, and their decoding.

:class:`FrameTable` holds the per-row arrays of ``index.parquet`` that segmentation needs
(image and mask bytes, patient, plane, pixel size), read once. :func:`labelled_patients` picks
the label fraction *per patient* (a patient's frames are all labelled or all unlabelled, as
when a clinic annotates some examinations), deterministically from (seed, patient id), and
nested: the 5 % patients are among the 10 % ones, so a label-efficiency curve compares like
with like. :class:`FrameReader` decodes frames and masks (cv2 releases the GIL, so a thread
pool decodes a batch in parallel).
"""
from __future__ import annotations

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import pyarrow as pa

from preprocessing import format as fmt

from .source import ShardSource


@dataclass
class FrameTable:
    """Per index row arrays (row r of the index is entry r of each)."""
    shards: list                 # shard id -> name
    shard_id: np.ndarray         # [N] int64
    offset: np.ndarray           # [N] int64 image member
    size: np.ndarray             # [N] int64
    mask_offset: np.ndarray      # [N] int64 (-1: no mask)
    mask_size: np.ndarray        # [N] int64
    patient_ids: np.ndarray      # [P] object, sorted
    patient: np.ndarray          # [N] int64 code into patient_ids
    split: np.ndarray            # [N] object
    plane: np.ndarray            # [N] int64 index into fmt.PLANES, -1 missing
    pixel_size: np.ndarray       # [N] float64 mm per stored pixel, nan missing
    hc_mm: np.ndarray            # [N] float64 reference HC, nan missing
    keys: np.ndarray             # [N] object
    source_path: np.ndarray      # [N] object: frame_path as given in the CSV
    pad: np.ndarray              # [N, 2] int64 (pad_x, pad_y) of the stored letterbox
    height: np.ndarray           # [N] int64 stored size
    width: np.ndarray

    @classmethod
    def from_index(cls, index: pa.Table) -> "FrameTable":
        def col(name, fill=None):
            c = index.column(name)
            if fill is not None:
                c = c.fill_null(fill)
            return c.to_numpy(zero_copy_only=False)

        shards, shard_id = np.unique(col("shard"), return_inverse=True)
        pids, pcode = np.unique(col("patient_id"), return_inverse=True)
        planes = col("plane", "")
        plane = np.full(len(planes), -1, np.int64)
        for i, name in enumerate(fmt.PLANES):
            plane[planes == name] = i
        return cls(shards=[str(s) for s in shards], shard_id=shard_id.astype(np.int64),
                   offset=col("offset").astype(np.int64), size=col("size").astype(np.int64),
                   mask_offset=col("mask_offset", -1).astype(np.int64),
                   mask_size=col("mask_size", 0).astype(np.int64),
                   patient_ids=pids, patient=pcode.astype(np.int64), split=col("split"),
                   plane=plane, pixel_size=col("pixel_size_mm", float("nan")).astype(np.float64),
                   hc_mm=col("hc_mm", float("nan")).astype(np.float64), keys=col("key"),
                   source_path=col("source_path"),
                   pad=np.stack([col("pad_x"), col("pad_y")], 1).astype(np.int64),
                   height=col("height").astype(np.int64), width=col("width").astype(np.int64))

    @property
    def has_mask(self) -> np.ndarray:
        return self.mask_offset >= 0

    def rows_of(self, splits) -> np.ndarray:
        splits = [splits] if isinstance(splits, str) else list(splits)
        unknown = set(splits) - set(fmt.SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use {', '.join(fmt.SPLITS)}")
        return np.flatnonzero(np.isin(self.split, splits)).astype(np.int64)


def labelled_patients(patient_ids, fraction: float, seed: int = 0) -> list:
    """The patients whose labels are used: ceil(fraction * n) of them (at least 1), ranked by a
    hash of (seed, id). Nested in ``fraction`` and independent of which other patients exist."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    ids = sorted(set(patient_ids))
    rank = sorted(ids, key=lambda p: hashlib.sha256(f"{seed}\x00labels\x00{p}".encode()).digest())
    return rank[:max(1, math.ceil(fraction * len(ids) - 1e-9))] if ids else []


@dataclass
class Selection:
    """The training frames of a run: labelled rows, and the rows consistency losses may use."""
    labelled: np.ndarray       # index rows whose masks are used
    unlabelled: np.ndarray     # every row of the split (labels ignored): semi-supervised input
    patients: list             # the labelled patients
    total_patients: int


def select_frames(table: FrameTable, split: str, fraction: float, seed: int, where: str) -> Selection:
    rows = table.rows_of(split)
    masked = rows[table.has_mask[rows]]
    if len(masked) == 0:
        raise ValueError(f"{where} has no frames with masks in split {split!r}: segmentation needs "
                         "labelled frames (build from a frames CSV with a mask_path column, e.g. "
                         "`sonostream synth` or `sonostream import hc18`)")
    ids = table.patient_ids[np.unique(table.patient[masked])]
    chosen = labelled_patients(ids.tolist(), fraction, seed)
    codes = np.flatnonzero(np.isin(table.patient_ids, chosen))
    labelled = masked[np.isin(table.patient[masked], codes)]
    return Selection(labelled=labelled, unlabelled=rows, patients=chosen, total_patients=len(ids))


class FrameReader:
    """Decodes frames (and masks) of index rows to a fixed size, with a pool of threads."""

    def __init__(self, source: ShardSource, table: FrameTable, size: tuple[int, int] | None,
                 threads: int = 2):
        self.source, self.table, self.size = source, table, size
        self.threads = max(1, threads)
        self._pool, self._pid = None, None

    def _decode(self, shard: int, offset: int, size: int, what: str, row: int) -> np.ndarray:
        t = self.table
        data = self.source.read(t.shards[shard], int(offset), int(size))
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{t.shards[shard]}: the {what} of {t.keys[row]} does not decode; "
                             "run `sonostream verify` on the dataset and rebuild it")
        return img

    def image(self, row: int) -> np.ndarray:
        """(H, W) uint8 frame, resized (INTER_AREA) to ``size`` when one is set."""
        t = self.table
        img = self._decode(t.shard_id[row], t.offset[row], t.size[row], "frame", row)
        return self._resize(img, cv2.INTER_AREA)

    def mask(self, row: int) -> np.ndarray:
        """(H, W) uint8 0/1 mask. Values other than 0/255 are an error, never guessed at."""
        t = self.table
        if t.mask_offset[row] < 0:
            raise ValueError(f"{t.keys[row]} has no mask")
        m = self._decode(t.shard_id[row], t.mask_offset[row], t.mask_size[row], "mask", row)
        values = np.flatnonzero(cv2.calcHist([m], [0], None, [256], [0, 256]).ravel())
        if not set(values.tolist()) <= {0, 255}:
            raise ValueError(f"{t.shards[t.shard_id[row]]}: the mask of {t.keys[row]} has values "
                             f"{values[:6].tolist()}, not only 0/255; threshold the source mask "
                             "to 0/255 and rebuild")
        return self._resize(m, cv2.INTER_NEAREST) // 255

    def _resize(self, img, interp):
        if self.size is None or img.shape == tuple(self.size):
            return img
        return cv2.resize(img, (self.size[1], self.size[0]), interpolation=interp)

    def images(self, rows, masks: bool = False):
        """[len(rows), H, W] uint8 frames (and masks when asked), decoded in parallel."""
        rows = [int(r) for r in rows]
        work = (lambda r: (self.image(r), self.mask(r))) if masks else self.image
        if self.threads > 1 and len(rows) > 1:
            if self._pool is None or self._pid != os.getpid():
                self._pool, self._pid = ThreadPoolExecutor(self.threads), os.getpid()
            out = list(self._pool.map(work, rows))
        else:
            out = [work(r) for r in rows]
        if masks:
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        return np.stack(out)

    def __getstate__(self):
        return {**self.__dict__, "_pool": None, "_pid": None}
