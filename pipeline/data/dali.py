"""The DALI path: the same ClipBatches, decoded (``decoders.image(device="mixed")``) and resized
on the GPU, read through DALI's PyTorch iterator.

The host side is the same as the CPU path's: the plan says which clips a step holds, and
``FrameDecoder.fetch`` gets their encoded bytes with one ``pread`` per clip. Encoded frames are
checked for completeness on the host (a truncated JPEG would abort the DALI pipeline); a clip
with a bad member is left out of its batch and reported, as on the CPU path. A step whose clips
are all bad still yields its batch, with B = 0: DALI cannot take an empty batch, so it is fed
one tiny placeholder frame whose output is dropped, and step numbering stays aligned. MIR masks
are drawn by the ClipLoader on the training device after the iterator, as for the CPU path.

``device=None`` (no GPU) builds the same graph with CPU operators, which is how it is tested.
"""
from __future__ import annotations

import logging
from collections import deque

import cv2
import numpy as np
import torch

from .plan import EpochPlan
from .decode import FrameDecoder, looks_complete

log = logging.getLogger("sonostream.loader")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def _placeholder() -> np.ndarray:
    """One valid 8x8 gray JPEG: what DALI decodes for a step with no clip left (dropped)."""
    _, enc = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))
    return enc.reshape(-1)


class _EncodedSteps:
    """External source: one DALI batch (the B*K encoded frames of a step) per call; a step
    with no clip left gets one placeholder frame (``kept`` all False: its output is dropped)."""

    def __init__(self, plan: EpochPlan, decoder: FrameDecoder):
        self.plan, self.decoder = plan, decoder
        self.fed: deque = deque()   # (step, kept, faults) in the order DALI receives them
        self.step = 0
        self.placeholder = _placeholder()

    def __iter__(self):
        return self

    def __next__(self):
        while self.step < self.plan.steps:
            step, self.step = self.step, self.step + 1
            rows = self.plan.clip_rows(step)
            kept = np.ones(len(rows), bool)
            faults, out = [], []
            for i, clip in enumerate(rows):
                datas, fault = self.decoder.fetch(clip)
                if fault is None:
                    bad = [j for j, d in enumerate(datas) if not looks_complete(d)]
                    if bad:
                        fault = self.decoder.fault(clip[bad[0]], "image does not decode")
                if fault:
                    kept[i] = False
                    faults.append(fault)
                    log.warning("skipped a corrupt member: shard %s, key %s (%s)", *fault)
                    continue
                out.extend(np.frombuffer(d, np.uint8) for d in datas)
            self.fed.append((step, kept, faults))
            return out or [self.placeholder]   # DALI takes no empty batch: see dali_batches
        raise StopIteration


def build_pipeline(source, batch_size: int, size: tuple[int, int], device: torch.device | None,
                   threads: int = 4, prefetch: int = 2):
    """The DALI graph: encoded bytes -> decoded gray frames -> resized to ``size`` (H, W)."""
    from nvidia.dali import fn, pipeline_def, types

    gpu = device is not None and torch.device(device).type == "cuda"
    device_id = (torch.device(device).index or 0) if gpu else None

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id,
                  prefetch_queue_depth=prefetch)
    def clips():
        enc = fn.external_source(source=source, batch=True, dtype=types.UINT8, name="encoded")
        img = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.GRAY)
        return fn.resize(img, resize_y=size[0], resize_x=size[1], interp_type=types.INTERP_LINEAR,
                         antialias=True)

    return clips()


def dali_batches(plan: EpochPlan, decoder: FrameDecoder, device=None, threads: int = 4):
    """ClipBatches of the plan's epoch, decoded by DALI (on the GPU when ``device`` is CUDA)."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    if plan.steps == 0:
        return
    k = plan.clips.frames.shape[1]
    b = plan.positions.shape[1]
    src = _EncodedSteps(plan, decoder)
    pipe = build_pipeline(src, b * k, plan.image_size, device, threads)
    it = DALIGenericIterator(pipe, ["frames"], last_batch_policy=LastBatchPolicy.PARTIAL,
                             auto_reset=False, prepare_first_batch=False)
    try:
        for out in it:
            frames = out[0]["frames"]                   # [B'*K, H, W, 1] uint8
            step, kept, faults = src.fed.popleft()
            n = int(kept.sum())
            if n == 0:   # the placeholder's frame: the step's batch is empty
                frames = frames.new_empty((0, k, 1, *plan.image_size))
            else:
                frames = frames.view(n, k, *frames.shape[1:3], 1).permute(0, 1, 4, 2, 3)
            yield plan.batch(step, frames, kept, faults)
    finally:
        del it, pipe
