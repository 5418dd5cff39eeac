"""Multi-task pretraining (MIR + PM + IO) on Accelerate; DeepSpeed ZeRO through Accelerate.

Read top to bottom, :func:`train` is one training run: check everything that can be wrong with
the input, build the accelerator, loader, model and optimizer, resume, then loop over optimizer
steps. Each micro-step encodes the B*K frames of the batch's clips once and feeds all three heads.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.config import flat, load_config, to_dict
from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.source import is_url
from pipeline.data.tasks import io_classes
from pipeline.models import EncoderConfig, HeadsConfig, PretrainModel, export_encoder
from pipeline.models.pretrain import apply_mask
from pipeline.objectives import TasksConfig, pretrain_losses

from .checkpoint import (TrainState, latest_checkpoint, list_checkpoints, resolve_resume,
                         save_checkpoint)
from .logs import MetricsLog, plot_curves, plot_reconstruction, read_metrics
from .optim import OptimConfig, build_optimizer, build_scheduler

log = logging.getLogger("sonostream.pretrain")
PRECISIONS = ("no", "bf16", "fp16")


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss stays non-finite); the message says what to change."""


@dataclass
class TrainConfig:
    batch_size: int = 256          # clips per micro-step over ALL ranks (each rank: / world size)
    steps: int = 10000             # optimizer steps: the schedule's length and the run's end
    grad_accum: int = 1            # micro-steps per optimizer step
    precision: str = "bf16"        # no | bf16 | fp16 (autocast; fp16 adds a loss scaler)
    clip_grad: float = 1.0         # max global gradient norm (0: no clipping)
    seed: int = 0                  # model init, loader order, masks, VAE noise
    log_every: int = 10            # metrics.jsonl / trackers / console every N steps
    checkpoint_every: int = 1000   # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 3      # newest step-N folders kept (0: keep all)
    figure_every: int = 1000       # masked / reconstruction / target figure every N steps (0: off)
    figure_frames: int = 4         # frames shown in that figure
    max_nonfinite: int = 10        # stop after this many steps in a row with a non-finite loss
    trackers: tuple = ("tensorboard",)   # Accelerate trackers (tensorboard, wandb, ...); [] = none

    def __post_init__(self):
        self.trackers = tuple(self.trackers)
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for k in ("batch_size", "steps", "grad_accum", "log_every", "checkpoint_every", "figure_frames",
                  "max_nonfinite"):
            if getattr(self, k) < 1:
                raise ValueError(f"train.{k} must be >= 1, got {getattr(self, k)}")


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
        d = Path(data)
        if not d.is_dir():
            raise ValueError(f"--data {d} is not a folder; pass the --out folder of `sonostream build`")
        if not (d / "index.parquet").is_file():
            raise ValueError(f"--data {d} has no index.parquet (an unfinished or wrong folder); build "
                             f"the dataset with `sonostream build --csv FRAMES.csv --out {d}`")
    ckpt = resolve_resume(resume, out)
    if ckpt is None and list_checkpoints(out):
        raise ValueError(f"{out} already holds checkpoints; pass --resume latest to continue that "
                         "run, or choose another --out")
    return ckpt


def check_resume_config(ckpt: Path, cfg: PretrainConfig) -> None:
    """The checkpoint's model must be the one we build, or loading it fails deep in torch."""
    info = ckpt / "run.yaml"
    if not info.is_file():
        return
    saved = yaml.safe_load(info.read_text())["config"]
    now = to_dict(cfg)
    for section in ("model", "heads"):
        if saved.get(section) != now[section]:
            raise ValueError(f"cannot resume from {ckpt}: its {section} config {saved.get(section)} "
                             f"differs from this run's {now[section]}; use the run's config")
    if TasksConfig(**saved["tasks"]).active != cfg.tasks.active:
        raise ValueError(f"cannot resume from {ckpt}: it trained tasks {TasksConfig(**saved['tasks']).active}, "
                         f"this run has {cfg.tasks.active}")


def make_accelerator(cfg: PretrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    cuda = torch.cuda.is_available()
    use_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if cfg.train.precision == "fp16" and not cuda:
        raise ValueError("train.precision fp16 needs a GPU; use bf16 or no on CPU")
    # Without CUDA, gloo. `cpu=True` makes Accelerate pick its MULTI_CPU (gloo) mode, but it also
    # drops a DeepSpeed plugin, so the DeepSpeed path keeps cpu=False and passes gloo explicitly.
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1 or use_ds
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if multi and not cuda else []
    if use_ds and cfg.train.precision == "fp16":
        raise ValueError("with DeepSpeed, train.precision runs as torch autocast inside the engine, "
                         "which has no fp16 loss scaler here: use train.precision bf16")
    # DeepSpeed: Accelerate applies no autocast and DeepSpeed's own bf16 mode casts the weights
    # (BatchNorm then sees bf16 weights beside fp32 stats). So the engine keeps fp32 weights and
    # runs the forward under torch autocast (fill_deepspeed_auto); encoder.pt stays fp32.
    return Accelerator(cpu=not cuda and not use_ds,
                       mixed_precision="no" if use_ds else cfg.train.precision,
                       gradient_accumulation_steps=cfg.train.grad_accum,
                       log_with=list(cfg.train.trackers) or None, project_dir=str(out),
                       kwargs_handlers=kwargs)


def fill_deepspeed_auto(acc, per_rank: int, cfg: PretrainConfig) -> None:
    """Our loader is not a DataLoader, so DeepSpeed's "auto" batch and clipping come from here."""
    plugin = acc.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for key, value in (("train_micro_batch_size_per_gpu", per_rank),
                       ("gradient_clipping", cfg.train.clip_grad)):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    if cfg.train.precision == "bf16" and "torch_autocast" not in ds:
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}


def noise_seed(seed: int, micro_step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, micro_step, rank, 0x5641]).generate_state(1)[0])


class StopSignal:
    """SIGTERM / SIGUSR1 (Slurm's warning before a time limit): checkpoint at the next step, exit."""

    def __init__(self):
        self.received = None
        for s in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(s, self._handle)
            except ValueError:   # not the main thread (e.g. called from a notebook thread)
                pass

    def _handle(self, signum, _frame):
        self.received = signal.Signals(signum).name


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
    acc = make_accelerator(cfg, out)
    world = acc.num_processes
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size {tc.batch_size} does not divide by the world size {world}; "
                         f"use a multiple of {world}, e.g. {max(world, tc.batch_size // world * world)}")
    per_rank = tc.batch_size // world

    from accelerate.utils import set_seed
    set_seed(tc.seed)   # the same initial weights on every rank
    loader = ClipLoader(data, replace(cfg.loader, batch_size=per_rank), seed=tc.seed,
                        rank=acc.process_index, world_size=world, device=acc.device,
                        cache_dir=cache_dir, shard_url=shard_url)
    if loader.clips_per_epoch(0) < tc.batch_size:
        raise ValueError(f"{data} gives {loader.clips_per_epoch(0)} clips per epoch, fewer than one "
                         f"step's train.batch_size {tc.batch_size}: lower train.batch_size or "
                         "loader.clip_len, or add data")
    k = cfg.loader.clip_len
    classes = len(io_classes(k, cfg.loader.io_reverse)) if "io" in cfg.tasks.active else 0
    model = PretrainModel(cfg.model.arch, k, classes, cfg.heads, cfg.tasks.active, cfg.model.in_chans)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    fill_deepspeed_auto(acc, per_rank, cfg)
    model, optimizer = acc.prepare(model, optimizer)
    state = TrainState()
    acc.register_for_checkpointing(scheduler, state)
    if ckpt is not None:
        acc.load_state(str(ckpt))
        loader.load_state_dict(state.loader)
        acc.print(f"resumed from {ckpt} at step {state.step} (epoch {loader.state.epoch}, "
                  f"clip {loader.state.position})")

    main = acc.is_main_process
    metrics = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        metrics = MetricsLog(out / "metrics.jsonl", resume_step=state.step if ckpt else None)
        acc.print(f"pretraining {cfg.model.arch} on {loader.describe()} | {world} process(es), "
                  f"{per_rank} clips x {k} frames per rank, accumulation {tc.grad_accum}, "
                  f"precision {tc.precision}, {acc.distributed_type}")
    if tc.trackers:
        acc.init_trackers("tb", config=flat(to_dict(cfg)))

    stop_at = min(tc.steps, stop_after) if stop_after else tc.steps
    step = state.step
    window, count = {}, 0                      # this rank's sums since the last log
    carried = dict(state.window), state.window_count   # all ranks' sums carried over a resume
    grad_norm, bad, nonfinite_run = None, False, 0
    frames_seen, t_log = 0, time.perf_counter()
    figure = None
    last_ckpt = state.step if ckpt else -1
    bar = _progress(stop_at, step, disable=quiet or not main)

    def reduce_window():
        """Sum of every logged value over the window and all ranks (a collective: all ranks call)."""
        keys = sorted(window)
        if not keys:
            return {}, 0
        vec = acc.reduce(torch.stack([window[kk] for kk in keys] + [torch.tensor(float(count), device=acc.device)]),
                         reduction="sum").tolist()
        return dict(zip(keys, vec[:-1])), int(vec[-1])

    def checkpoint():
        nonlocal last_ckpt
        sums, n = reduce_window()
        if main:   # rank 0 carries the sums; the others restart their window at zero
            for kk, v in carried[0].items():
                sums[kk] = sums.get(kk, 0.0) + v
            n += carried[1]
        state.step, state.loader = step, loader.state_dict()
        state.window, state.window_count = (sums, n) if main else ({}, 0)
        save_checkpoint(acc, out, step, tc.keep_checkpoints,
                        info={"step": step, "config": to_dict(cfg), "loader": state.loader})
        last_ckpt = step

    model.train()
    stop_reason = None
    while step < stop_at and stop_reason is None:
        batches = iter(loader)
        try:
            for batch in batches:
                with acc.accumulate(model):
                    mask = batch.mir_mask if "mir" in cfg.tasks.active else None
                    frames = batch.images()
                    out_ = model(frames, mask, batch.io_perm, batch.pm_a, batch.pm_b,
                                 noise_seed=noise_seed(tc.seed, acc.step, acc.process_index))
                    losses = pretrain_losses(out_, batch, mask, cfg.tasks, step)
                    loss = losses["loss"]
                    # One tiny collective per micro-step: all ranks agree to skip a non-finite
                    # loss (else DDP would hang) and to stop on a signal.
                    flags = acc.gather(torch.stack([torch.isfinite(loss.detach()).float(),
                                                    torch.tensor(float(stopper.received is not None),
                                                                 device=acc.device)]).view(1, 2))
                    finite, signalled = bool(flags[:, 0].min() > 0), bool(flags[:, 1].max() > 0)
                    if finite:
                        acc.backward(loss)
                        for kk, v in losses.items():
                            window[kk] = window.get(kk, 0) + v.detach().float()
                        count += 1
                    else:
                        # Zero gradients through every parameter keep DDP/DeepSpeed hooks aligned.
                        bad = True
                        acc.backward(sum((p * 0).sum() for p in model.parameters()))
                    if acc.sync_gradients and main and tc.figure_every and (step + 1) % tc.figure_every == 0 \
                            and "recon" in out_:
                        figure = _figure_arrays(out_, mask, tc.figure_frames)
                    if acc.sync_gradients:
                        if bad:
                            optimizer.zero_grad(set_to_none=True)
                            nonfinite_run += 1
                            state.nonfinite_skipped += 1
                            if main:
                                log.warning("step %d: non-finite loss, step skipped (%d in a row)",
                                            step + 1, nonfinite_run)
                            if nonfinite_run >= tc.max_nonfinite:
                                raise TrainingError(
                                    f"the loss was not finite for {nonfinite_run} steps in a row (last at "
                                    f"step {step + 1}); lower optim.lr_encoder/lr_heads, use train.precision "
                                    f"bf16 instead of fp16, or check the data. Last checkpoint: "
                                    f"{latest_checkpoint(out) or 'none'}")
                        else:
                            if tc.clip_grad > 0:
                                grad_norm = acc.clip_grad_norm_(model.parameters(), tc.clip_grad)
                            optimizer.step()
                            scheduler.step()
                            optimizer.zero_grad(set_to_none=True)
                            nonfinite_run = 0
                        bad = False
                frames_seen += batch.batch_size * batch.clip_len
                if not acc.sync_gradients:
                    continue
                step += 1
                bar.update(1)
                if step % tc.log_every == 0 or step == 1 or step == stop_at or signalled:
                    sums, n = reduce_window()
                    if main:
                        for kk, v in carried[0].items():
                            sums[kk] = sums.get(kk, 0.0) + v
                        n += carried[1]
                        dt = time.perf_counter() - t_log
                        row = {"step": step, "epoch": batch.epoch,
                               **{kk: v / max(n, 1) for kk, v in sorted(sums.items())},
                               "lr_encoder": _group_lr(optimizer, "encoder"),
                               "lr_heads": _group_lr(optimizer, "heads"),
                               "grad_norm": None if grad_norm is None else float(grad_norm),
                               "images_per_s": frames_seen * world / dt if dt > 0 else None,
                               "nonfinite_skipped": state.nonfinite_skipped}
                        metrics.write(row)   # a window of only skipped steps has no losses
                        acc.log({kk: v for kk, v in row.items() if isinstance(v, (int, float))}, step=step)
                        if "loss" in row and not bar.disable:
                            bar.set_postfix(loss=f"{row['loss']:.4f}")
                            bar.write(_console_line(row, stop_at))
                    window, count, carried = {}, 0, ({}, 0)
                    frames_seen, t_log = 0, time.perf_counter()
                if figure is not None:
                    plot_reconstruction(*figure, out / "figures" / f"recon-step-{step:06d}.png",
                                        title=f"step {step}")
                    figure = None
                if signalled:
                    stop_reason = "signal"
                elif step >= stop_at:
                    stop_reason = "end"
                if step % tc.checkpoint_every == 0 or stop_reason:
                    checkpoint()
                if stop_reason:
                    break
        finally:
            batches.close()
    bar.close()
    if last_ckpt != step:
        checkpoint()

    # DeepSpeed: gathers ZeRO-3 shards, so every rank calls it. Otherwise the local copy is whole.
    sd = acc.get_state_dict(model) if acc.state.deepspeed_plugin else acc.unwrap_model(model).state_dict()
    summary = {"step": step, "complete": step >= tc.steps, "stopped_by": stop_reason, "out": str(out)}
    if main:
        enc = {kk[len("encoder."):]: v for kk, v in sd.items() if kk.startswith("encoder.")}
        export_encoder(enc, cfg.model.arch, cfg.model.in_chans, out / "encoder.pt", step=step,
                       complete=step >= tc.steps)
        plot_curves(out / "metrics.jsonl", out / "curves.png", io_chance=1 / classes if classes else None)
        metrics.close()
        rows = read_metrics(out / "metrics.jsonl")
        summary["last"] = rows[-1] if rows else None
        if stop_reason == "signal":
            acc.print(f"stopped by {stopper.received} at step {step}; continue with --resume latest")
        acc.print(f"done: step {step}/{tc.steps}; encoder {out / 'encoder.pt'}, curves {out / 'curves.png'}")
    acc.wait_for_everyone()
    acc.end_training()
    return summary


def _group_lr(optimizer, prefix: str):
    for g in optimizer.param_groups:
        if str(g.get("name", "")).startswith(prefix):
            return g["lr"]
    return None


def _figure_arrays(out: dict, mask, n: int):
    """First n frames of the batch as numpy (all -1..1): masked input, the prediction pasted
    into the hidden patches (the visible ones are the input's, as MAE shows it), target."""
    with torch.no_grad():
        t = out["target"][:n].float()
        m = mask.flatten(0, 1)[:n]
        r = torch.where(m, out["recon"][:n].float().clamp(-1, 1), t)
        return (apply_mask(t, m)[:, 0].cpu().numpy(), r[:, 0].cpu().numpy(), t[:, 0].cpu().numpy())


def _console_line(row: dict, total: int) -> str:
    parts = [f"step {row['step']}/{total}", f"loss {row['loss']:.4f}"]
    for kk in ("loss_mir", "loss_pm", "loss_io", "acc_pm", "acc_io"):
        if kk in row:
            parts.append(f"{kk} {row[kk]:.3f}")
    if row.get("images_per_s"):
        parts.append(f"{row['images_per_s']:.0f} img/s")
    return " | ".join(parts)


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)
