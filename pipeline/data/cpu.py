"""The CPU path: a WebDataset pipeline that decodes whole clip batches.

Three ways to spread the decoding over cores (same batches, bit for bit, in the same order):

* ``num_workers > 0``, ``transport="ring"`` (the default, with ``decode_threads`` processes):
  forked decode processes write each batch straight into a slot of a shared ring that lives as
  long as the loader (``ring.py``): no GIL shared with the training loop, no shared-memory
  segment per batch. Measured the fastest of the three on 2 cores (BENCHMARKS.md).
* ``num_workers > 0``, ``transport="dataloader"``: DataLoader worker processes. Worker ``w`` of
  ``n`` produces the steps ``w, w+n, ...`` of its rank's plan and the DataLoader reads workers
  round-robin, so batches arrive in step order. Each batch crosses to the trainer through a
  fresh shared-memory segment (its page faults cost ~half a decode: the slowest of the three).
* ``num_workers = 0``: one background thread runs the pipeline ahead of the training loop
  (``prefetch`` batches), and ``decode_threads`` threads decode the clips of a batch in parallel
  (OpenCV releases the GIL, but the Python between decodes shares it with the loop).
"""
from __future__ import annotations

import queue
import threading

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from .placement import worker_steps
from .batch import resize_frames
from .plan import EpochPlan
from .decode import FrameDecoder


class _Steps(torch.utils.data.IterableDataset):
    """Source stage: this worker's step numbers."""

    def __init__(self, steps: int):
        self.steps = steps

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        return iter(worker_steps(self.steps, n, w))


class _DecodeBatch:
    """One step's batch, decoded at ``decode_size``; when that is not the plan's size, resized
    here (``resize_on_host``) or left to the ClipLoader, after the copy to the device."""

    def __init__(self, plan: EpochPlan, decoder: FrameDecoder, decode_size=None,
                 resize_on_host: bool = True):
        self.plan, self.decoder = plan, decoder
        self.decode_size = tuple(decode_size or plan.image_size)
        self.resize = resize_on_host and self.decode_size != plan.image_size

    def __call__(self, step: int):
        frames, kept, faults = self.decoder.decode_clips(self.plan.clip_rows(step), self.decode_size)
        frames = torch.from_numpy(frames).unsqueeze(2)
        if self.resize:
            frames = resize_frames(frames, self.plan.image_size)
        return self.plan.batch(step, frames, kept, faults)


def cpu_batches(plan: EpochPlan, decoder: FrameDecoder, num_workers: int = 2, prefetch: int = 2,
                pin_memory: bool = False, decode_size=None, resize_on_host: bool = True,
                pool=None):
    """An iterable of this rank's ClipBatches for the plan's epoch, in step order. Frames are
    decoded at ``decode_size`` (default: the plan's size) and resized to the plan's size here
    when ``resize_on_host``, else left at ``decode_size`` for the caller to resize. ``pool``
    (a ``ring.DecodePool``, made for these sizes): its processes decode into its shared ring
    instead of DataLoader workers."""
    if pool is not None:
        from .ring import ring_batches
        return ring_batches(plan, pool, prefetch)
    pipeline = wds.DataPipeline(_Steps(plan.steps), wds.map(_DecodeBatch(plan, decoder, decode_size,
                                                                         resize_on_host)))
    if num_workers == 0:
        return prefetched(pipeline, prefetch) if prefetch > 0 else pipeline
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                         prefetch_factor=prefetch, pin_memory=pin_memory,
                         persistent_workers=False)


def prefetched(iterable, depth: int):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead; errors re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def run():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=run, name="clip-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
