"""Fetal head segmentation: a UNet on the (pretrained) encoder, in three modes.

* ``supervised``: Dice + BCE on the labelled frames.
* ``semi``: + alpha(t) x a mean-teacher consistency on frames whose labels are not used (the
  teacher is an EMA of the model; alpha ramps up while the teacher is still poor).
* ``multitask``: + beta x plane cross-entropy (head / abdomen / femur) from a head on the
  deepest encoder features.

It reuses the pretraining machinery (:func:`pipeline.train.loop.fit`: accelerator, gradient
accumulation, mixed precision, checkpoints with exact resume, metrics.jsonl, trackers) and
writes ``RUN/segmenter.pt`` at the end.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from pipeline.config import flat, load_config, to_dict
from pipeline.data.augment import AugmentConfig, geometric, intensity
from pipeline.data.segloader import SegDataConfig, SegLoader
from pipeline.data.source import is_url
from pipeline.models.segmenter import (PLANES, SegmenterConfig, build_segmenter, export_segmenter,
                                       load_pretrained_encoder)
from pipeline.objectives.segment import (MODES, MultitaskConfig, SemiConfig, consistency, dice_bce,
                                         plane_loss, rampup)
from preprocessing.atomic import write_text
from preprocessing.dataset import check_dataset_dir

from .checkpoint import check_saved_sections
from .logs import plot_curves, read_metrics
from .loop import (StopSignal, TrainConfig, check_run_dir, fill_deepspeed_auto, fit, full_state_dict,
                   make_accelerator, noise_seed, per_rank_batch)
from .optim import OptimConfig, build_optimizer, build_scheduler


CURVES = (("loss", "total"), ("loss_seg", "Dice + BCE"), ("loss_plane", "plane CE"),
          ("loss_cons", "consistency"))
SCORES = (("dice_soft", "soft Dice (train)"), ("acc_plane", "plane accuracy (train)"))


@dataclass
class TaskConfig:
    mode: str = "supervised"        # supervised | semi | multitask
    init: str = "none"              # encoder.pt of a pretraining run, or none (from scratch)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")


@dataclass
class FinetuneConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: SegmenterConfig = field(default_factory=SegmenterConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_finetune_config(path, overrides=(), *, mode=None, init=None, label_fraction=None,
                         max_steps=None) -> FinetuneConfig:
    """YAML ``path`` + ``SECTION.KEY=VALUE`` overrides + the command-line shortcuts."""
    overrides = list(overrides)
    for key, value in (("task.mode", mode), ("task.init", init),
                       ("data.label_fraction", label_fraction), ("train.steps", max_steps)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(path, FinetuneConfig, overrides)


def check_resume_config(ckpt: Path, cfg: FinetuneConfig) -> None:
    check_saved_sections(ckpt, to_dict(cfg), ("task", "model"))


class MeanTeacher:
    """The EMA teacher of semi-supervised mode; checkpointed with the run (state_dict)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        s = student.state_dict()
        for name, t in self.module.state_dict().items():
            if t.dtype.is_floating_point:
                t.mul_(self.decay).add_(s[name].detach().to(t.dtype), alpha=1 - self.decay)
            else:   # BatchNorm's step counter
                t.copy_(s[name])

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)


def finetune_forward(model, batch, cfg: FinetuneConfig, step: int, gen: torch.Generator,
                     teacher: MeanTeacher | None = None, autocast=None):
    """One micro-batch -> (loss, logged terms, outputs). Labelled (and, in semi mode, unlabelled)
    frames go through the model in ONE forward, so BatchNorm and DDP see one pass."""
    x = batch.frames.float() / 255.0
    y = batch.masks.float()
    x, y = geometric(x, y, cfg.augment, gen)
    x = intensity(x, cfg.augment, gen)
    b = x.shape[0]
    if teacher is not None:
        u, _ = geometric(batch.unlabelled.float() / 255.0, None, cfg.augment, gen)
        with torch.no_grad(), autocast():
            t_logits, _ = teacher.module(u)   # the teacher sees the frame without intensity noise
        x = torch.cat([x, intensity(u, cfg.augment, gen)])
    logits, plane_logits = model(x)
    seg, dice = dice_bce(logits[:b], y)
    loss, logs = seg, {"loss_seg": seg.detach(), "dice_soft": dice}
    if cfg.task.mode == "multitask":
        pl, acc = plane_loss(plane_logits, batch.plane)
        loss = loss + cfg.multitask.beta * pl
        logs.update(loss_plane=pl.detach(), acc_plane=acc)
    if teacher is not None:
        cons, used = consistency(logits[b:], t_logits, cfg.semi.consistency, cfg.semi.threshold)
        alpha = cfg.semi.alpha * rampup(step, cfg.semi.rampup_steps)
        loss = loss + alpha * cons
        logs.update(loss_cons=cons.detach(), alpha=torch.tensor(alpha, device=x.device),
                    cons_pixels=used.detach())
    return loss, logs, {"logits": logits[:b]}


def train(cfg: FinetuneConfig, data: str, out, resume: str | None = None,
          stop_after: int | None = None, cache_dir=None, shard_url=None, quiet: bool = False) -> dict:
    """Fine-tune; returns a summary (step, paths, last metrics). Raises ValueError on bad input."""
    out = Path(out)
    stopper = StopSignal()
    if not is_url(data):
        check_dataset_dir(data)
    ckpt = check_run_dir(out, resume)
    if ckpt is not None:
        check_resume_config(ckpt, cfg)
    init = None if str(cfg.task.init).lower() in ("none", "", "scratch") else cfg.task.init
    if init is not None and not Path(init).is_file():
        raise ValueError(f"--init {init}: no such file (pretraining writes RUN/encoder.pt; "
                         "--init none trains from scratch)")
    tc, mode = cfg.train, cfg.task.mode
    if mode == "semi" and tc.grad_accum > 1:
        raise ValueError("semi mode updates its teacher after each optimizer step; use "
                         "train.grad_accum 1 (raise train.batch_size instead)")
    acc = make_accelerator(tc, out)
    if mode == "semi" and acc.state.deepspeed_plugin and acc.state.deepspeed_plugin.zero_stage == 3:
        raise ValueError("semi mode keeps a full EMA teacher; ZeRO-3 partitions the weights: "
                         "use ZeRO-2 or DDP")
    per_rank = per_rank_batch(acc, tc)
    unl = max(1, round(per_rank * cfg.semi.unlabelled_per_labelled)) if mode == "semi" else 0

    from accelerate.utils import set_seed
    set_seed(tc.seed)
    loader = SegLoader(data, cfg.data, batch_size=per_rank, unlabelled_batch=unl, seed=tc.seed,
                       rank=acc.process_index, world_size=acc.num_processes, device=acc.device,
                       cache_dir=cache_dir, shard_url=shard_url)
    planes = list(PLANES) if mode == "multitask" else []
    if mode == "multitask" and not (loader.table.plane[loader.sel.labelled] >= 0).any():
        raise ValueError(f"{data}: no labelled frame of split {cfg.data.split!r} has a plane label; "
                         "multitask mode needs the plane column (head/abdomen/femur)")
    model = build_segmenter(cfg.model, planes=len(planes))
    init_meta = load_pretrained_encoder(model, init, cfg.model.arch, cfg.model.in_chans) if init else None
    teacher = MeanTeacher(model, cfg.semi.ema_decay) if mode == "semi" else None
    if teacher is not None:
        teacher.module.to(acc.device)
        acc.register_for_checkpointing(teacher)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, tc.steps)
    fill_deepspeed_auto(acc, per_rank, tc)

    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
        acc.print(f"fine-tuning ({mode}) a {cfg.model.arch} UNet, encoder "
                  f"{'from ' + str(init) if init else 'from scratch'} | {loader.describe()} | "
                  f"{acc.num_processes} process(es), {per_rank} labelled (+{unl} unlabelled) "
                  f"frames per rank, precision {tc.precision}")
    if tc.trackers:
        acc.init_trackers("tb", config=flat(to_dict(cfg)))

    def step_fn(model, batch, step, micro_step):
        gen = torch.Generator(device=acc.device).manual_seed(
            noise_seed(tc.seed, micro_step, acc.process_index))
        return finetune_forward(model, batch, cfg, step, gen, teacher, acc.autocast)

    def on_step(model):
        if teacher is not None:
            teacher.update(acc.unwrap_model(model))

    end = fit(acc, model, optimizer, scheduler, loader, tc, out, step_fn=step_fn, ckpt=ckpt,
              run_info={"config": to_dict(cfg)}, stopper=stopper, stop_after=stop_after,
              quiet=quiet, on_step=on_step)
    step = end["step"]
    sd = full_state_dict(acc, end["model"])
    summary = {"step": step, "complete": end["complete"], "stopped_by": end["stopped_by"],
               "out": str(out), "segmenter": str(out / "segmenter.pt"), **loader.describe()}
    if acc.is_main_process:
        export_segmenter(sd, cfg.model, out / "segmenter.pt", image_size=loader.image_size,
                         planes=planes, mode=mode, init=str(init) if init else "none",
                         init_step=init_meta.get("step") if init_meta else None,
                         label_fraction=cfg.data.label_fraction,
                         labelled_patients=len(loader.sel.patients), step=step,
                         complete=end["complete"])
        plot_curves(out / "metrics.jsonl", out / "curves.png", curves=CURVES, scores=SCORES)
        rows = read_metrics(out / "metrics.jsonl")
        summary["last"] = rows[-1] if rows else None
        acc.print(f"done: step {step}/{tc.steps}; segmenter {out / 'segmenter.pt'}")
    acc.wait_for_everyone()
    acc.end_training()
    return summary
