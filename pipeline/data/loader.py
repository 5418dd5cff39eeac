"""ClipLoader: the loader the trainers use. Picks the CPU or DALI path, keeps the resumable state.

    loader = ClipLoader("data/shards", LoaderConfig(batch_size=32), seed=0,
                        rank=acc.process_index, world_size=acc.num_processes, device=acc.device)
    loader.load_state_dict(ckpt["loader"])          # optional: exact resume
    for batch in loader:                            # one epoch; call again for the next
        ...
        ckpt["loader"] = loader.state_dict()        # after the step that used `batch`

The state is (epoch, position): position counts the clips of the epoch's global order that all
ranks together have consumed. Same world size: the same batches as an uninterrupted run.
Another world size or batch size: the same global order continues from ``position``.

A clip with a corrupt member (does not decode, fails its checksum) is skipped and reported; past
``max_fault_share`` of the rank's clips in an epoch the loader stops with an error instead, so
a broken dataset never trains on what is left of it.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import torch

from preprocessing.format import SonostreamError

from .clips import ClipConfig, video_table
from .decode import FrameDecoder
from .index import IndexView
from .placement import steps_per_epoch
from .plan import EpochPlan
from .source import ShardSource
from .batch import resize_frames
from .tasks import MASK_MODES, PM_POSITIVES, clip_masks, io_classes

log = logging.getLogger("sonostream.loader")
LOADERS = ("auto", "cpu", "dali")
TRANSPORTS = ("ring", "dataloader")
RESIZES = ("auto", "batch", "frame")
STATE_VERSION = 1
_ORDER_KEYS = ("seed", "clip_len", "stride", "short_videos", "splits", "shuffle_window",
               "patient_groups")
_ORDER_DEFAULTS = {"patient_groups": 1}   # what a checkpoint without the key used


@dataclass
class LoaderConfig:
    batch_size: int = 32                  # clips per rank per step
    clip_len: int = 4                     # K frames per clip
    stride: int = 1                       # frames between clip frames
    short_videos: str = "repeat"          # videos shorter than a clip: "repeat" frames or "skip"
    splits: tuple = ("train",)
    image_size: int | None = None         # None: as stored in the shards
    resize: str = "auto"                  # CPU path, frames stored at one other size: "batch"
                                          # resizes each batch once on the training device
                                          # (antialiased bilinear, DALI's filter); "frame" each
                                          # frame in the decode threads (OpenCV INTER_AREA);
                                          # "auto": "batch" on a GPU, "frame" on the CPU
    shuffle_window: int = 1024            # clips permuted together (the shuffle buffer)
    patient_groups: int = 2               # the order holds runs of this many clips of one
                                          # patient, other videos first (1: single clips)
    mask_ratio: float = 0.6               # MIR: share of patches masked per frame
    mask_grid: tuple = (8, 8)             # MIR: patches per frame (rows, cols)
    mask_mode: str = "tube"               # MIR: "tube" = one mask per clip (all K frames hide the
                                          # same patches, so IO sees motion, not masks); "frame"
                                          # = a fresh mask per frame
    io_reverse: str = "same"              # IO: a permutation and its reverse are one class
    pm_positive: str = "patient"          # PM: positive = a frame of another video of the
                                          # patient ("patient") or of the same clip ("video")
    num_workers: int | None = None        # CPU path: decode worker processes; None: one per
                                          # decode_threads (where fork exists, else 0); 0:
                                          # decode in threads of the training process
    transport: str = "ring"               # CPU path, workers > 0: "ring" = forked workers
                                          # write batches into a shared ring of batch slots;
                                          # "dataloader" = torch DataLoader workers (a shared-
                                          # memory segment per batch: slower)
    decode_threads: int = 2               # CPU path: decoding cores (worker processes unless
                                          # num_workers says otherwise; threads with 0)
    prefetch: int = 2                     # batches prefetched per worker
    loader: str = "auto"                  # "cpu", "dali", or "auto" (DALI when CUDA + DALI)
    dali_threads: int = 4
    max_fault_share: float = 0.01         # share of the rank's clips per epoch that may be
                                          # skipped for corrupt members; more stops the run

    def __post_init__(self):
        self.splits = tuple(self.splits)
        self.mask_grid = tuple(self.mask_grid)
        if self.mask_mode not in MASK_MODES:
            raise SonostreamError(f"loader.mask_mode must be one of {MASK_MODES}, got "
                                  f"{self.mask_mode!r}")
        if self.loader not in LOADERS:
            raise SonostreamError(f"loader must be one of {LOADERS}, got {self.loader!r}")
        if self.transport not in TRANSPORTS:
            raise SonostreamError(f"loader.transport must be one of {TRANSPORTS}, got "
                                  f"{self.transport!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise SonostreamError(f"loader.num_workers must be >= 0 (0: decode threads), got "
                                  f"{self.num_workers}")
        if self.resize not in RESIZES:
            raise SonostreamError(f"loader.resize must be one of {RESIZES}, got {self.resize!r}")
        if self.batch_size < 1:
            raise SonostreamError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.max_fault_share <= 1.0:
            raise SonostreamError(f"max_fault_share must be in [0, 1] (1: never stop for corrupt "
                                  f"members), got {self.max_fault_share}")
        if self.patient_groups < 1:
            raise SonostreamError(f"loader.patient_groups must be >= 1 (1: no patient groups), "
                                  f"got {self.patient_groups}")
        if self.pm_positive not in PM_POSITIVES:
            raise SonostreamError(f"loader.pm_positive must be one of {PM_POSITIVES}, got "
                                  f"{self.pm_positive!r}")
        if self.clip_len >= 2:
            io_classes(self.clip_len, self.io_reverse)  # raises a clear error for bad K / reverse

    @property
    def workers(self) -> int:
        """Decode worker processes of the CPU path (``num_workers``, resolved)."""
        if self.num_workers is not None:
            return self.num_workers
        from .ring import ring_available
        return max(1, self.decode_threads) if ring_available() else 0

    @property
    def clip(self) -> ClipConfig:
        return ClipConfig(self.clip_len, self.stride, self.short_videos)


def resolve_loader(kind: str, device) -> str:
    """'auto' -> 'dali' when the device is CUDA and DALI imports, else 'cpu'."""
    from .dali import dali_available
    if kind == "dali" and not dali_available():
        raise SonostreamError("--loader dali needs NVIDIA DALI: pip install nvidia-dali-cuda130 "
                              "(or use --loader cpu / auto)")
    if kind != "auto":
        return kind
    return "dali" if torch.device(device).type == "cuda" and dali_available() else "cpu"


@dataclass
class LoaderState:
    epoch: int = 0
    position: int = 0


class ClipLoader:
    def __init__(self, data, cfg: LoaderConfig | None = None, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, device="cpu", cache_dir=None, shard_url=None,
                 cache_limit_gb: float | None = None):
        self.cfg = cfg or LoaderConfig()
        if not 0 <= rank < world_size:
            raise SonostreamError(f"rank {rank} is outside 0..{world_size - 1}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.kind = resolve_loader(self.cfg.loader, self.device)
        self.source = ShardSource(data, cache_dir=cache_dir, shard_url=shard_url,
                                  cache_limit_gb=cache_limit_gb)
        self.view = IndexView(self.source.index)
        self.table = video_table(self.view, self.cfg.splits)
        size = self.cfg.image_size or int(self.source.manifest.get("image_size") or 0)
        if not size:  # shards kept source sizes: all frames must agree
            hw = {(int(h), int(w)) for h, w in self.view.stored_size[self.table.rows][:, 2:].tolist()}
            if len(hw) != 1:
                raise SonostreamError("frames have several sizes; set image_size to resize them")
            self.image_size = hw.pop()
        else:
            self.image_size = (size, size)
        # CPU path, resize="batch": decode at the stored size, resize the batch on the device
        stored = int(self.source.manifest.get("image_size") or 0)
        self.resize = self.cfg.resize if self.cfg.resize != "auto" else (
            "batch" if self.device.type == "cuda" else "frame")
        self.decode_size = (stored, stored) if (
            self.kind == "cpu" and self.resize == "batch" and stored) else self.image_size
        self.state = LoaderState()
        gh, gw = self.cfg.mask_grid
        if gh > self.image_size[0] or gw > self.image_size[1] or min(gh, gw) < 1:
            raise SonostreamError(f"mask_grid {self.cfg.mask_grid} does not fit {self.image_size} "
                                  f"frames")
        self.decoder = FrameDecoder(self.source, self.view, self.cfg.decode_threads)
        self.faults: list = []
        self._pool = None
        g = self.cfg.patient_groups
        if g > 1 and self.cfg.batch_size % g:
            log.warning("loader.patient_groups=%d orders clips in groups of %d of one patient, but "
                        "each rank's batch holds %d clips, so some groups are split between "
                        "batches (fewer PM positives from another video): use a per-rank batch "
                        "size that is a multiple of %d", g, g, self.cfg.batch_size, g)

    # -- placement ------------------------------------------------------------------------------
    def plan(self, epoch: int | None = None, start: int | None = None) -> EpochPlan:
        c = self.cfg
        return EpochPlan.make(self.table, c.clip, epoch=self.state.epoch if epoch is None else epoch,
                              seed=self.seed, start=self.state.position if start is None else start,
                              batch_size=c.batch_size, world_size=self.world_size, rank=self.rank,
                              shuffle_window=c.shuffle_window, image_size=self.image_size,
                              io_reverse=c.io_reverse, pm_positive=c.pm_positive,
                              patient_groups=c.patient_groups)

    def __len__(self) -> int:
        """Steps left in the current epoch (equal on every rank)."""
        return self.plan().steps

    def clips_per_epoch(self, epoch: int | None = None) -> int:
        return len(self.plan(epoch, 0).order)

    # -- iteration ------------------------------------------------------------------------------
    def _batches(self, plan: EpochPlan):
        if self.kind == "dali":
            from .dali import dali_batches
            return dali_batches(plan, self.decoder, device=self.device, threads=self.cfg.dali_threads)
        from .cpu import cpu_batches
        on_host = self.device.type == "cpu"   # resized in the background; else after the copy
        return cpu_batches(plan, self.decoder, num_workers=self.cfg.workers,
                           prefetch=self.cfg.prefetch, pin_memory=self.device.type == "cuda",
                           decode_size=self.decode_size, resize_on_host=on_host,
                           pool=self._decode_pool(on_host))

    def _decode_pool(self, on_host: bool):
        """The decode processes and their shared ring of batch slots for ``transport="ring"``
        (None for the other CPU transports, or where ``fork`` is missing: DataLoader workers
        then). Made at the first epoch, at the batches' output size, and kept across epochs
        (the ring's pages are faulted in once, the processes forked once) until ``close``."""
        from .ring import HELD, DecodePool, SlotRing, ring_available
        c = self.cfg
        if c.workers == 0 or c.transport != "ring" or not ring_available():
            return None
        size = self.image_size if on_host else self.decode_size
        shape = (c.batch_size, c.clip_len, *size)
        slots = c.workers * max(1, c.prefetch) + HELD
        pool = self._pool
        if pool is None or pool.closed or (pool.ring.shape, pool.ring.slots) != (shape, slots):
            same = pool is not None and (pool.ring.shape, pool.ring.slots) == (shape, slots)
            self.close()            # (after an error: its slots in flight were given back)
            ring = pool.ring if same else SlotRing(slots, shape)
            self._pool = DecodePool(self.decoder, ring, c.workers, self.decode_size, size)
            self._pool_finalizer = weakref.finalize(self, self._pool.close)
        return self._pool

    def close(self) -> None:
        """Stop the CPU path's decode processes (a later epoch starts them again)."""
        if self._pool is not None:
            self._pool_finalizer.detach()
            self._pool.close()
            self._pool = None

    def __iter__(self):
        plan = self.plan()
        start, G = self.state.position, self.cfg.batch_size * self.world_size
        expected = 0
        epoch_faults: list = []
        for batch in self._batches(plan):
            if batch.step != expected:
                raise RuntimeError(f"loader produced step {batch.step}, expected {expected}")
            expected += 1
            self.faults.extend((plan.epoch, *f) for f in batch.faults)
            epoch_faults += batch.faults
            self._check_fault_budget(plan, epoch_faults)
            batch = batch.to(self.device, non_blocking=True)
            if tuple(batch.frames.shape[-2:]) != self.image_size:   # resize="batch", on a GPU
                batch.frames = resize_frames(batch.frames, self.image_size)
            batch.mir_patches = self.mir_patches(batch)
            self.state.position = start + expected * G
            yield batch
        listed = [f"{s}:{k} ({r})" for s, k, r in epoch_faults]
        n = len(listed)
        msg = f"epoch {plan.epoch}: {expected} steps on rank {self.rank}"
        if n:
            msg += f"; {n} corrupt member(s) skipped: " + ", ".join(listed[:10]) + (
                f" and {len(listed) - 10} more" if len(listed) > 10 else "")
        (log.warning if n else log.info)(msg)
        self.state = LoaderState(epoch=plan.epoch + 1, position=0)

    def _check_fault_budget(self, plan: EpochPlan, faults: list) -> None:
        """SonostreamError once more than ``max_fault_share`` of this rank's clips in the epoch
        (those the plan gives it: ``steps x batch_size``) were skipped for corrupt members. One
        bad member in a large dataset goes on; a dataset that is mostly corrupt stops within its
        first steps instead of training on what is left."""
        clips, share = plan.positions.size, self.cfg.max_fault_share
        if len(faults) <= share * clips:
            return
        members = {(s, k) for s, k, _ in faults}
        listed = ", ".join(f"{s}:{k} ({r})" for s, k, r in faults[:5])
        more = f" and {len(faults) - 5} more" if len(faults) > 5 else ""
        raise SonostreamError(
            f"epoch {plan.epoch}, rank {self.rank}: {len(faults)} clip(s) skipped for "
            f"{len(members)} corrupt member(s), more than loader.max_fault_share={share} of the "
            f"rank's {clips} clips in the epoch allows ({int(share * clips)}): {listed}{more}. "
            f"Run `sonostream verify {self.source.root}` to list the bad members and rebuild the "
            "dataset (`sonostream build --csv CSV --out DIR --overwrite`), or raise "
            "loader.max_fault_share (e.g. --set loader.max_fault_share=0.05) to train without them")

    def mir_patches(self, batch) -> torch.Tensor:
        """[B, K, gh, gw] MIR patch masks, drawn on the training device from (seed, epoch, clip):
        one per clip (``mask_mode="tube"``) or one per frame (``"frame"``)."""
        b, k = batch.frames.shape[:2]
        key = int(batch.position[0]) if b else 0
        seed = int(np.random.SeedSequence([self.seed, batch.epoch, key + 1, 0x4D49]).generate_state(1)[0])
        g = torch.Generator(device=self.device).manual_seed(seed)
        return clip_masks(b, k, self.cfg.mask_grid, self.cfg.mask_ratio, self.cfg.mask_mode, g,
                          self.device)

    # -- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        c = self.cfg
        return {"version": STATE_VERSION, "epoch": self.state.epoch, "position": self.state.position,
                "seed": self.seed, "clip_len": c.clip_len, "stride": c.stride,
                "short_videos": c.short_videos, "splits": list(c.splits),
                "shuffle_window": c.shuffle_window, "patient_groups": c.patient_groups,
                "batch_size": c.batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        theirs = {k: state.get(k, _ORDER_DEFAULTS.get(k)) for k in _ORDER_KEYS}
        differ = [k for k in _ORDER_KEYS if list_or(theirs[k]) != list_or(mine[k])]
        if differ:
            raise SonostreamError("cannot resume: the checkpoint's loader used other " + ", ".join(
                f"{k}={theirs[k]!r} (now {mine[k]!r})" for k in differ)
                + "; these fix the epoch's clip order, so set them back to resume exactly")
        n = self.clips_per_epoch(state["epoch"])
        if not 0 <= state["position"] <= n:
            raise SonostreamError(f"cannot resume: position {state['position']} is beyond the "
                                  f"epoch's {n} clips (is this the same dataset?)")
        self.state = LoaderState(epoch=int(state["epoch"]), position=int(state["position"]))

    def describe(self) -> dict:
        clips = self.clips_per_epoch()
        return {"loader": self.kind, "videos": self.table.num_videos, "frames": self.table.num_frames,
                "clips_per_epoch": clips,
                "steps_per_epoch": steps_per_epoch(clips, self.cfg.batch_size, self.world_size),
                "image_size": list(self.image_size), **{k: v for k, v in asdict(self.cfg).items()
                                                        if k in ("batch_size", "clip_len", "stride")}}


def list_or(v):
    return list(v) if isinstance(v, (list, tuple)) else v
