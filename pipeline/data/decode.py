"""FrameDecoder: index rows -> encoded bytes -> 8-bit gray frames and 0/1 masks.

The one decoder of the project's read side. The clip loader's CPU path decodes whole clips here
(skipping a clip with a corrupt member, which it reports), its DALI path takes only the bytes
(:meth:`FrameDecoder.fetch`) and decodes on the GPU; segmentation batches, evaluation and
cine loops decode single frames and masks here (a corrupt member is then an error that names it).
Every member's bytes are checked against the index's CRC-32 as they are read (``fetch`` and the
single-frame reads), so a member corrupted in place, which may still decode to garbage, is a
fault like one that does not decode; ``zlib.crc32`` releases the GIL, so threads stay parallel.
One thread pool serves them all: OpenCV releases the GIL while it decodes, so threads decode a
batch in parallel without copying it between processes.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from preprocessing.format import SonostreamError, member_crc32
from preprocessing.imaging import mask_levels, shown_levels

from .index import IndexView
from .source import ShardSource

log = logging.getLogger("sonostream.loader")
MAX_SPAN_READ = 4 << 20   # read a clip's frames with one pread when they lie within 4 MiB

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIG, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def looks_complete(data: bytes) -> bool:
    """Cheap check that an encoded frame is a whole JPEG or PNG (for decoders that abort)."""
    if data[:2] == _JPEG_SOI:
        return data[-64:].rstrip(b"\x00")[-2:] == _JPEG_EOI
    if data[:8] == _PNG_SIG:
        return data[-8:] == _PNG_END
    return False


def decode_gray(data: bytes) -> np.ndarray | None:
    """(H, W) uint8 from an encoded 8-bit gray member; None when it does not decode."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return img if img is not None and img.ndim == 2 else None


def fit(img: np.ndarray, size: tuple[int, int] | None, interp=cv2.INTER_AREA) -> np.ndarray:
    """``img`` resized to ``size`` (H, W) when one is given and differs."""
    if size is None or img.shape == tuple(size):
        return img
    return cv2.resize(img, (size[1], size[0]), interpolation=interp)


class FrameDecoder:
    """Reads and decodes the members of index rows; ``threads`` decode a batch in parallel."""

    def __init__(self, source: ShardSource, view: IndexView, threads: int = 2,
                 checksums: bool = True):
        self.source, self.view = source, view
        self.threads = max(1, threads)
        self.checksums = checksums and view.has_checksums   # off: only to measure their cost
        self._executor, self._pid = None, None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():   # not shared across a fork
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
            self._pid = os.getpid()
        return self._executor

    def __getstate__(self):
        return {**self.__dict__, "_executor": None, "_pid": None}

    def map(self, fn, items: list) -> list:
        """``[fn(x) for x in items]``, in the decode threads when there are several."""
        if self.threads > 1 and len(items) > 1:
            return list(self._pool().map(fn, items))
        return [fn(x) for x in items]

    # -- bytes -------------------------------------------------------------------------------------
    def fault(self, row: int, reason: str) -> tuple[str, str, str]:
        """(shard, key, reason) of a bad member, as logged and reported."""
        v = self.view
        return v.shards[v.shard_id[row]], str(v.keys[row]), reason

    def fetch(self, rows: np.ndarray) -> tuple[list[bytes] | None, tuple | None]:
        """Encoded image bytes of ``rows`` (one clip), checked against their checksums, or
        (None, (shard, key, reason)) on a fault. Frames of one shard within MAX_SPAN_READ come
        with a single pread."""
        v = self.view
        shard_ids = v.shard_id[rows]
        off, size = v.offset[rows], v.size[rows]
        first, last = int(off.min()), int((off + size).max())
        try:
            if (shard_ids == shard_ids[0]).all() and last - first <= MAX_SPAN_READ:
                blob = self.source.read(v.shards[shard_ids[0]], first, last - first)
                datas = [blob[o - first:o - first + s] for o, s in zip(off.tolist(), size.tolist())]
            else:
                datas = [self.source.read(v.shards[i], int(o), int(s))
                         for i, o, s in zip(shard_ids.tolist(), off.tolist(), size.tolist())]
        except EOFError as e:
            return None, self.fault(rows[0], str(e))
        if self.checksums:
            for row, data, want in zip(rows.tolist(), datas, v.image_crc[rows].tolist()):
                if want >= 0 and member_crc32(data) != want:
                    return None, self.fault(row, "checksum mismatch")
        return datas, None

    # -- clips: a corrupt member drops its clip (reported, never raised) ---------------------------
    def decode_clip(self, rows: np.ndarray, out: np.ndarray):
        """Decode one clip into ``out`` [K, H, W]; returns None or a fault (shard, key, reason)."""
        datas, fault = self.fetch(rows)
        if fault:
            return fault
        for j, (row, data) in enumerate(zip(rows.tolist(), datas)):
            img = decode_gray(data)
            if img is None:
                return self.fault(row, "image does not decode")
            out[j] = fit(img, out.shape[1:])
        return None

    def _decode_run(self, job) -> list:
        clip_rows, frames = job
        return [self.decode_clip(rows, out) for rows, out in zip(clip_rows, frames)]

    def decode_clips(self, clip_rows: np.ndarray, size: tuple[int, int]):
        """(frames uint8 [B', K, H, W], kept [B] bool, faults): corrupt clips are left out."""
        b, k = clip_rows.shape
        frames = np.empty((b, k, *size), np.uint8)
        # one task per thread (a run of clips), not one per clip: fewer hand-offs
        bounds = np.linspace(0, b, min(self.threads, b) + 1).astype(int)
        runs = self.map(self._decode_run, [(clip_rows[i:j], frames[i:j])
                                           for i, j in zip(bounds[:-1], bounds[1:])])
        results = [r for run in runs for r in run]
        kept = np.array([r is None for r in results], bool)
        faults = [r for r in results if r is not None]
        for fault in faults:
            log.warning("skipped a corrupt member: shard %s, key %s (%s)", *fault)
        return (frames if kept.all() else frames[kept]), kept, faults

    # -- single frames: a corrupt member is an error naming it -------------------------------------
    def _member(self, row: int, offset: int, size: int, crc: int, what: str) -> np.ndarray:
        v = self.view
        shard = v.shards[v.shard_id[row]]
        data = self.source.read(shard, int(offset), int(size))
        if self.checksums and crc >= 0 and member_crc32(data) != crc:
            raise SonostreamError(f"{shard}: the {what} of {v.keys[row]} fails its checksum (its "
                                  "bytes changed on disk); run `sonostream verify "
                                  f"{self.source.root}` and rebuild the dataset")
        img = decode_gray(data)
        if img is None:
            raise SonostreamError(f"{shard}: the {what} of {v.keys[row]} does not decode; run "
                                  "`sonostream verify` on the dataset and rebuild it")
        return img

    def image(self, row: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 frame of ``row``, resized (INTER_AREA) to ``size`` when one is given."""
        v = self.view
        return fit(self._member(row, v.offset[row], v.size[row], v.image_crc[row], "frame"), size)

    def mask(self, row: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 0/1 mask of ``row``. Values other than 0/255 are an error, never guessed."""
        v = self.view
        if v.mask_offset[row] < 0:
            raise SonostreamError(f"{v.keys[row]} has no mask")
        m = self._member(row, v.mask_offset[row], v.mask_size[row], v.mask_crc[row], "mask")
        levels = mask_levels(m)
        if not set(levels) <= {0, 255}:
            raise SonostreamError(
                f"{v.shards[v.shard_id[row]]}: the mask of {v.keys[row]} has values "
                f"{shown_levels(levels)}, not only 0/255; threshold the source mask to 0/255 and "
                "rebuild")
        return fit(m, size, cv2.INTER_NEAREST) // 255

    def images(self, rows, size: tuple[int, int] | None = None, masks: bool = False):
        """[len(rows), H, W] uint8 frames (and 0/1 masks when asked), decoded in parallel."""
        rows = [int(r) for r in rows]
        if masks:
            out = self.map(lambda r: (self.image(r, size), self.mask(r, size)), rows)
            return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
        return np.stack(self.map(lambda r: self.image(r, size), rows))
