"""EpochPlan: one rank's batches of one epoch, as data (no I/O), and their labelling."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .batch import ClipBatch, label_batch
from .clips import ClipConfig, EpochClips, VideoTable, epoch_clips
from .placement import global_order, rank_positions

log = logging.getLogger("sonostream.loader")


@dataclass
class EpochPlan:
    table: VideoTable
    clips: EpochClips
    order: np.ndarray        # epoch position -> clip number
    positions: np.ndarray    # [steps, B] this rank's positions, step by step
    epoch: int
    seed: int
    image_size: tuple[int, int]
    io_reverse: str = "same"
    pm_positive: str = "patient"

    @classmethod
    def make(cls, table: VideoTable, clip: ClipConfig, *, epoch: int, seed: int, start: int,
             batch_size: int, world_size: int, rank: int, shuffle_window: int,
             image_size: tuple[int, int], io_reverse: str = "same", pm_positive: str = "patient",
             patient_groups: int = 1):
        clips = epoch_clips(table, clip, epoch, seed)
        order = global_order(clips, len(table.view.shards), epoch, seed, shuffle_window,
                             patient_groups)
        positions = rank_positions(len(order), batch_size, world_size, rank, start)
        return cls(table, clips, order, positions, epoch, seed, tuple(image_size), io_reverse,
                   pm_positive)

    @property
    def steps(self) -> int:
        return len(self.positions)

    def clip_rows(self, step: int) -> np.ndarray:
        """[B, K] index rows of the clips of ``step``."""
        return self.clips.frames[self.order[self.positions[step]]]

    def batch(self, step: int, frames: torch.Tensor, kept: np.ndarray, faults=()) -> ClipBatch:
        """Label ``frames`` ([B', K, 1, H, W], the clips of ``step`` that decoded). With no clip
        left (B' = 0) the batch is still made, empty: the step count never changes."""
        if not kept.any():
            log.warning("epoch %d, step %d: every clip had a corrupt member; the batch is empty",
                        self.epoch, step)
        pos = self.positions[step][kept]
        clip = self.order[pos]
        video = self.clips.video[clip]
        rows = self.clips.frames[clip]
        return label_batch(frames, self.table.patient[video], video, pos,
                           self.table.view.frame_index[rows], seed=self.seed, epoch=self.epoch,
                           step=step, io_reverse=self.io_reverse, pm_positive=self.pm_positive,
                           faults=faults)
