"""The training machinery every job shares: the step loop with gradient
accumulation, clipping, the non-finite guard, empty batches and stop signals, windowed metrics,
checkpoints with exact resume, and trackers. The accelerator itself is made in :mod:`.accel`.

:func:`fit` is the only training loop and knows no task: ``job.run_job`` hands it a loader, a
model, an optimizer and LR scheduler, and a ``step_fn`` that turns one micro-batch into
``(loss, logs, outputs)``. Models hold no distributed code.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from preprocessing.format import SonostreamError
from preprocessing.progress import bars_wanted, eta_text
from tqdm.contrib.logging import logging_redirect_tqdm

from .checkpoint import (TrainState, latest_checkpoint, list_checkpoints, load_checkpoint,
                         resolve_resume, save_checkpoint)
from .logs import MetricsLog
from .optim import NO_DECAY

log = logging.getLogger("sonostream.train")
PRECISIONS = ("no", "bf16", "fp16")


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. the loss stays non-finite); the message says what to change.
    Not bad input: the CLI exits 1 for it (``exit_status``), 2 only for SonostreamError."""
    exit_status = 1


@dataclass
class TrainConfig:
    batch_size: int = 256          # samples per micro-step over ALL ranks (each rank: / world size)
    steps: int = 10000             # optimizer steps: the schedule's length and the run's end
    grad_accum: int = 1            # micro-steps per optimizer step
    precision: str = "bf16"        # no | bf16 | fp16 (autocast; fp16 adds a loss scaler)
    clip_grad: float = 1.0         # max global gradient norm (0: no clipping)
    seed: int = 0                  # model init, loader order, masks, noise
    log_every: int = 10            # metrics.jsonl / trackers / console every N steps
    checkpoint_every: int = 1000   # checkpoint every N steps (and always at the end)
    keep_checkpoints: int = 3      # newest step-N folders kept (0: keep all)
    figure_every: int = 1000       # the job's figure every N steps (0: off)
    figure_frames: int = 4         # frames shown in that figure
    max_nonfinite: int = 10        # stop after this many steps in a row with a non-finite loss
    eval_every: int = 0            # the job's held-out validation every N steps and at the end (0: off)
    eval_clips: int = 64           # the fixed set of val clips it scores (pretraining: in triplets)
    trackers: tuple = ("tensorboard",)   # Accelerate trackers (tensorboard, wandb, mlflow); [] = none
    tracker_project: str = "sonostream"  # W&B project, MLflow experiment, RUN/<this>/ for TensorBoard

    def __post_init__(self):
        self.trackers = tuple(self.trackers)
        if self.precision not in PRECISIONS:
            raise SonostreamError(f"train.precision must be one of {PRECISIONS}, got "
                                  f"{self.precision!r}")
        for k in ("batch_size", "steps", "grad_accum", "log_every", "checkpoint_every", "figure_frames",
                  "max_nonfinite"):
            if getattr(self, k) < 1:
                raise SonostreamError(f"train.{k} must be >= 1, got {getattr(self, k)}")
        if self.eval_every < 0:
            raise SonostreamError(f"train.eval_every must be >= 0 (0: no validation), got "
                                  f"{self.eval_every}")
        if self.eval_clips < 1:
            raise SonostreamError(f"train.eval_clips must be >= 1, got {self.eval_clips}")
        if not str(self.tracker_project).strip():
            raise SonostreamError("train.tracker_project is empty; name the tracker project "
                                  "(default sonostream)")


class StopSignal:
    """SIGTERM / SIGUSR1 (Slurm's warning before a time limit) / SIGINT (Ctrl-C): checkpoint at
    the next step, exit. A second Ctrl-C interrupts at once (KeyboardInterrupt, nothing saved)."""

    def __init__(self):
        self.received, self._before = None, {}
        for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            try:
                self._before[s] = signal.signal(s, self._handle)
            except ValueError:   # not the main thread (e.g. called from a notebook thread)
                pass

    def restore(self) -> None:
        """The handlers from before (a Ctrl-C after the job interrupts as usual again)."""
        for s, h in self._before.items():
            signal.signal(s, h)
        self._before = {}

    def _handle(self, signum, _frame):
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        if signum == signal.SIGINT:
            print("Ctrl-C: saving a checkpoint at the end of this step (Ctrl-C again to abort "
                  "without saving)", file=sys.stderr, flush=True)


def check_run_dir(out: Path, resume: str | None) -> Path | None:
    """The checkpoint to resume from; refuses to start over a run that has checkpoints."""
    ckpt = resolve_resume(resume, out)
    if ckpt is None and list_checkpoints(out):
        raise SonostreamError(f"{out} already holds checkpoints; pass --resume latest to continue "
                              f"that run, or choose another --out")
    return ckpt


def noise_seed(seed: int, micro_step: int, rank: int) -> int:
    """A seed per (micro-step, rank): random draws inside a step repeat exactly after a resume."""
    return int(np.random.SeedSequence([seed, micro_step, rank, 0x5641]).generate_state(1)[0])


class MetricWindow:
    """Per-rank sums of the logged values since the last log; summed over ranks when read.

    Across a resume, rank 0 carries the all-rank sums saved in the checkpoint, so a window that
    spans the resume averages exactly what an uninterrupted run would have averaged."""

    def __init__(self, acc, carried: dict | None = None, carried_count: int = 0):
        self.acc, self.sums, self.count = acc, {}, 0
        self.carried, self.carried_count = dict(carried or {}), carried_count

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.count += 1

    def totals(self) -> tuple[dict, int]:
        """All-rank sums and count (a collective: every rank calls it); rank 0 adds the carry."""
        keys = sorted(self.sums)
        sums, n = {}, 0
        if keys:
            vec = torch.stack([self.sums[k] for k in keys]
                              + [torch.tensor(float(self.count), device=self.acc.device)])
            vec = self.acc.reduce(vec, reduction="sum").tolist()
            sums, n = dict(zip(keys, vec[:-1])), int(vec[-1])
        if self.acc.is_main_process:
            for k, v in self.carried.items():
                sums[k] = sums.get(k, 0.0) + v
            n += self.carried_count
        return sums, n

    def reset(self) -> None:
        self.sums, self.count, self.carried, self.carried_count = {}, 0, {}, 0


def fit(acc, model, optimizer, scheduler, loader, tc: TrainConfig, out: Path, *, step_fn,
        ckpt: Path | None, run_info: dict, stopper: StopSignal, stop_after: int | None = None,
        quiet: bool = False, figure_fn=None, on_step=None, validate_fn=None) -> dict:
    """Train until ``tc.steps`` (or ``stop_after``, or a stop signal); checkpoint; return the end state.

    ``loader``: iterating it gives one epoch of batches (each with ``epoch`` and ``num_images``);
    ``state_dict()`` / ``load_state_dict()`` make the resume exact. ``step_fn(model, batch,
    step, micro_step) -> (loss, logs, outputs)``: ``logs`` are 0-dim tensors averaged into
    metrics.jsonl. ``figure_fn(outputs, batch, step)`` (main rank, every ``tc.figure_every``
    steps, unless that micro-step was skipped) draws whatever the job shows of its outputs.
    ``run_info`` (the config) is saved beside each checkpoint. ``on_step(model)`` runs after
    every optimizer step that was taken (e.g. a mean teacher's EMA update). The learning rate
    of every named optimizer group is logged as ``lr_<name>``. Every logged step is also one
    INFO line of ``sonostream.train`` (step/total, losses, lr, images/s, ETA); ``quiet`` only
    hides the progress bar, which is drawn only when stderr is a terminal
    (``preprocessing.progress.bars_wanted``). ``validate_fn(model)`` (every rank, every
    ``tc.eval_every`` steps and at the last step, not on a stop signal; see :func:`validate`)
    adds ``val_*`` keys to that step's metrics row, which is then logged whatever ``log_every``.

    A batch with ``num_images == 0`` (every clip of the step had a corrupt member) never reaches
    ``step_fn``. With several processes, a micro-step in which any rank's batch is empty is
    skipped on every rank: a rank cannot leave out a forward that the others run (DDP broadcasts
    buffers and arms its gradient hooks in it, ZeRO-3 gathers parameters), so all ranks agree
    first (one more tiny collective per micro-step) and all back-propagate zeros. A skipped
    micro-step adds nothing to the gradients or the metric window; a step none of whose
    micro-steps trained takes no update (like a non-finite one) and counts in ``empty_skipped``.
    Either way the step counts: the run still ends at ``tc.steps``.
    """
    model, optimizer = acc.prepare(model, optimizer)
    state = TrainState()
    # The scheduler is not passed to prepare(): Accelerate would step it once per process.
    acc.register_for_checkpointing(scheduler, state)
    if ckpt is not None:
        load_checkpoint(acc, ckpt, model, optimizer, acc._custom_objects)
        loader.load_state_dict(state.loader)
        acc.print(f"resumed from {ckpt} at step {state.step} (epoch {state.loader.get('epoch')}, "
                  f"position {state.loader.get('position')})")
    main = acc.is_main_process
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=state.step if ckpt else None) if main else None

    stop_at = min(tc.steps, stop_after) if stop_after else tc.steps
    step, last_ckpt = state.step, (state.step if ckpt else -1)
    window = MetricWindow(acc, state.window, state.window_count)
    grad_norm, bad, trained, nonfinite_run, stop_reason = None, False, False, 0, None
    samples_seen, t_log = 0, time.perf_counter()
    start_step, t_start = step, t_log
    last_val = None
    # A bar only on a terminal (a log file would keep every redraw); the metrics lines always.
    bar = _progress(stop_at, step, disable=quiet or not main or not bars_wanted())
    # While the bar is drawn, log lines are printed above it (tqdm.write) instead of through it.
    redirect = logging_redirect_tqdm() if not bar.disable else contextlib.nullcontext()

    def checkpoint():
        nonlocal last_ckpt
        sums, n = window.totals()
        state.step, state.loader = step, loader.state_dict()
        state.window, state.window_count = (sums, n) if main else ({}, 0)
        save_checkpoint(acc, out, step, tc.keep_checkpoints,
                        info={"step": step, **run_info, "loader": state.loader})
        last_ckpt = step

    model.train()
    with redirect:
        while step < stop_at and stop_reason is None:
            batches = iter(loader)
            try:
                for batch in batches:
                    with acc.accumulate(model):
                        # An empty batch (no clip left) never reaches the model; with several
                        # processes all ranks skip that micro-step together (see the docstring).
                        empty = empty_ranks(acc, batch)
                        outputs = None
                        if not empty:
                            loss, logs, outputs = step_fn(model, batch, step, acc.step)
                        # One tiny collective per micro-step: all ranks agree to skip a non-finite
                        # loss (else DDP would hang) and to stop on a signal.
                        flags = acc.gather(torch.stack([
                            torch.ones((), device=acc.device) if empty
                            else torch.isfinite(loss.detach()).float(),
                            torch.tensor(float(stopper.received is not None), device=acc.device)]).view(1, 2))
                        finite, signalled = bool(flags[:, 0].min() > 0), bool(flags[:, 1].max() > 0)
                        if empty:
                            if main:
                                log.warning("step %d: no clips left (every clip had a corrupt "
                                            "member)%s", step + 1, "; skipped" if acc.num_processes
                                            == 1 else f" on rank(s) {', '.join(map(str, empty))}; "
                                            "skipped on every rank")
                            acc.backward(zero_grads(model))
                            if acc.sync_gradients and trained:
                                reduce_accumulated(acc, model)
                        elif finite:
                            acc.backward(loss)
                            window.add({"loss": loss, **logs})
                            trained = True
                        else:
                            # Zero gradients through every parameter keep DDP/DeepSpeed hooks aligned.
                            bad = True
                            acc.backward(zero_grads(model))
                        if (acc.sync_gradients and main and figure_fn and tc.figure_every
                                and outputs is not None and (step + 1) % tc.figure_every == 0):
                            figure_fn(outputs, batch, step + 1)
                        if acc.sync_gradients:
                            # No clips in any micro-step: no update (DeepSpeed, as for a
                            # non-finite loss, has taken a zero-grad step inside backward()).
                            if not bad and not trained:
                                optimizer.zero_grad(set_to_none=True)
                                state.empty_skipped += 1
                            elif bad:   # DeepSpeed has stepped inside backward(): a zero-grad update
                                optimizer.zero_grad(set_to_none=True)
                                nonfinite_run += 1
                                state.nonfinite_skipped += 1
                                if main:
                                    log.warning("step %d: non-finite loss, step skipped (%d in a row)",
                                                step + 1, nonfinite_run)
                                if nonfinite_run >= tc.max_nonfinite:
                                    raise TrainingError(
                                        f"the loss was not finite for {nonfinite_run} steps in a row "
                                        f"(last at step {step + 1}); lower optim.lr_encoder/lr_heads, "
                                        f"use train.precision bf16 instead of fp16, or check the data. "
                                        f"Last checkpoint: {latest_checkpoint(out) or 'none'}")
                            else:
                                if tc.clip_grad > 0:
                                    grad_norm = acc.clip_grad_norm_(model.parameters(), tc.clip_grad)
                                optimizer.step()
                                scheduler.step()
                                optimizer.zero_grad(set_to_none=True)
                                nonfinite_run = 0
                                if on_step is not None:
                                    on_step(model)
                            bad = trained = False
                    samples_seen += 0 if empty else batch.num_images
                    if not acc.sync_gradients:
                        continue
                    step += 1
                    bar.update(1)
                    val = None
                    if (validate_fn is not None and tc.eval_every and not signalled
                            and (step % tc.eval_every == 0 or step >= stop_at)):
                        t_val = time.perf_counter()
                        val = validate(acc, model, validate_fn)
                        last_val = {"step": step, **val}
                        t_log += time.perf_counter() - t_val   # images/s counts training only
                    if (step % tc.log_every == 0 or step == 1 or step == stop_at or signalled
                            or val is not None):
                        sums, n = window.totals()
                        if main:
                            dt = time.perf_counter() - t_log
                            row = {"step": step, "epoch": getattr(batch, "epoch", None),
                                   **{k: v / max(n, 1) for k, v in sorted(sums.items())},
                                   **group_lrs(optimizer),
                                   "grad_norm": None if grad_norm is None else float(grad_norm),
                                   "images_per_s": samples_seen * acc.num_processes / dt if dt > 0 else None,
                                   "nonfinite_skipped": state.nonfinite_skipped,
                                   "empty_skipped": state.empty_skipped, **(val or {})}
                            metrics.write(row)   # a window of only skipped steps has no losses
                            acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
                            done = step - start_step
                            eta = (time.perf_counter() - t_start) / done * (stop_at - step)
                            log.info(_console_line(row, stop_at, eta))
                            if "loss" in row:
                                bar.set_postfix(loss=f"{row['loss']:.4f}")
                        window.reset()
                        samples_seen, t_log = 0, time.perf_counter()
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
    if main:
        metrics.close()
        if stop_reason == "signal":
            acc.print(f"stopped by {stopper.received} at step {step} (checkpoint saved); to continue, "
                      "rerun the same command with --resume latest")
    return {"model": model, "step": step, "complete": step >= tc.steps, "stopped_by": stop_reason,
            "signal": stopper.received if stop_reason == "signal" else None, "validation": last_val}


def validate(acc, model, validate_fn) -> dict:
    """``val_<name>`` = sum / count over all ranks of what ``validate_fn`` returns.

    ``validate_fn(module) -> {name: (sum, count)}`` runs on every rank on the *unwrapped* model
    in eval mode under ``no_grad`` (no DDP buffer broadcast, no gradient hooks): each rank scores
    its share of the held-out set and the sums are reduced here, so the value does not depend on
    the world size. Every rank must return the same names and run the same number of forwards
    (ZeRO-3 gathers parameters in each). A name whose total count is 0 is left out."""
    inner = acc.unwrap_model(model)
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            parts = validate_fn(inner)
    finally:
        inner.train(was_training)
    keys = sorted(parts)
    if not keys:
        return {}
    vec = torch.tensor([[float(parts[k][0]), float(parts[k][1])] for k in keys],
                       dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        vec = acc.reduce(vec, reduction="sum")
    return {f"val_{k}": s / c for k, (s, c) in zip(keys, vec.tolist()) if c > 0}


def empty_ranks(acc, batch) -> list[int]:
    """The ranks whose micro-batch holds no samples; the same list on every rank (with several
    processes one tiny collective, before any rank runs its forward)."""
    empty = batch.num_images == 0
    if acc.num_processes == 1:
        return [0] if empty else []
    flags = acc.gather(torch.tensor([float(empty)], device=acc.device))
    return [r for r, f in enumerate(flags.tolist()) if f > 0]


def zero_grads(model) -> torch.Tensor:
    """A loss whose backward gives every parameter a zero gradient (the hooks DDP and DeepSpeed
    count on fire on every rank alike)."""
    return sum((p * 0).sum() for p in model.parameters())


def reduce_accumulated(acc, model) -> None:
    """DDP averages the gradients accumulated under ``no_sync`` in the backward of the step's
    last micro-step. When that micro-step was skipped (an empty batch, no forward), average them
    here instead, as DDP would (DeepSpeed reduces inside its own backward)."""
    if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return
    import torch.distributed as dist
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= acc.num_processes


def full_state_dict(acc, model) -> dict:
    """The whole model's weights. DeepSpeed ZeRO-3 gathers shards, so every rank must call it."""
    return acc.get_state_dict(model) if acc.state.deepspeed_plugin else acc.unwrap_model(model).state_dict()


def group_lrs(optimizer) -> dict:
    """``lr_<name>`` of each named parameter group (``optim.param_groups`` names them; the
    no-decay twin of a group has its learning rate, so it is not logged twice)."""
    out = {}
    for g in optimizer.param_groups:
        name = str(g.get("name", "")).removesuffix(NO_DECAY)
        if name:
            out.setdefault(f"lr_{name}", g["lr"])
    return out


def _console_line(row: dict, total: int, eta_s: float | None) -> str:
    """One metrics line: ``step 10/200 | loss 0.4512 | loss_mir 0.210 | ... | lr_encoder
    1.00e-03 | 812 img/s | ETA 0:03:05`` (a window of only skipped steps has no losses)."""
    loss = f"loss {row['loss']:.4f}" if "loss" in row else "loss n/a (steps skipped)"
    parts = [f"step {row['step']}/{total}", loss]
    for k, v in row.items():
        if k.startswith(("loss_", "acc_", "val_")) and isinstance(v, float):
            parts.append(f"{k} {v:.3f}")
    parts += [f"{k} {v:.2e}" for k, v in row.items() if k.startswith("lr_")]
    ips = row.get("images_per_s")
    parts += [f"{ips:.0f} img/s" if ips else "? img/s", f"ETA {eta_text(eta_s)}"]
    if row.get("nonfinite_skipped"):
        parts.append(f"{row['nonfinite_skipped']} non-finite step(s) skipped")
    if row.get("empty_skipped"):
        parts.append(f"{row['empty_skipped']} empty step(s) skipped")
    return " | ".join(parts)


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)
