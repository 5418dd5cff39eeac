"""ClipBatch: what both loader paths (CPU/WebDataset and DALI) yield, field for field."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import expand_patches, io_labels, pm_pairs

TENSOR_FIELDS = ("frames", "patient", "video", "position", "frame_index", "io_perm", "io_label",
                 "pm_a", "pm_b", "pm_label", "mir_patches")


@dataclass
class ClipBatch:
    """B clips of K frames each, in temporal order, with every task's labels.

    frames       uint8 [B, K, 1, H, W]   grayscale, as stored (``images()`` gives float 0..1)
    patient      int64 [B]               patient code (``patient_ids[code]`` is the id)
    video        int64 [B]               video number in the loader's table
    position     int64 [B]               the clip's position in the epoch's global order
    frame_index  int64 [B, K]            frame numbers within the video
    io_perm      int64 [B, K]            IO: show ``frames[b, io_perm[b]]``...
    io_label     int64 [B]               ...and predict this class (see ``tasks.io_classes``)
    pm_a, pm_b   int64 [P, 2]            PM: (clip, frame) of each side of a pair
    pm_label     float32 [P]             1 = same patient
    mir_patches  bool [B, K, gh, gw]     MIR: True = masked patch (made on the training device)
    mir_mask     bool [B, K, 1, H, W]    MIR: the same per pixel (a property, made on demand)
    """
    frames: torch.Tensor
    patient: torch.Tensor
    video: torch.Tensor
    position: torch.Tensor
    frame_index: torch.Tensor
    io_perm: torch.Tensor
    io_label: torch.Tensor
    pm_a: torch.Tensor
    pm_b: torch.Tensor
    pm_label: torch.Tensor
    epoch: int
    step: int
    mir_patches: torch.Tensor | None = None
    faults: list = field(default_factory=list)   # (shard, key, reason) of skipped members

    @property
    def batch_size(self) -> int:
        return int(self.frames.shape[0])

    @property
    def clip_len(self) -> int:
        return int(self.frames.shape[1])

    @property
    def num_images(self) -> int:
        """Frames the model sees in this batch (B * K): what images/s counts."""
        return self.batch_size * self.clip_len

    @property
    def mir_mask(self) -> torch.Tensor | None:
        """Per-pixel MIR mask [B, K, 1, H, W], expanded from ``mir_patches`` on their device."""
        if self.mir_patches is None:
            return None
        b, k, _, h, w = self.frames.shape
        return expand_patches(self.mir_patches.reshape(b * k, 1, *self.mir_patches.shape[2:]),
                              h, w).view(b, k, 1, h, w)

    def images(self, dtype=torch.float32) -> torch.Tensor:
        return self.frames.to(dtype) / 255.0

    def to(self, device, non_blocking: bool = False) -> "ClipBatch":
        moved = {f: getattr(self, f).to(device, non_blocking=non_blocking)
                 for f in TENSOR_FIELDS if getattr(self, f) is not None}
        return replace(self, **moved)

    def structure(self) -> dict:
        """Field -> (dtype, shape with B/K/H/W/P symbolic): equal for both loader paths."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                out[f.name] = (str(v.dtype), v.dim())
        return out


def label_batch(frames: torch.Tensor, patient: np.ndarray, video: np.ndarray,
                position: np.ndarray, frame_index: np.ndarray, *, seed: int, epoch: int,
                step: int, io_reverse: str = "same", pm_positive: str = "patient",
                faults=()) -> ClipBatch:
    """The IO and PM labels of a batch of clips: a pure function of its clips and the seed."""
    b, k = frames.shape[:2]
    key = int(position[0]) if len(position) else -1
    rng = np.random.default_rng([seed, epoch, key + 1, 0x7A5C])
    if k >= 2:
        perm, label = io_labels(rng, b, k, io_reverse)
    else:  # one frame per clip: nothing to order
        perm, label = np.zeros((b, k), np.int64), np.zeros(b, np.int64)
    a, bb, pm = pm_pairs(rng, patient, video, k, pm_positive)
    t = torch.from_numpy
    return ClipBatch(frames=frames, patient=t(np.asarray(patient, np.int64)),
                     video=t(np.asarray(video, np.int64)), position=t(np.asarray(position, np.int64)),
                     frame_index=t(np.asarray(frame_index, np.int64)), io_perm=t(perm),
                     io_label=t(label), pm_a=t(a), pm_b=t(bb), pm_label=t(pm), epoch=epoch,
                     step=step, faults=list(faults))


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 frames [B, K, 1, H, W] resized to ``size`` (h, w) on their device, antialiased
    bilinear (the filter of DALI's resize, within 2 of it): the CPU path's ``resize="batch"``.
    On the CPU, torch's uint8 kernel; on a GPU, its float kernel rounded (within 1 of it)."""
    b, k, c, h, w = frames.shape
    x = frames.reshape(b * k, c, h, w)
    if x.shape[0] == 0:
        return frames.new_empty((b, k, c, *size))
    if x.device.type == "cpu":
        y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    else:
        y = F.interpolate(x.float(), size=tuple(size), mode="bilinear", antialias=True,
                          align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
    return y.view(b, k, c, *size)
