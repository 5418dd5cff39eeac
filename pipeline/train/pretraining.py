"""Multi-task pretraining (MIR + PM + IO): the run config and the task ``job.run_job`` runs.

The task's step (:func:`pretrain_forward`) encodes the B*K frames of the batch's clips once and
feeds all three heads; at the end the encoder alone goes to ``encoder.pt``. Accelerate, DeepSpeed,
checkpoints and resume are the job skeleton's (``job``) and the loop's (``loop.fit``). With
``train.eval_every`` the same step scores a fixed set of val clips (``heldout``: ``val_io_acc``,
``val_pm_acc_cross_video``, ``val_mir_sector_mse``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.augment import ClipAugmentConfig, augment_clips
from pipeline.data.tasks import io_classes, sector_mask
from pipeline.models import EncoderConfig, HeadsConfig, PretrainModel, export_encoder
from pipeline.models.inputs import to_unit
from pipeline.models.pretext import apply_mask
from pipeline.objectives import TasksConfig, pretrain_losses
from preprocessing.format import SonostreamError

from .config import load_config, pick
from .heldout import pretext_validator
from .job import Context, Parts, run_job
from .logs import plot_reconstruction
from .loop import TrainConfig, noise_seed
from .optim import OPTIM_KEPT, OptimConfig

__all__ = ["PretrainConfig", "Pretraining", "augment_batch", "build_model", "load_pretrain_config",
           "pretrain_forward", "train"]


@dataclass
class PretrainConfig:
    model: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    augment: ClipAugmentConfig = field(default_factory=ClipAugmentConfig)   # off by default
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # Each rank's loader takes train.batch_size / world size clips (``config.saved_dict``).
    SET_BY_JOB = {"loader.batch_size": "is not a pretraining key: set train.batch_size, the "
                  "clips per step over all ranks (each rank takes batch_size / world size)"}

    # What a checkpoint must share with this config to be resumed (``checkpoint.check_resume``):
    # what shapes the model (clip_len and io_reverse set the IO classes), what the data mean
    # (frame size, the MIR mask, PM's positives), the clip order (seed, stride, ...) and what the
    # optimizer state keeps (OPTIM_KEPT). The rest may change on resume: task weights, the
    # schedule's warm-up and length (train.steps), batch size, logging, checkpointing, workers.
    RESUME_KEYS = ("model", "heads", "loader.clip_len", "loader.io_reverse", "loader.image_size",
                   "loader.mask_ratio", "loader.mask_grid", "loader.mask_mode",
                   "loader.pm_positive", "loader.stride", "loader.short_videos", "loader.splits",
                   "loader.shuffle_window", "loader.patient_groups", "train.seed", *OPTIM_KEPT)
    RESUME_FIX = "start a new run with them in another --out, without --resume"

    def resume_identity(self) -> dict:
        return {**pick(self, self.RESUME_KEYS), "tasks.active": list(self.tasks.active)}


def load_pretrain_config(path, overrides=(), max_steps: int | None = None) -> PretrainConfig:
    """The run config from YAML ``path`` + ``SECTION.KEY=VALUE`` overrides (+ ``--max-steps``)."""
    overrides = list(overrides)
    if max_steps is not None:
        overrides.append(f"train.steps={max_steps}")
    cfg = load_config(path, PretrainConfig, overrides)
    if "io" in cfg.tasks.active:
        io_classes(cfg.loader.clip_len, cfg.loader.io_reverse)   # K and reverse fit the IO task
    check_mir_masking(cfg)
    return cfg


def check_mir_masking(cfg: PretrainConfig) -> None:
    """MIR with no hidden patch has nothing to reconstruct (its loss is 0 and it trains nothing):
    refuse it rather than run a silent no-op."""
    if "mir" not in cfg.tasks.active:
        return
    gh, gw = cfg.loader.mask_grid
    n = int(math.floor(cfg.loader.mask_ratio * gh * gw + 0.5))
    if n < 1:
        raise SonostreamError(
            f"loader.mask_ratio={cfg.loader.mask_ratio} hides no patch of the "
            f"{gh}x{gw} loader.mask_grid while tasks.mir={cfg.tasks.mir} > 0: MIR would have "
            "nothing to reconstruct. Set loader.mask_ratio > 0 (e.g. 0.6), or tasks.mir=0 to "
            "pretrain without MIR")


class Pretraining:
    """The pretraining task for ``job.run_job``: clips in, encoder.pt out."""
    name = "pretraining"

    def check(self, cfg: PretrainConfig, data: str) -> None:
        pass   # the config checked itself when it was loaded

    def build(self, cfg: PretrainConfig, ctx: Context) -> Parts:
        acc, tc = ctx.acc, cfg.train
        loader = ClipLoader(ctx.data, replace(cfg.loader, batch_size=ctx.per_rank), seed=tc.seed,
                            rank=acc.process_index, world_size=acc.num_processes,
                            device=acc.device, cache_dir=ctx.cache_dir, shard_url=ctx.shard_url)
        if loader.clips_per_epoch(0) < tc.batch_size:
            raise SonostreamError(
                f"{ctx.data} gives {loader.clips_per_epoch(0)} clips per epoch, fewer than one "
                f"step's train.batch_size {tc.batch_size}: lower train.batch_size or "
                "loader.clip_len, or add data")
        model = build_model(cfg)
        tasks, k = cfg.tasks, cfg.loader.clip_len

        def step(model, batch, step, micro_step):
            batch = augment_batch(batch, cfg.augment, tc.seed)
            return pretrain_forward(model, batch, tasks, step,
                                    noise_seed(tc.seed, micro_step, acc.process_index))

        def figure(outputs, batch, step):
            if "recon" in outputs:
                plot_reconstruction(*_figure_arrays(outputs, outputs["mask"], tc.figure_frames),
                                    ctx.out / "figures" / f"recon-step-{step:06d}.png",
                                    title=f"step {step}")

        validate, off = (pretext_validator(cfg, ctx, loader.view, pretrain_forward)
                         if tc.eval_every else (None, None))
        return Parts(loader, model, step, figure=figure,
                     banner=f"{cfg.model.arch} on {loader.describe()}",
                     per_rank=f"{ctx.per_rank} clips x {k} frames per rank",
                     validate=validate, validation_off=off)

    def export(self, cfg: PretrainConfig, parts: Parts, state_dict: dict, end: dict,
               out: Path) -> dict:
        enc = {k[len("encoder."):]: v for k, v in state_dict.items() if k.startswith("encoder.")}
        export_encoder(enc, cfg.model.arch, cfg.model.in_chans, out / "encoder.pt",
                       image_size=parts.loader.image_size, step=end["step"],
                       complete=end["complete"])
        return {"encoder": str(out / "encoder.pt")}

    def curves(self, cfg: PretrainConfig, parts: Parts) -> dict:
        io = parts.model.io
        return {"io_chance": 1 / io.classes if io is not None and io.classes else None}


def train(cfg: PretrainConfig, data: str, out, resume: str | None = None,
          stop_after: int | None = None, cache_dir=None, shard_url=None, quiet: bool = False) -> dict:
    """Pretrain; returns a summary (step reached, last metrics, paths). Raises SonostreamError on
    bad input."""
    return run_job(cfg, Pretraining(), data, out, resume=resume, stop_after=stop_after,
                   cache_dir=cache_dir, shard_url=shard_url, quiet=quiet)


def build_model(cfg: PretrainConfig) -> PretrainModel:
    """The model a run config describes (random init: seed first)."""
    k, active = cfg.loader.clip_len, cfg.tasks.active
    classes = len(io_classes(k, cfg.loader.io_reverse)) if "io" in active else 0
    return PretrainModel(cfg.model.arch, k, classes, cfg.heads, active, cfg.model.in_chans)


def augment_batch(batch, cfg: ClipAugmentConfig, seed: int):
    """The batch with its clips augmented (one draw per clip, ``augment_clips``) before the
    encoder, so MIR's target is the augmented clean frame; ``cfg.enabled`` false: the batch as
    it came. The draw is seeded from (seed, epoch, the batch's first clip position), on the
    training device: a pure function of what the loader state fixes, so a resumed run draws
    the same augmentations as an uninterrupted one without a generator state to save, and the
    ranks (other positions) draw apart. Held-out validation scores clean clips."""
    if not cfg.enabled:
        return batch
    key = int(batch.position[0]) if batch.batch_size else 0
    s = int(np.random.SeedSequence([seed, batch.epoch, key + 1, 0x4155]).generate_state(1)[0])
    g = torch.Generator(device=batch.frames.device).manual_seed(s)
    return replace(batch, frames=augment_clips(batch.frames, cfg, g))


def pretrain_forward(model, batch, tasks: TasksConfig, step: int, seed: int | None):
    """One micro-batch: the B*K frames through the encoder once, then the three heads.
    Returns (weighted loss, the other logged terms, the model's outputs + the MIR mask).
    MIR is scored inside each clip's fan (``tasks.sector_mask``: lit in some frame of the clip)."""
    mask = batch.mir_mask if "mir" in tasks.active else None
    sector = sector_mask(batch.frames) if mask is not None else None
    out = model(to_unit(batch.frames), mask, batch.io_perm, batch.pm_a, batch.pm_b, noise_seed=seed)
    losses = pretrain_losses(out, batch, mask, tasks, step, sector=sector)
    out["mask"] = mask
    return losses.pop("loss"), losses, out


def _figure_arrays(out: dict, mask, n: int):
    """First n frames of the batch as numpy (all -1..1): masked input, the prediction pasted
    into the hidden patches (the visible ones are the input's, as MAE shows it), target."""
    with torch.no_grad():
        t = out["target"][:n].float()
        m = mask.flatten(0, 1)[:n]
        r = torch.where(m, out["recon"][:n].float().clamp(-1, 1), t)
        return (apply_mask(t, m)[:, 0].cpu().numpy(), r[:, 0].cpu().numpy(), t[:, 0].cpu().numpy())
