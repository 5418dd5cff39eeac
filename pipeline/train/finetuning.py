"""Fetal head segmentation: a UNet on the (pretrained) encoder, in three modes.

* ``supervised``: Dice + BCE on the labelled frames.
* ``semi``: + alpha(t) x a mean-teacher term on frames whose labels are not used: the teacher
  is an EMA of the model whose decay grows along the ramp, alpha ramps up from 0 over a share
  of the run, the default term uses only the teacher's confident pixels and its per-frame
  head-or-not decision, and the teacher is exported instead of the student when it scores
  better on val frames (``pick_student_or_teacher``).
* ``multitask``: + beta x plane cross-entropy (head / abdomen / femur) from a head on the
  deepest encoder features.

The job skeleton (``job.run_job``) and the one loop (``loop.fit``: accelerator, gradient
accumulation, mixed precision, checkpoints with exact resume, metrics.jsonl, trackers) are
pretraining's; this task adds the loader, the UNet, the step and ``RUN/segmenter.pt``.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.data import SegDataConfig, SegLoader
from pipeline.data.augment import AugmentConfig, geometric, intensity
from pipeline.models.inputs import to_unit
from pipeline.models.segmenter import (PLANES, SegmenterConfig, build_segmenter, export_segmenter,
                                       load_pretrained_encoder)
from pipeline.objectives.segmentation import (MODES, MultitaskConfig, SemiConfig, consistency,
                                              dice_bce, empty_by_prior, head_score, plane_loss,
                                              pseudo_loss, pseudo_targets, rampup)
from preprocessing.format import SonostreamError

from .config import load_config, pick
from .job import Context, Parts, run_job
from .loop import TrainConfig, noise_seed
from .optim import OPTIM_KEPT, OptimConfig


CURVES = (("loss", "total"), ("loss_seg", "Dice + BCE"), ("loss_plane", "plane CE"),
          ("loss_cons", "consistency"))
SCORES = (("dice_soft", "soft Dice (train)"), ("acc_plane", "plane accuracy (train)"))
NO_INIT = ("none", "", "scratch")   # task.init values meaning "from scratch"


@dataclass
class TaskConfig:
    mode: str = "supervised"        # supervised | semi | multitask
    init: str = "none"              # encoder.pt of a pretraining run, or none (from scratch)

    def __post_init__(self):
        if self.mode not in MODES:
            raise SonostreamError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if str(self.init).lower() not in NO_INIT:   # relative to the launch folder, kept absolute
            self.init = os.path.abspath(os.path.expanduser(self.init))


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

    # What a checkpoint must share with this config to be resumed (``checkpoint.check_resume``):
    # the task and model (the network built), the frames trained on and their size, the seed,
    # what the optimizer state keeps (OPTIM_KEPT). The rest may change on resume: loss weights
    # (semi, multitask), augment, the schedule's warm-up and length, batch size, logging.
    RESUME_KEYS = ("task", "model", "data.split", "data.label_fraction", "data.label_patients",
                   "data.label_seed", "data.image_size", "train.seed", *OPTIM_KEPT)
    RESUME_FIX = ("start a new run with them in another --out, without --resume (--init "
                  "ENCODER.pt still starts its encoder from a pretraining run)")

    def resume_identity(self) -> dict:
        return pick(self, self.RESUME_KEYS)


def load_finetune_config(path, overrides=(), *, mode=None, init=None, label_fraction=None,
                         max_steps=None, label_patients=None, seed=None) -> FinetuneConfig:
    """YAML ``path`` + ``SECTION.KEY=VALUE`` overrides + the command-line shortcuts. ``seed``
    sets both ``train.seed`` and ``data.label_seed`` (the init and the labelled patients)."""
    overrides = list(overrides)
    for key, value in (("task.mode", mode), ("task.init", init),
                       ("data.label_fraction", label_fraction), ("train.steps", max_steps),
                       ("data.label_patients", label_patients), ("train.seed", seed),
                       ("data.label_seed", seed)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return load_config(path, FinetuneConfig, overrides)


class MeanTeacher:
    """The EMA teacher of semi-supervised mode; checkpointed with the run (state_dict, with the
    number of updates so far, which sets its decay schedule, and the prior of the frame-level
    decision: labelled frames seen and how many held no head, the last ``window`` head scores).
    Under several ranks each rank keeps its own counts and window; the main rank's are saved."""

    def __init__(self, model: torch.nn.Module, decay: float, window: int = 0, eval_mode: bool = False):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        if eval_mode:
            self.module.eval()
        self.decay = decay
        self.updates = 0
        self.window = int(window)
        self.seen = torch.zeros(2, dtype=torch.float64)    # labelled frames, of them without a head
        self.scores = torch.zeros(0)                       # the last ``window`` teacher head scores
        self.gate = 1.0                                    # 1: the unlabelled term on (``gate_check``)

    def gate_check(self, student: torch.nn.Module, frames: torch.Tensor, masks: torch.Tensor) -> None:
        """Score teacher and student (all-frame Dice, eval mode) on val ``frames``/``masks``: the
        unlabelled term stays on only while the teacher is at least as good as the student."""
        self.gate = float(dice_all(self.module, frames, masks) >= dice_all(student, frames, masks))

    def empty_share(self) -> float:
        return float(self.seen[1] / self.seen[0]) if self.seen[0] > 0 else 0.0

    @torch.no_grad()
    def observe(self, masks: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        """Count the labelled ``masks`` [B, 1, H, W] without a head, add the teacher's head scores
        of ``t_logits`` [N, 1, H, W] to the window; returns [N] bool, the frames the prior calls
        empty (none with ``window`` 0)."""
        score = head_score(t_logits)
        if self.window <= 0:
            return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
        self.seen += torch.tensor([masks.shape[0], int((masks.flatten(1) == 0).all(1).sum())],
                                  dtype=torch.float64)
        self.scores = torch.cat([self.scores, score.detach().cpu()])[-self.window:]
        return empty_by_prior(score, self.scores.to(score.device), self.empty_share())

    @torch.no_grad()
    def update(self, student: torch.nn.Module, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        s = student.state_dict()
        for name, t in self.module.state_dict().items():
            if t.dtype.is_floating_point:
                t.mul_(d).add_(s[name].detach().to(t.dtype), alpha=1 - d)
            else:   # BatchNorm's step counter
                t.copy_(s[name])
        self.updates += 1

    def state_dict(self):
        return {**self.module.state_dict(), UPDATES_KEY: torch.tensor(self.updates),
                SEEN_KEY: self.seen.clone(), SCORES_KEY: self.scores.clone(),
                GATE_KEY: torch.tensor(self.gate)}

    def load_state_dict(self, state):
        state = dict(state)
        updates = state.pop(UPDATES_KEY, None)   # absent in checkpoints of earlier versions
        seen, scores = state.pop(SEEN_KEY, None), state.pop(SCORES_KEY, None)
        gate = state.pop(GATE_KEY, None)
        self.module.load_state_dict(state)
        self.updates = int(updates) if updates is not None else 0
        self.seen = seen.clone() if seen is not None else torch.zeros(2, dtype=torch.float64)
        self.scores = scores.clone() if scores is not None else torch.zeros(0)
        self.gate = float(gate) if gate is not None else 1.0


UPDATES_KEY = "__teacher_updates__"
SEEN_KEY, SCORES_KEY, GATE_KEY = "__prior_seen__", "__prior_scores__", "__gate__"
TEACHER_EXTRA = (UPDATES_KEY, SEEN_KEY, SCORES_KEY, GATE_KEY)   # not weights


def finetune_forward(model, batch, cfg: FinetuneConfig, step: int, gen: torch.Generator,
                     teacher: MeanTeacher | None = None, autocast=None):
    """One micro-batch -> (loss, logged terms, outputs). Labelled (and, in semi mode, unlabelled)
    frames go through the model in ONE forward, so BatchNorm and DDP see one pass."""
    x = to_unit(batch.frames)
    y = batch.masks.float()
    x, y = geometric(x, y, cfg.augment, gen)
    x = intensity(x, cfg.augment, gen)
    b = x.shape[0]
    if teacher is not None:
        sc = cfg.semi
        u, _ = geometric(to_unit(batch.unlabelled), None, cfg.augment, gen)
        with torch.no_grad(), autocast():
            t_logits, _ = teacher.module(u)   # the teacher sees the frame without intensity noise
        u = intensity(u, cfg.augment, gen)
        empty = teacher.observe(batch.masks, t_logits)
        # Only the frames with a pixel to teach reach the student: one the teacher is unsure of
        # would change nothing but the student's BatchNorm statistics (and the result, with one
        # labelled patient): with nothing to teach, semi is the supervised step.
        gate = teacher.gate
        alpha = sc.alpha * rampup(step, sc.rampup_length(cfg.train.steps)) * gate
        if sc.consistency == "pseudo":
            hard, confident = pseudo_targets(t_logits, sc.threshold, sc.min_head_pixels, empty)
            keep = confident.flatten(1).any(1)
        else:
            keep = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        keep &= alpha > 0
        x = torch.cat([x, u[keep]])
    logits, plane_logits = model(x)
    seg, dice = dice_bce(logits[:b], y)
    loss, logs = seg, {"loss_seg": seg.detach(), "dice_soft": dice}
    if cfg.task.mode == "multitask":
        pl, acc = plane_loss(plane_logits, batch.plane)
        loss = loss + cfg.multitask.beta * pl
        logs.update(loss_plane=pl.detach(), acc_plane=acc)
    if teacher is not None:
        cons, used = (pseudo_loss(logits[b:], hard[keep], confident[keep])
                      if sc.consistency == "pseudo" else
                      consistency(logits[b:], t_logits[keep], sc.consistency))
        used = used * keep.float().mean()   # the share of all unlabelled pixels
        loss = loss + alpha * cons
        logs.update(loss_cons=cons.detach(), alpha=torch.tensor(alpha, device=x.device),
                    cons_pixels=used.detach(), cons_frames=keep.float().mean(),
                    gate=torch.tensor(gate, device=x.device),
                    prior_empty=(empty.float().mean() if empty is not None
                                 else torch.zeros((), device=x.device)),
                    ema_decay=torch.tensor(sc.decay_at(step, cfg.train.steps), device=x.device))
    return loss, logs, {"logits": logits[:b]}


class Finetuning:
    """The fine-tuning task for ``job.run_job``: labelled frames in, segmenter.pt out."""
    name = "fine-tuning"

    def check(self, cfg: FinetuneConfig, data: str) -> None:
        init = _init_path(cfg)
        if init is not None and not Path(init).is_file():
            raise SonostreamError(f"--init {init}: no such file (pretraining writes "
                                  "RUN/encoder.pt; --init none trains from scratch)")
        if cfg.task.mode == "semi" and cfg.train.grad_accum > 1:
            raise SonostreamError("semi mode updates its teacher after each optimizer step; use "
                                  "train.grad_accum 1 (raise train.batch_size instead)")

    def build(self, cfg: FinetuneConfig, ctx: Context) -> Parts:
        acc, tc, mode = ctx.acc, cfg.train, cfg.task.mode
        plugin = acc.state.deepspeed_plugin
        if mode == "semi" and plugin and plugin.zero_stage == 3:
            raise SonostreamError("semi mode keeps a full EMA teacher; ZeRO-3 partitions the "
                                  "weights: use ZeRO-2 or DDP")
        unl = max(1, round(ctx.per_rank * cfg.semi.unlabelled_per_labelled)) if mode == "semi" else 0
        loader = SegLoader(ctx.data, cfg.data, batch_size=ctx.per_rank, unlabelled_batch=unl,
                           seed=tc.seed, rank=acc.process_index, world_size=acc.num_processes,
                           device=acc.device, cache_dir=ctx.cache_dir, shard_url=ctx.shard_url)
        planes = list(PLANES) if mode == "multitask" else []
        if mode == "multitask" and not (loader.view.plane[loader.sel.labelled] >= 0).any():
            raise SonostreamError(f"{ctx.data}: no labelled frame of split {cfg.data.split!r} has "
                                  f"a plane label; multitask mode needs the plane column "
                                  "(head/abdomen/femur)")
        init = _init_path(cfg)
        model = build_segmenter(cfg.model, planes=len(planes))
        init_meta = load_pretrained_encoder(model, init, cfg.model.arch, cfg.model.in_chans) if init else None
        teacher = (MeanTeacher(model, cfg.semi.ema_decay, cfg.semi.prior_window, cfg.semi.teacher_eval)
                   if mode == "semi" else None)
        if teacher is not None:
            teacher.module.to(acc.device)

        def step(model, batch, step, micro_step):
            gen = torch.Generator(device=acc.device).manual_seed(
                noise_seed(tc.seed, micro_step, acc.process_index))
            return finetune_forward(model, batch, cfg, step, gen, teacher, acc.autocast)

        gate_rows = val_rows(loader, cfg.semi.val_frames) if mode == "semi" and cfg.semi.gate_every else []
        if len(gate_rows):
            f, m = loader.decoder.images(gate_rows, loader.image_size, masks=True)
            gate_frames = torch.from_numpy(f).unsqueeze(1).to(acc.device)
            gate_masks = torch.from_numpy(m).unsqueeze(1).to(acc.device)

        def on_step(model):
            teacher.update(acc.unwrap_model(model), cfg.semi.decay_at(teacher.updates, tc.steps))
            if len(gate_rows) and teacher.updates % cfg.semi.gate_every == 0:
                teacher.gate_check(acc.unwrap_model(model), gate_frames, gate_masks)

        banner = (f"({mode}) a {cfg.model.arch} UNet, encoder "
                  f"{'from ' + str(init) if init else 'from scratch'} | {loader.describe()}")
        return Parts(loader, model, step, banner=banner,
                     per_rank=f"{ctx.per_rank} labelled (+{unl} unlabelled) frames per rank",
                     on_step=on_step if teacher is not None else None,
                     checkpointed=(teacher,) if teacher is not None else (),
                     info={"planes": planes, "init": init, "init_meta": init_meta,
                           "teacher": teacher})

    def export(self, cfg: FinetuneConfig, parts: Parts, state_dict: dict, end: dict,
               out: Path) -> dict:
        init, meta, loader = parts.info["init"], parts.info["init_meta"], parts.loader
        chosen = {}
        if parts.info.get("teacher") is not None:
            state_dict, chosen = pick_student_or_teacher(
                cfg, loader, parts.info["planes"], state_dict, parts.info["teacher"])
        export_segmenter(state_dict, cfg.model, out / "segmenter.pt", image_size=loader.image_size,
                         planes=parts.info["planes"], mode=cfg.task.mode,
                         init=str(init) if init else "none",
                         init_step=meta.get("step") if meta else None,
                         label_fraction=cfg.data.label_fraction,
                         labelled_patients=len(loader.sel.patients), step=end["step"],
                         complete=end["complete"], **chosen)
        return {"segmenter": str(out / "segmenter.pt"), **loader.describe()}

    def curves(self, cfg: FinetuneConfig, parts: Parts) -> dict:
        return {"curves": CURVES, "scores": SCORES}


def _init_path(cfg: FinetuneConfig) -> str | None:
    return None if str(cfg.task.init).lower() in NO_INIT else cfg.task.init


def train(cfg: FinetuneConfig, data: str, out, resume: str | None = None,
          stop_after: int | None = None, cache_dir=None, shard_url=None, quiet: bool = False) -> dict:
    """Fine-tune; returns a summary (step, paths, last metrics). Raises SonostreamError on bad
    input."""
    return run_job(cfg, Finetuning(), data, out, resume=resume, stop_after=stop_after,
                   cache_dir=cache_dir, shard_url=shard_url, quiet=quiet)


def val_rows(loader: SegLoader, n: int) -> np.ndarray:
    """Up to ``n`` labelled frames of the val split, spread evenly over its (sorted) rows: the
    same frames for every run on a dataset."""
    v = loader.view
    if n <= 0 or loader.cfg.split == "val":   # never pick on the frames trained on
        return np.zeros(0, np.int64)
    rows = v.rows_of("val")
    rows = np.sort(rows[v.has_mask[rows]])
    if len(rows) > n:
        rows = rows[np.linspace(0, len(rows) - 1, n).round().astype(np.int64)]
    return rows


@torch.no_grad()
def dice_all(model: torch.nn.Module, frames: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean hard Dice over all frames (p > 0.5; a frame without a head counts 1 when none is
    predicted, 0 otherwise), in eval mode (the model's mode is restored after)."""
    was = model.training
    model.eval()
    pred = torch.sigmoid(model(to_unit(frames))[0].float()) > 0.5
    model.train(was)
    t = masks > 0
    inter = (pred & t).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + t.flatten(1).sum(1)).float()
    return float(torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).mean())


def pick_student_or_teacher(cfg: FinetuneConfig, loader: SegLoader, planes: list, student: dict,
                            teacher: MeanTeacher) -> tuple[dict, dict]:
    """(state dict to export, segmenter meta): the teacher's weights when it scores a higher
    all-frame Dice than the student on ``semi.val_frames`` val frames, else the student's."""
    rows = val_rows(loader, cfg.semi.val_frames)
    if len(rows) == 0:
        return student, {"exported": "student", "val_scores": None,
                         "exported_why": "no labelled val frames (semi.val_frames 0, no val split "
                                         "with masks, or training on val)"}
    frames, masks = loader.decoder.images(rows, loader.image_size, masks=True)
    frames = torch.from_numpy(frames).unsqueeze(1)
    masks = torch.from_numpy(masks).unsqueeze(1)
    teacher_sd = {k: v for k, v in teacher.state_dict().items() if k not in TEACHER_EXTRA}
    scores, model = {}, build_segmenter(cfg.model, planes=len(planes))
    for name, sd in (("student", student), ("teacher", teacher_sd)):
        model.load_state_dict({k: v.detach().cpu() for k, v in sd.items()})
        scores[name] = round(dice_all(model, frames, masks), 6)
    best = "teacher" if scores["teacher"] > scores["student"] else "student"
    return (teacher_sd if best == "teacher" else student), {
        "exported": best, "val_scores": {**scores, "frames": int(len(rows)),
                                         "metric": "dice_all"}}
