"""The CPU path: a WebDataset pipeline in DataLoader workers that decodes whole clip batches.

Worker ``w`` of ``n`` produces the steps ``w, w+n, w+2n, ...`` of its rank's plan, and the
DataLoader reads workers round-robin, so batches arrive in step order whatever ``n`` is.
"""
from __future__ import annotations

import torch
import webdataset as wds
from torch.utils.data import get_worker_info

from .placement import worker_steps
from .plan import EpochPlan
from .reader import ClipReader


class _Steps(torch.utils.data.IterableDataset):
    """Source stage: this worker's step numbers."""

    def __init__(self, steps: int):
        self.steps = steps

    def __iter__(self):
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info else (0, 1)
        return iter(worker_steps(self.steps, n, w))


class _DecodeBatch:
    def __init__(self, plan: EpochPlan, reader: ClipReader):
        self.plan, self.reader = plan, reader

    def __call__(self, step: int):
        frames, kept, faults = self.reader.decode_clips(self.plan.clip_rows(step), self.plan.image_size)
        return self.plan.batch(step, torch.from_numpy(frames).unsqueeze(2), kept, faults)


def cpu_batches(plan: EpochPlan, reader: ClipReader, num_workers: int = 2, prefetch: int = 2,
                pin_memory: bool = False):
    """An iterable of this rank's ClipBatches for the plan's epoch, in step order."""
    pipeline = wds.DataPipeline(_Steps(plan.steps), wds.map(_DecodeBatch(plan, reader)))
    if num_workers == 0:
        return pipeline
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                         prefetch_factor=prefetch, pin_memory=pin_memory,
                         persistent_workers=False)
