"""Multi-task pretraining (MIR + PM + IO) on Accelerate; DeepSpeed ZeRO through Accelerate.

:func:`train` checks everything that can be wrong with the input, builds the accelerator, loader,
model and optimizer, and hands :func:`pipeline.train.loop.fit` one step: encode the B*K frames
of the batch's clips once and feed all three heads. Then it exports ``encoder.pt``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from pipeline.config import flat, load_config, to_dict
from preprocessing.atomic import write_text
from preprocessing.dataset import check_dataset_dir
from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.source import is_url
from pipeline.data.tasks import io_classes
from pipeline.models import EncoderConfig, HeadsConfig, PretrainModel, export_encoder
from pipeline.models.pretrain import apply_mask
from pipeline.objectives import TasksConfig, pretrain_losses

from .checkpoint import check_saved_sections
from .logs import plot_curves, read_metrics
from .loop import (StopSignal, TrainConfig, TrainingError, check_run_dir, fill_deepspeed_auto, fit,
                   full_state_dict, make_accelerator, noise_seed, per_rank_batch)
from .optim import OptimConfig, build_optimizer, build_scheduler

__all__ = ["PretrainConfig", "TrainConfig", "TrainingError", "build_model", "load_pretrain_config",
           "pretrain_forward", "train"]


@dataclass
class PretrainConfig:
    model: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_pretrain_config(path, overrides=(), max_steps: int | None = None) -> PretrainConfig:
    """The run config from YAML ``path`` + ``SECTION.KEY=VALUE`` overrides (+ ``--max-steps``)."""
    overrides = list(overrides)
    raw = {}
    if path is not None and Path(path).is_file():
        raw = yaml.safe_load(Path(path).read_text()) or {}
    in_file = isinstance(raw.get("loader"), dict) and "batch_size" in raw["loader"]
    if in_file or any(o.split("=", 1)[0].strip() == "loader.batch_size" for o in overrides):
        raise ValueError("loader.batch_size is not a pretraining key: set train.batch_size, the "
                         "clips per step over all ranks (each rank takes batch_size / world size)")
    if max_steps is not None:
        overrides.append(f"train.steps={max_steps}")
    cfg = load_config(path, PretrainConfig, overrides)
    if "io" in cfg.tasks.active:
        io_classes(cfg.loader.clip_len, cfg.loader.io_reverse)   # K and reverse fit the IO task
    return cfg


# ---------------------------------------------------------------------------------------------
# checks that need no accelerator: they fail before any GPU time is spent
# ---------------------------------------------------------------------------------------------
def check_inputs(data: str, out: Path, resume: str | None) -> Path | None:
    if not is_url(data):
        check_dataset_dir(data)   # the contract's own checks and messages
    return check_run_dir(out, resume)


def check_resume_config(ckpt: Path, cfg: PretrainConfig) -> None:
    """The checkpoint's model must be the one we build, or loading it fails deep in torch."""
    saved = check_saved_sections(ckpt, to_dict(cfg), ("model", "heads"))
    if saved is not None and TasksConfig(**saved["tasks"]).active != cfg.tasks.active:
        raise ValueError(f"cannot resume from {ckpt}: it trained tasks {TasksConfig(**saved['tasks']).active}, "
                         f"this run has {cfg.tasks.active}")


# ---------------------------------------------------------------------------------------------
def train(cfg: PretrainConfig, data: str, out, resume: str | None = None,
          stop_after: int | None = None, cache_dir=None, shard_url=None, quiet: bool = False) -> dict:
    """Pretrain; returns a summary (step reached, last metrics, paths). Raises ValueError on bad input."""
    out = Path(out)
    stopper = StopSignal()   # first: a signal during set-up must not kill the job uncheckpointed
    ckpt = check_inputs(data, out, resume)
    if ckpt is not None:
        check_resume_config(ckpt, cfg)
    tc = cfg.train
    acc = make_accelerator(tc, out)
    per_rank = per_rank_batch(acc, tc)

    from accelerate.utils import set_seed
    set_seed(tc.seed)   # the same initial weights on every rank
    loader = ClipLoader(data, replace(cfg.loader, batch_size=per_rank), seed=tc.seed,
                        rank=acc.process_index, world_size=acc.num_processes, device=acc.device,
                        cache_dir=cache_dir, shard_url=shard_url)
    if loader.clips_per_epoch(0) < tc.batch_size:
        raise ValueError(f"{data} gives {loader.clips_per_epoch(0)} clips per epoch, fewer than one "
                         f"step's train.batch_size {tc.batch_size}: lower train.batch_size or "
                         "loader.clip_len, or add data")
    k, tasks = cfg.loader.clip_len, cfg.tasks
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    fill_deepspeed_auto(acc, per_rank, tc)

    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        acc.print(f"pretraining {cfg.model.arch} on {loader.describe()} | {acc.num_processes} "
                  f"process(es), {per_rank} clips x {k} frames per rank, accumulation "
                  f"{tc.grad_accum}, precision {tc.precision}, {acc.distributed_type}")
    if tc.trackers:
        acc.init_trackers("tb", config=flat(to_dict(cfg)))

    def step_fn(model, batch, step, micro_step):
        return pretrain_forward(model, batch, tasks, step,
                                noise_seed(tc.seed, micro_step, acc.process_index))

    def figure_fn(out_, batch):
        return _figure_arrays(out_, out_["mask"], tc.figure_frames) if "recon" in out_ else None

    end = fit(acc, model, optimizer, scheduler, loader, tc, out, step_fn=step_fn, ckpt=ckpt,
              run_info={"config": to_dict(cfg)}, stopper=stopper, stop_after=stop_after,
              quiet=quiet, figure_fn=figure_fn)

    step = end["step"]
    sd = full_state_dict(acc, end["model"])
    summary = {"step": step, "complete": end["complete"], "stopped_by": end["stopped_by"], "out": str(out)}
    if acc.is_main_process:
        enc = {kk[len("encoder."):]: v for kk, v in sd.items() if kk.startswith("encoder.")}
        export_encoder(enc, cfg.model.arch, cfg.model.in_chans, out / "encoder.pt", step=step,
                       complete=end["complete"])
        classes = model.io.classes if model.io is not None else 0
        plot_curves(out / "metrics.jsonl", out / "curves.png", io_chance=1 / classes if classes else None)
        rows = read_metrics(out / "metrics.jsonl")
        summary["last"] = rows[-1] if rows else None
        acc.print(f"done: step {step}/{tc.steps}; encoder {out / 'encoder.pt'}, curves {out / 'curves.png'}")
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def build_model(cfg: PretrainConfig) -> PretrainModel:
    """The model a run config describes (random init: seed first)."""
    k, active = cfg.loader.clip_len, cfg.tasks.active
    classes = len(io_classes(k, cfg.loader.io_reverse)) if "io" in active else 0
    return PretrainModel(cfg.model.arch, k, classes, cfg.heads, active, cfg.model.in_chans)


def pretrain_forward(model, batch, tasks: TasksConfig, step: int, seed: int | None):
    """One micro-batch: the B*K frames through the encoder once, then the three heads.
    Returns (weighted loss, the other logged terms, the model's outputs + the MIR mask)."""
    mask = batch.mir_mask if "mir" in tasks.active else None
    out = model(batch.images(), mask, batch.io_perm, batch.pm_a, batch.pm_b, noise_seed=seed)
    losses = pretrain_losses(out, batch, mask, tasks, step)
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
