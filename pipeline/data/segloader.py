"""SegLoader: batches of labelled frames (+ unlabelled ones for semi-supervised training).

Which frames are labelled: :func:`labelled_patients` picks the label fraction (or a number of
patients, ``data.label_patients``) *per patient* (a patient's frames are all labelled or all
unlabelled, as when a clinic annotates some examinations), deterministically from (label seed,
patient id), and nested: the 5 % patients are among the 10 % ones, the 1 patient among the 2, so a
label-efficiency curve compares like with like. The label seed is ``data.label_seed``, or the
run's seed when that is unset; another seed draws other patients.

    loader = SegLoader("data/shards", SegDataConfig(label_fraction=0.1), batch_size=8,
                       unlabelled_batch=8, seed=0, rank=acc.process_index,
                       world_size=acc.num_processes, device=acc.device)

Each stream (labelled rows, unlabelled rows) is an endless sequence of epochs, each a fresh
permutation drawn from (seed, stream, epoch). Step ``s`` of rank ``r`` takes the global positions
``s*G + r*B ... + B-1`` (G = B * world size), so the whole state is the number of steps taken:
the same seed and world size give the same batches after a resume, and a labelled set smaller
than one global batch (5 % of a small cohort) still fills every batch. An "epoch" of iteration
is ``max(1, labelled // G)`` steps, for logs.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from preprocessing.format import SonostreamError

from .cpu import prefetched
from .decode import FrameDecoder
from .index import IndexView
from .source import ShardSource

STATE_VERSION = 1


@dataclass
class SegDataConfig:
    split: str = "train"            # frames trained on
    label_fraction: float = 1.0     # share of the split's labelled patients whose masks are used
    label_patients: int | None = None   # or this many of them (then label_fraction stays 1)
    label_seed: int | None = None   # which patients are drawn (None: the run's train.seed)
    image_size: int | None = None   # None: as stored; must be a multiple of 32 for the UNet
    decode_threads: int = 2         # threads decoding a batch
    prefetch: int = 2               # batches decoded ahead of the training loop

    def __post_init__(self):
        if not 0.0 < self.label_fraction <= 1.0:
            raise SonostreamError(f"data.label_fraction must be in (0, 1], got "
                                  f"{self.label_fraction}")
        if self.label_patients is not None:
            if isinstance(self.label_patients, bool) or not isinstance(self.label_patients, int) \
                    or self.label_patients < 1:
                raise SonostreamError(f"data.label_patients must be a whole number >= 1 (or unset), "
                                      f"got {self.label_patients!r}")
            if self.label_fraction < 1.0:
                raise SonostreamError(f"data.label_patients ({self.label_patients}) and "
                                      f"data.label_fraction ({self.label_fraction}) both choose the "
                                      "labelled patients; set one (label_fraction 1 with "
                                      "label_patients)")
        if self.label_seed is not None and (isinstance(self.label_seed, bool)
                                            or not isinstance(self.label_seed, int)):
            raise SonostreamError(f"data.label_seed must be a whole number (or unset), got "
                                  f"{self.label_seed!r}")
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 32):
            raise SonostreamError(f"data.image_size must be a multiple of 32 (the UNet halves it 5 "
                                  f"times), got {self.image_size}")


@dataclass
class SegBatch:
    """frames uint8 [B, 1, H, W]; masks uint8 [B, 1, H, W] 0/1; plane int64 [B] (-1: unknown);
    pixel_size float32 [B] (nan: unknown); unlabelled uint8 [Bu, 1, H, W] or None."""
    frames: torch.Tensor
    masks: torch.Tensor
    plane: torch.Tensor
    pixel_size: torch.Tensor
    unlabelled: torch.Tensor | None
    rows: np.ndarray
    epoch: int
    step: int

    @property
    def num_images(self) -> int:
        """Labelled frames in this batch: what images/s counts."""
        return int(self.frames.shape[0])

    def to(self, device, non_blocking: bool = False) -> "SegBatch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return SegBatch(mv(self.frames), mv(self.masks), mv(self.plane), mv(self.pixel_size),
                        mv(self.unlabelled), self.rows, self.epoch, self.step)


def labelled_patients(patient_ids, fraction: float, seed: int = 0, count: int | None = None) -> list:
    """The patients whose labels are used: ceil(fraction * n) of them (at least 1), or ``count``
    of them, ranked by a hash of (seed, id). Nested in ``fraction`` and ``count``, and
    independent of which other patients exist."""
    if not 0.0 < fraction <= 1.0:
        raise SonostreamError(f"label fraction must be in (0, 1], got {fraction}")
    ids = sorted(set(patient_ids))
    if count is not None and not 1 <= count <= len(ids):
        raise SonostreamError(f"{count} labelled patients asked for, but only {len(ids)} patients "
                              "have masks; ask for at most that many (data.label_patients)")
    rank = sorted(ids, key=lambda p: hashlib.sha256(f"{seed}\x00labels\x00{p}".encode()).digest())
    n = count if count is not None else max(1, math.ceil(fraction * len(ids) - 1e-9))
    return rank[:n] if ids else []


@dataclass
class Selection:
    """The training frames of a run: labelled rows, and the rows consistency losses may use."""
    labelled: np.ndarray       # index rows whose masks are used
    unlabelled: np.ndarray     # every row of the split (labels ignored): semi-supervised input
    patients: list             # the labelled patients
    total_patients: int


def select_frames(view: IndexView, split: str, fraction: float, seed: int, where: str,
                  count: int | None = None) -> Selection:
    rows = view.rows_of(split)
    masked = rows[view.has_mask[rows]]
    if len(masked) == 0:
        raise SonostreamError(f"{where} has no frames with masks in split {split!r}: segmentation "
                              "needs labelled frames (build from a frames CSV with a mask_path "
                              "column, e.g. `sonostream synth` or `sonostream import hc18`)")
    ids = view.patient_ids[np.unique(view.patient[masked])]
    try:
        chosen = labelled_patients(ids.tolist(), fraction, seed, count)
    except SonostreamError as e:
        raise SonostreamError(f"{where}, split {split!r}: {e}") from None
    codes = np.flatnonzero(np.isin(view.patient_ids, chosen))
    labelled = masked[np.isin(view.patient[masked], codes)]
    return Selection(labelled=labelled, unlabelled=rows, patients=chosen, total_patients=len(ids))


def stream_rows(rows: np.ndarray, positions: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """Rows at global ``positions`` of an endless sequence of per-epoch permutations of ``rows``."""
    n = len(rows)
    epochs, within = np.divmod(positions, n)
    out = np.empty(len(positions), np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, stream, int(e), 0x5E6]).permutation(n)
        sel = epochs == e
        out[sel] = rows[perm[within[sel]]]
    return out


class SegLoader:
    def __init__(self, data, cfg: SegDataConfig | None = None, *, batch_size: int,
                 unlabelled_batch: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device="cpu", cache_dir=None, shard_url=None):
        self.cfg = cfg or SegDataConfig()
        self.B, self.Bu = batch_size, unlabelled_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.source = ShardSource(data, cache_dir=cache_dir, shard_url=shard_url)
        self.view = IndexView(self.source.index)
        self.label_seed = seed if self.cfg.label_seed is None else self.cfg.label_seed
        self.sel: Selection = select_frames(self.view, self.cfg.split, self.cfg.label_fraction,
                                            self.label_seed, str(data), self.cfg.label_patients)
        s = self.cfg.image_size
        rows = self.sel.labelled
        if s is None:
            sizes = set(map(tuple, self.view.stored_size[rows][:, 2:].tolist()))
            if len(sizes) != 1:
                raise SonostreamError(f"{data}: frames have several sizes {sorted(sizes)[:4]}; set "
                                      "data.image_size")
            self.image_size = sizes.pop()
            if self.image_size[0] % 32 or self.image_size[1] % 32:
                raise SonostreamError(f"{data}: stored frames are {self.image_size}, not multiples "
                                      f"of 32; set data.image_size (e.g. 256)")
        else:
            self.image_size = (s, s)
        self.decoder = FrameDecoder(self.source, self.view, self.cfg.decode_threads)
        self.steps_done = 0

    # -- what a step holds -----------------------------------------------------------------------
    @property
    def global_batch(self) -> int:
        return self.B * self.world_size

    def step_rows(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(labelled rows, unlabelled rows or None) of this rank at global step ``step``."""
        def take(rows, b, stream):
            pos = step * b * self.world_size + self.rank * b + np.arange(b)
            return stream_rows(rows, pos, self.seed, stream)
        lab = take(self.sel.labelled, self.B, 0)
        return lab, (take(self.sel.unlabelled, self.Bu, 1) if self.Bu else None)

    def batch(self, step: int) -> SegBatch:
        lab, unl = self.step_rows(step)
        v, size = self.view, self.image_size
        frames, masks = self.decoder.images(lab, size, masks=True)
        unlabelled = None if unl is None else torch.from_numpy(
            self.decoder.images(unl, size)).unsqueeze(1)
        return SegBatch(torch.from_numpy(frames).unsqueeze(1), torch.from_numpy(masks).unsqueeze(1),
                        torch.from_numpy(v.plane[lab]),
                        torch.from_numpy(v.pixel_size[lab].astype(np.float32)), unlabelled, lab,
                        epoch=self.epoch_of(step), step=step)

    def epoch_of(self, step: int) -> int:
        return step * self.global_batch // len(self.sel.labelled)

    def steps_per_epoch(self) -> int:
        return max(1, len(self.sel.labelled) // self.global_batch)

    # -- iteration: one "epoch" of steps per call --------------------------------------------------
    def __iter__(self):
        start = self.steps_done
        steps = range(start, start + self.steps_per_epoch())
        source = (self.batch(s) for s in steps)
        it = prefetched(source, self.cfg.prefetch) if self.cfg.prefetch > 0 else source
        for b in it:
            self.steps_done = b.step + 1
            yield b.to(self.device, non_blocking=True)

    # -- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint keeps: the steps taken (the whole position: see the module notes),
        the epoch and labelled-frame position they reach (for people), and what must match to
        resume (seed, split, label fraction, labelled frames)."""
        return {"version": STATE_VERSION, "steps": self.steps_done,
                "epoch": self.epoch_of(self.steps_done),
                "position": self.steps_done * self.global_batch, "seed": self.seed,
                "split": self.cfg.split, "label_fraction": self.cfg.label_fraction,
                "label_patients": self.cfg.label_patients, "label_seed": self.label_seed,
                "batch_size": self.B, "unlabelled_batch": self.Bu, "world_size": self.world_size,
                "labelled_frames": int(len(self.sel.labelled))}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        differ = [k for k in ("seed", "split", "label_fraction", "labelled_frames")
                  if state.get(k) != mine[k]]
        # checkpoints from before label_patients / label_seed drew with the run's seed
        differ += [k for k, old in (("label_patients", None), ("label_seed", mine["seed"]))
                   if state.get(k, old) != mine[k]]
        if differ:
            raise SonostreamError("cannot resume: the checkpoint's data used other " + ", ".join(
                f"{k}={state.get(k)!r} (now {mine[k]!r})" for k in differ)
                + "; use the run's config and dataset")
        if (state["batch_size"], state["world_size"]) != (self.B, self.world_size):
            # the global positions continue, so no frame is skipped or repeated out of turn
            consumed = state["steps"] * state["batch_size"] * state["world_size"]
            self.steps_done = consumed // self.global_batch
        else:
            self.steps_done = int(state["steps"])

    def describe(self) -> dict:
        return {"split": self.cfg.split, "label_fraction": self.cfg.label_fraction,
                "label_patients": self.cfg.label_patients, "label_seed": self.label_seed,
                "labelled_patients": len(self.sel.patients), "patients": self.sel.total_patients,
                "labelled_frames": int(len(self.sel.labelled)),
                "unlabelled_frames": int(len(self.sel.unlabelled)) if self.Bu else 0,
                "image_size": list(self.image_size)}

