"""The one job skeleton: everything pretraining and fine-tuning share around :func:`loop.fit`.

A job is a run config (a dataclass with ``train: TrainConfig``, ``optim: OptimConfig`` and a
``resume_identity()``) and a :class:`Task` that fills in what differs. Read top to bottom,
:func:`run_job` is:

1. checks that need no accelerator, so they fail before any GPU time is spent: the dataset
   folder (the contract's own check), the run folder and ``--resume``, resume compatibility
   (``checkpoint.check_resume``), and the task's own (``task.check``);
2. the accelerator, the per-rank batch, the seed (the same initial weights on every rank);
3. the task's parts (``task.build``): loader, model, step, figure, extra checkpointed objects;
4. AdamW + warm-up/cosine schedule (``optim``), DeepSpeed's "auto" values;
5. config.yaml (``config.saved_dict``: valid as ``--config``), provenance.json, the start line,
   trackers (project ``train.tracker_project``, run name: the run folder's name);
6. :func:`loop.fit`, with the task's held-out validation (``Parts.validate``) every
   ``train.eval_every`` steps and at the end when the task has one;
7. on the main rank the task's artifact (``task.export``: encoder.pt, segmenter.pt) and curves;
   the summary holds the last validation (``validation``: its step and ``val_*`` values).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
import yaml

from pipeline.data import is_url
from preprocessing.atomic import write_text
from preprocessing.dataset import check_dataset_dir

from .checkpoint import check_resume
from .config import flat, saved_dict
from .logs import plot_curves, read_metrics
from .accel import fill_deepspeed_auto, make_accelerator, per_rank_batch
from .loop import StopSignal, check_run_dir, fit, full_state_dict
from .optim import build_optimizer, build_scheduler
from .provenance import provenance, write_provenance

log = logging.getLogger("sonostream.train")


@dataclass
class Context:
    """What a task's ``build`` gets: the accelerator and where the data comes from."""
    acc: object
    per_rank: int                  # samples per rank per micro-step (train.batch_size / world)
    data: str
    out: Path
    cache_dir: str | None = None
    shard_url: str | None = None


@dataclass
class Parts:
    """What a task contributes to the loop (see ``loop.fit`` for the call signatures)."""
    loader: object
    model: torch.nn.Module
    step: Callable                 # (model, batch, step, micro_step) -> (loss, logs, outputs)
    banner: str                    # the start line: "<task> <banner> | N process(es), <per_rank>, ..."
    per_rank: str                  # what each rank takes per micro-step, in words
    figure: Callable | None = None                    # (outputs, batch, step), main rank
    on_step: Callable | None = None                   # (model) after each optimizer step
    checkpointed: tuple = ()       # more objects saved with every checkpoint (a mean teacher)
    info: dict = field(default_factory=dict)          # anything ``export`` needs later
    # (model) -> {name: (sum, count)} of this rank's share of a fixed held-out set, every
    # train.eval_every steps and at the end (``loop.validate``); None: no validation, and
    # ``validation_off`` then says why when train.eval_every asked for one.
    validate: Callable | None = None
    validation_off: str | None = None


class Task(Protocol):
    name: str                      # "pretraining" | "fine-tuning", for messages

    def check(self, cfg, data: str) -> None:
        """Bad input -> SonostreamError, before the accelerator exists."""

    def build(self, cfg, ctx: Context) -> Parts: ...

    def export(self, cfg, parts: Parts, state_dict: dict, end: dict, out: Path) -> dict:
        """Main rank: write the run's artifact; returns what goes into the summary."""

    def curves(self, cfg, parts: Parts) -> dict:
        """Keyword arguments of ``logs.plot_curves`` (curves, scores, io_chance)."""


def run_job(cfg, task: Task, data: str, out, *, resume: str | None = None,
            stop_after: int | None = None, cache_dir=None, shard_url=None,
            quiet: bool = False) -> dict:
    """Train ``task`` with ``cfg``; returns a summary (step reached, complete, stopped_by, out,
    the task's artifact, last metrics). Bad input raises SonostreamError before training."""
    stopper = StopSignal()   # first: a signal during set-up must not kill the job uncheckpointed
    try:
        return _run_job(cfg, task, data, Path(out).absolute(), stopper, resume=resume,
                        stop_after=stop_after, cache_dir=cache_dir, shard_url=shard_url, quiet=quiet)
    finally:
        stopper.restore()


def _run_job(cfg, task: Task, data: str, out: Path, stopper: StopSignal, *, resume, stop_after,
             cache_dir, shard_url, quiet) -> dict:
    if not is_url(data):
        check_dataset_dir(data)   # the contract's own checks and messages
    ckpt = check_run_dir(out, resume)
    if ckpt is not None:
        check_resume(ckpt, cfg)
    task.check(cfg, data)
    tc = cfg.train
    acc = make_accelerator(tc, out)
    per_rank = per_rank_batch(acc, tc)

    from accelerate.utils import set_seed
    set_seed(tc.seed)   # the same initial weights on every rank
    parts = task.build(cfg, Context(acc, per_rank, data, out, cache_dir, shard_url))
    for obj in parts.checkpointed:
        acc.register_for_checkpointing(obj)
    optimizer = build_optimizer(parts.model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    fill_deepspeed_auto(acc, per_rank, tc)
    if tc.eval_every and parts.validate is None and acc.is_main_process:
        log.warning("train.eval_every=%d, but %s; validation is off", tc.eval_every,
                    parts.validation_off or f"{task.name} has no held-out validation")

    saved = saved_dict(cfg)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(saved, sort_keys=False))
        write_provenance(out / "provenance.json",
                         provenance(acc, tc, data=data, out=out, resume_from=ckpt),
                         resumed=ckpt is not None)
        acc.print(f"{task.name} {parts.banner} | {acc.num_processes} process(es), {parts.per_rank}, "
                  f"accumulation {tc.grad_accum}, precision {tc.precision}, {acc.distributed_type}")
    if tc.trackers:
        acc.init_trackers(tc.tracker_project, config=flat(saved),
                          init_kwargs={"wandb": {"name": out.name}, "mlflow": {"run_name": out.name}})

    end = fit(acc, parts.model, optimizer, scheduler, parts.loader, tc, out, step_fn=parts.step,
              ckpt=ckpt, run_info={"config": saved}, stopper=stopper,
              stop_after=stop_after, quiet=quiet, figure_fn=parts.figure, on_step=parts.on_step,
              validate_fn=parts.validate)

    step = end["step"]
    sd = full_state_dict(acc, end["model"])   # a collective under ZeRO-3: every rank calls it
    summary = {"step": step, "complete": end["complete"], "stopped_by": end["stopped_by"],
               "signal": end["signal"], "out": str(out), "validation": end["validation"]}
    if acc.is_main_process:
        summary.update(task.export(cfg, parts, sd, end, out))
        plot_curves(out / "metrics.jsonl", out / "curves.png", **task.curves(cfg, parts))
        rows = read_metrics(out / "metrics.jsonl")
        summary["last"] = rows[-1] if rows else None
        acc.print(f"done: step {step}/{tc.steps}; " + ", ".join(
            f"{k} {v}" for k, v in summary.items() if k in ("encoder", "segmenter")))
    acc.wait_for_everyone()
    acc.end_training()
    return summary
