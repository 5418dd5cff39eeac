"""FrameDecoder: index rows -> encoded bytes -> 8-bit gray frames and 0/1 masks.

The one decoder of the project's read side. The clip loader's CPU path decodes whole clips here
(skipping a clip with a corrupt member, which it reports), its DALI path takes only the bytes
(:meth:`FrameDecoder.fetch`) and decodes on the GPU; segmentation batches, evaluation and
cine loops decode single frames and masks here (a corrupt member is then an error that names it).
Every member's bytes are checked against the index's CRC-32 as they are read (``fetch`` and the
single-frame reads), so a member corrupted in place, which may still decode to garbage, is a
fault like one that does not decode; ``zlib.crc32`` releases the GIL, so threads stay parallel.
One thread pool serves them all: OpenCV releases the GIL while it decodes, so threads decode a
batch in parallel without copying it between processes. ``decode_into`` decodes into any
array: a recycled batch array here, or a slot of the shared ring that the CPU path's worker
processes write (``ring.py``). Where simplejpeg is installed, JPEG members are decoded straight
into that array (``decode_gray_into``; OpenCV decodes into an array of its own, then a copy).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from preprocessing.format import SonostreamError, member_crc32
from preprocessing.imaging import mask_levels, shown_levels

from .index import IndexView
from .source import ShardSource

log = logging.getLogger("sonostream.loader")
MAX_SPAN_READ = 4 << 20   # read a clip's frames with one pread when they lie within 4 MiB
_KEEP_ARRAYS = 8          # batch arrays kept for reuse (see FrameDecoder._batch_array)

_JPEG_SOI, _JPEG_EOI = b"\xff\xd8", b"\xff\xd9"
_PNG_SIG, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def looks_complete(data: bytes) -> bool:
    """Cheap check that an encoded frame is a whole JPEG or PNG (for decoders that abort)."""
    head, tail = bytes(data[:8]), bytes(data[-64:])
    if head[:2] == _JPEG_SOI:
        return tail.rstrip(b"\x00")[-2:] == _JPEG_EOI
    if head == _PNG_SIG:
        return tail[-8:] == _PNG_END
    return False


def decode_gray(data: bytes) -> np.ndarray | None:
    """(H, W) uint8 from an encoded 8-bit gray member; None when it does not decode."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    return img if img is not None and img.ndim == 2 else None


def _simplejpeg():
    """simplejpeg (a dependency; the loader falls back to OpenCV without it), which decodes a JPEG straight into a
    batch's memory (OpenCV decodes into an array of its own, then a copy: ~8 % of a frame's
    time), or None. Both are libjpeg-turbo's default (islow) decoder, so the pixels are the
    same; :class:`FrameDecoder` still checks that once per process on the first frame."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


_SJ = _simplejpeg()


def decode_gray_into(data, out: np.ndarray) -> bool:
    """Decode an 8-bit gray JPEG member into ``out`` (H, W), C-contiguous, of the frame's size,
    with simplejpeg; False (``out`` then undefined) where it cannot: not a JPEG, another size,
    a JPEG it rejects (OpenCV then decides, as without it), or simplejpeg not installed."""
    if _SJ is None or bytes(data[:2]) != _JPEG_SOI or not out.flags.c_contiguous:
        return False
    try:
        img = _SJ.decode_jpeg(data, "GRAY", buffer=out)
    except Exception:  # noqa: BLE001 - corrupt or unusual: OpenCV's decode is the reference
        return False
    return img.shape[:2] == out.shape and img.ctypes.data == out.ctypes.data


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
        self._arrays: list[np.ndarray] = []
        self._arrays_lock = threading.Lock()
        # JPEGs decoded straight into the batch with simplejpeg where installed; its first
        # frame in each process is compared with OpenCV's (see _check_direct)
        self.direct = _SJ is not None
        self._pid_direct = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():   # not shared across a fork
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")
            self._pid = os.getpid()
        return self._executor

    def __getstate__(self):
        return {**self.__dict__, "_executor": None, "_pid": None, "_arrays": [],
                "_arrays_lock": None}

    def __setstate__(self, state):
        self.__dict__.update(state, _arrays_lock=threading.Lock())

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

    def _reads(self, clip_rows: np.ndarray) -> list[tuple]:
        """What to read for each clip of ``clip_rows`` [B, K], worked out for the whole batch in
        a few numpy operations (not per clip): (rows, shard ids, offsets, sizes, checksums,
        first byte, span, one read?) as Python lists, for :meth:`_read` in the decode threads."""
        v = self.view
        sid, off, size = v.shard_id[clip_rows], v.offset[clip_rows], v.size[clip_rows]
        crc = v.image_crc[clip_rows] if self.checksums else np.full(clip_rows.shape, -1)
        first, span = off.min(axis=1), (off + size).max(axis=1) - off.min(axis=1)
        one = (sid == sid[:, :1]).all(axis=1) & (span <= MAX_SPAN_READ)
        return list(zip(clip_rows.tolist(), sid.tolist(), off.tolist(), size.tolist(), crc.tolist(),
                        first.tolist(), span.tolist(), one.tolist()))

    def _read(self, job: tuple):
        """(member buffers, None) of one clip from :meth:`_reads`, checked against their
        checksums, or (None, fault). One ``pread`` when the clip lies in one shard within
        MAX_SPAN_READ; the members are zero-copy views of it."""
        rows, sid, off, size, crc, first, span, one = job
        shards = self.view.shards
        try:
            if one:
                blob = memoryview(self.source.read(shards[sid[0]], first, span))
                datas = [blob[o - first:o - first + s] for o, s in zip(off, size)]
            else:
                datas = [self.source.read(shards[i], o, s) for i, o, s in zip(sid, off, size)]
        except EOFError as e:
            return None, self.fault(rows[0], str(e))
        for row, data, want in zip(rows, datas, crc):
            if want >= 0 and member_crc32(data) != want:
                return None, self.fault(row, "checksum mismatch")
        return datas, None

    def fetch(self, rows: np.ndarray) -> tuple[list | None, tuple | None]:
        """Encoded image bytes of ``rows`` (one clip; buffers that ``np.frombuffer`` takes),
        checked against their checksums, or (None, (shard, key, reason)) on a fault. Frames of
        one shard within MAX_SPAN_READ come with a single pread."""
        return self._read(self._reads(np.asarray(rows)[None])[0])

    # -- clips: a corrupt member drops its clip (reported, never raised) ---------------------------
    def _decode_clip(self, job: tuple, out: np.ndarray):
        """Decode one clip into ``out`` [K, H, W]; returns None or a fault (shard, key, reason).
        Frames of another size are resized straight into ``out`` (no copy)."""
        datas, fault = self._read(job)
        if fault:
            return fault
        h, w = out.shape[1:]
        for j, (row, data) in enumerate(zip(job[0], datas)):
            if self.direct and decode_gray_into(data, out[j]) and (
                    self._pid_direct == os.getpid() or self._check_direct(data, out[j])):
                continue
            img = decode_gray(data)
            if img is None:
                return self.fault(row, "image does not decode")
            if img.shape == (h, w):
                out[j] = img
            else:
                cv2.resize(img, (w, h), dst=out[j], interpolation=cv2.INTER_AREA)
        return None

    def _check_direct(self, data, frame: np.ndarray) -> bool:
        """Once per process, on its first frame: simplejpeg's pixels must equal OpenCV's bit
        for bit, or it is not used (the batches of every path stay OpenCV's)."""
        self._pid_direct = os.getpid()
        ref = decode_gray(data)
        if ref is not None and np.array_equal(ref, frame):
            return True
        log.warning("simplejpeg decodes a frame unlike OpenCV here; decoding with OpenCV")
        self.direct = False
        return False

    def _decode_run(self, run) -> list:
        jobs, frames = run
        return [self._decode_clip(job, out) for job, out in zip(jobs, frames)]

    def _batch_array(self, shape: tuple) -> np.ndarray:
        """An uninitialised uint8 array of ``shape`` for a batch's frames. Arrays of earlier
        batches are recycled once nothing else holds them (the batch tensor made from one keeps
        it alive while the training loop uses it): a fresh 8 MB array per batch costs its page
        faults again, ~5 % of the decode time. At most ``_KEEP_ARRAYS`` are kept."""
        with self._arrays_lock:
            for a in self._arrays:
                # references: the list, the loop variable, getrefcount's argument
                if a.shape == shape and sys.getrefcount(a) == 3:
                    return a
            a = np.empty(shape, np.uint8)
            self._arrays = [*self._arrays, a][-_KEEP_ARRAYS:]
            return a

    def decode_into(self, clip_rows: np.ndarray, frames: np.ndarray):
        """Decode the clips of ``clip_rows`` [B, K] into ``frames`` [B, K, H, W] (uint8, any
        writable array: a recycled one, or a slot of the shared ring); (kept [B] bool, faults).
        A clip with a corrupt member is left as it is in ``frames`` and reported, not logged."""
        b = clip_rows.shape[0]
        jobs = self._reads(clip_rows)
        # one task per thread (a run of clips), not one per clip: fewer hand-offs
        bounds = np.linspace(0, b, min(self.threads, b) + 1).astype(int).tolist()
        runs = self.map(self._decode_run, [(jobs[i:j], frames[i:j])
                                           for i, j in zip(bounds[:-1], bounds[1:])])
        results = [r for run in runs for r in run]
        faults = [r for r in results if r is not None]
        return np.array([r is None for r in results], bool), faults

    def decode_clips(self, clip_rows: np.ndarray, size: tuple[int, int]):
        """(frames uint8 [B', K, H, W], kept [B] bool, faults): corrupt clips are left out."""
        b, k = clip_rows.shape
        frames = self._batch_array((b, k, *size))
        kept, faults = self.decode_into(clip_rows, frames)
        for fault in faults:
            log.warning("skipped a corrupt member: shard %s, key %s (%s)", *fault)
        return (frames if not faults else frames[kept]), kept, faults

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
