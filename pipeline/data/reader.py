"""Reading and decoding the frames of a batch of clips; skipping corrupt members.

Shared by both loader paths: the CPU path decodes here (in decode threads or DataLoader
workers), the DALI path uses :meth:`ClipReader.fetch` for the bytes and decodes on the GPU.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from .clips import VideoTable
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


class ClipReader:
    """Fetches (and on the CPU path decodes) the frames of clips given as index rows."""

    def __init__(self, source: ShardSource, table: VideoTable, threads: int = 1):
        self.source, self.table = source, table
        self.threads = max(1, threads)
        self._executor, self._pid = None, None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():   # not shared across a fork
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
            self._pid = os.getpid()
        return self._executor

    def __getstate__(self):
        return {**self.__dict__, "_executor": None, "_pid": None}

    def fault(self, row: int, reason: str) -> tuple[str, str, str]:
        """(shard, key, reason) of a bad member, as logged and reported."""
        t = self.table
        return t.shards[t.shard_id[row]], str(t.keys[row]), reason

    def fetch(self, rows: np.ndarray) -> tuple[list[bytes] | None, tuple | None]:
        """Encoded bytes of one clip's frames, or (None, (shard, key, reason)) on a fault."""
        t = self.table
        shard_ids = t.shard_id[rows]
        off, size = t.offset[rows], t.size[rows]
        first, last = int(off.min()), int((off + size).max())
        try:
            if (shard_ids == shard_ids[0]).all() and last - first <= MAX_SPAN_READ:
                blob = self.source.read(t.shards[shard_ids[0]], first, last - first)
                return [blob[o - first:o - first + s] for o, s in zip(off.tolist(), size.tolist())], None
            return [self.source.read(t.shards[i], int(o), int(s))
                    for i, o, s in zip(shard_ids.tolist(), off.tolist(), size.tolist())], None
        except EOFError as e:
            return None, self.fault(rows[0], str(e))

    def decode(self, rows: np.ndarray, out: np.ndarray):
        """Decode one clip into ``out`` [K, H, W]; returns None or a fault (shard, key, reason)."""
        datas, fault = self.fetch(rows)
        if fault:
            return fault
        for j, (row, data) in enumerate(zip(rows.tolist(), datas)):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None or img.ndim != 2:
                return self.fault(row, "image does not decode")
            if img.shape != out.shape[1:]:
                img = cv2.resize(img, (out.shape[2], out.shape[1]), interpolation=cv2.INTER_AREA)
            out[j] = img
        return None

    def _decode_run(self, job) -> list:
        clip_rows, frames = job
        return [self.decode(rows, out) for rows, out in zip(clip_rows, frames)]

    def decode_clips(self, clip_rows: np.ndarray, size: tuple[int, int]):
        """(frames uint8 [B', K, H, W], kept [B] bool, faults): corrupt clips are left out."""
        b, k = clip_rows.shape
        frames = np.empty((b, k, *size), np.uint8)
        if self.threads > 1 and b > 1:   # cv2 releases the GIL while decoding
            # one task per thread (a run of clips), not one per clip: fewer hand-offs
            bounds = np.linspace(0, b, min(self.threads, b) + 1).astype(int)
            runs = self._pool().map(self._decode_run, [(clip_rows[i:j], frames[i:j])
                                                        for i, j in zip(bounds[:-1], bounds[1:])])
            results = [r for run in runs for r in run]
        else:
            results = self._decode_run((clip_rows, frames))
        kept = np.array([r is None for r in results], bool)
        faults = [r for r in results if r is not None]
        for fault in faults:
            log.warning("skipped a corrupt member: shard %s, key %s (%s)", *fault)
        return (frames if kept.all() else frames[kept]), kept, faults
