"""Segmentation losses: Dice + BCE, the semi-supervised consistency term, the plane term.

All terms are means, so their weights do not depend on the batch or image size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preprocessing.format import SonostreamError

MODES = ("supervised", "semi", "multitask")
CONSISTENCY = ("mse", "pseudo")


@dataclass
class SemiConfig:
    """Mean teacher: an EMA copy of the model labels unlabelled frames for the student.

    With one or two labelled patients the teacher is poor for a long time, and most unlabelled
    frames hold no head; so the unlabelled term is ramped in over a share of the run, the teacher
    slows down as it gets better, only its confident pixels are used as hard pseudo-labels, and
    a frame whose head-or-not decision is unsure is left out altogether."""
    alpha: float = 1.0               # weight of the unlabelled term after ramp-up
    rampup: float = 0.3              # alpha ramps up (sigmoid, 0 at step 0) over this share of train.steps
    rampup_steps: int | None = None  # a fixed ramp length in steps instead of ``rampup`` (None: use rampup)
    ema_decay: float = 0.99          # teacher = decay * teacher + (1 - decay) * student, at the start
    ema_decay_end: float | None = None   # decay reached at the end of the ramp (None: ema_decay throughout)
    consistency: str = "pseudo"      # pseudo: BCE on confident teacher pixels | mse: on probabilities
    threshold: float = 0.9           # pseudo: a pixel counts when p > t or p < 1 - t
    min_head_pixels: float = 0.01    # pseudo: a head is this share of the frame (p > 0.5; p > t: a sure one)
    unlabelled_per_labelled: float = 1.0   # unlabelled frames per labelled frame in a batch
    val_frames: int = 64             # val frames on which student and teacher are scored at the end (0: off)
    # Distribution alignment of the frame-level decision: the share of labelled frames without
    # a head (counted along the run) is the prior; the unlabelled frames whose teacher head score
    # (share of p > 0.5 pixels) ranks in that lowest share of the last ``prior_window`` scores
    # are "no head" (target 0), whatever their area. 0: off, the area rule alone.
    prior_window: int = 256
    teacher_eval: bool = False       # the teacher labels in eval mode (BatchNorm's running statistics)
    # The gate: every ``gate_every`` optimizer steps teacher and student are scored (all-frame
    # Dice, eval mode) on the ``val_frames`` val frames; until the next check the unlabelled
    # term is on only if the teacher scored at least as well as the student. Off, a semi step
    # is the supervised step. 0: no gate (always on).
    gate_every: int = 10

    def __post_init__(self):
        if self.consistency not in CONSISTENCY:
            raise SonostreamError(f"semi.consistency must be one of {CONSISTENCY}, got "
                                  f"{self.consistency!r}")
        for name in ("ema_decay", "ema_decay_end"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                raise SonostreamError(f"semi.{name} must be in [0, 1), got {v}")
        if not 0.5 <= self.threshold < 1:
            raise SonostreamError(f"semi.threshold must be in [0.5, 1), got {self.threshold}")
        if not 0 <= self.rampup <= 1:
            raise SonostreamError(f"semi.rampup is a share of train.steps, in [0, 1]; got "
                                  f"{self.rampup}")
        if not 0 <= self.min_head_pixels < 1:
            raise SonostreamError(f"semi.min_head_pixels is a share of the frame, in [0, 1); got "
                                  f"{self.min_head_pixels}")
        if (self.alpha < 0 or (self.rampup_steps is not None and self.rampup_steps < 0)
                or self.unlabelled_per_labelled <= 0 or self.val_frames < 0
                or self.prior_window < 0 or self.gate_every < 0):
            raise SonostreamError("semi.alpha, semi.rampup_steps, semi.val_frames, "
                                  "semi.prior_window and semi.gate_every must be >= 0, "
                                  "semi.unlabelled_per_labelled > 0")

    def rampup_length(self, total_steps: int) -> int:
        """The ramp's length in steps: ``rampup_steps`` if set, else ``rampup`` x the run."""
        if self.rampup_steps is not None:
            return int(self.rampup_steps)
        return int(round(self.rampup * total_steps))

    def decay_at(self, step: int, total_steps: int) -> float:
        """The teacher's EMA decay after optimizer step ``step`` (0-based): never above
        1 - 1 / (step + 1), so at first the teacher is the running mean of the student rather
        than a memory of its random init; then from ema_decay to ema_decay_end along the ramp."""
        end = self.ema_decay if self.ema_decay_end is None else self.ema_decay_end
        target = self.ema_decay + (end - self.ema_decay) * rampup(step, self.rampup_length(total_steps))
        return min(target, 1.0 - 1.0 / (step + 1))


@dataclass
class MultitaskConfig:
    beta: float = 0.2                # weight of the plane cross-entropy

    def __post_init__(self):
        if self.beta < 0:
            raise SonostreamError(f"multitask.beta must be >= 0, got {self.beta}")


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """logits, target [N, 1, H, W] -> mean over images of the soft Dice. ``smooth`` makes an
    empty target with an empty prediction score 1 (a frame without a head, answered right)."""
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    return ((2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE + 1 - soft Dice, soft Dice): BCE trains every pixel, Dice keeps the small head
    from being swamped by background."""
    dice = soft_dice(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce + 1 - dice, dice.detach()


def rampup(step: int, length: int) -> float:
    """The sigmoid ramp exp(-5 (1 - t)^2) of Laine & Aila, t = step / length, shifted and
    scaled to run from exactly 0 at step 0 to 1 at ``length``: the teacher is poor at first."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, step / length))
    return (math.exp(-5.0 * (1.0 - t) ** 2) - _RAMP0) / (1.0 - _RAMP0)


_RAMP0 = math.exp(-5.0)


def head_score(teacher: torch.Tensor) -> torch.Tensor:
    """Teacher logits [N, 1, H, W] -> [N] the share of pixels with p > 0.5: the frame-level
    "head present" score that :func:`empty_by_prior` ranks."""
    return (teacher.float() > 0).float().flatten(1).mean(1)


def empty_by_prior(scores: torch.Tensor, window: torch.Tensor, empty_share: float) -> torch.Tensor:
    """[N] bool: the frames whose score is below the ``empty_share`` quantile of
    ``window`` (recent scores, these included). With one or two labelled patients the teacher
    marks false heads on most empty frames; ranking its scores against the labelled frames'
    empty share (distribution alignment) still calls the right share of frames empty, as long
    as the teacher ranks empty frames below head frames more often than not."""
    if empty_share <= 0 or window.numel() == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    tau = torch.quantile(window.float(), min(float(empty_share), 1.0))
    return scores < tau   # strictly: frames tied at 0 (no head seen) are the area rule's anyway


def consistency(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse",
                threshold: float = 0.9, min_head_pixels: float = 0.0,
                empty: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of pixels used) between student and teacher logits [N, 1, H, W].

    ``mse``: squared error of the probabilities on every pixel. ``pseudo``: BCE of the student
    against the teacher's hard labels on the pixels where the teacher is confident (p > t or
    p < 1 - t), with the teacher's head-or-not decision per frame: a frame where fewer than
    ``min_head_pixels`` (a share) of the pixels have p > 0.5 is "no head" and its target is 0
    everywhere (a confident speck is not a head to learn); a frame with a head but fewer than
    that share of confident (p > t) head pixels is unsure and left out. ``empty`` ([N] bool,
    :func:`empty_by_prior`) marks frames called "no head" by the prior whatever the teacher's
    area: target 0 on its confident pixels (a confident false head is taught away), never left
    out as unsure. The loss is a mean over the pixels used; with
    none used it is 0 (and still depends on the student)."""
    if kind == "mse":
        p_t = torch.sigmoid(teacher.float()).detach()
        return F.mse_loss(torch.sigmoid(student.float()), p_t), torch.ones((), device=student.device)
    return pseudo_loss(student, *pseudo_targets(teacher, threshold, min_head_pixels, empty))


def pseudo_loss(student: torch.Tensor, hard: torch.Tensor, confident: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of pixels used): BCE of the student logits against ``pseudo_targets``."""
    bce = F.binary_cross_entropy_with_logits(student.float(), hard, reduction="none")
    used = confident.sum() / max(1, confident.numel())   # no frame kept: 0, not nan
    return (bce * confident).sum() / confident.sum().clamp_min(1.0), used


@torch.no_grad()
def pseudo_targets(teacher: torch.Tensor, threshold: float = 0.9, min_head_pixels: float = 0.0,
                   empty: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits [N, 1, H, W] -> (hard targets, pixels used), both [N, 1, H, W] floats:
    the ``pseudo`` rule of :func:`consistency`. A frame with no pixel used teaches nothing."""
    p_t = torch.sigmoid(teacher.float())
    hard = (p_t > 0.5).float()
    confident = ((p_t > threshold) | (p_t < 1 - threshold)).float()
    m = max(min_head_pixels, 1e-12)
    head = hard.flatten(1).mean(1) >= m                                 # [N] the teacher sees a head
    if empty is not None:
        head = head & ~empty.to(head.device)                            # ... the prior says no
    unsure = head & ((p_t > threshold).float().flatten(1).mean(1) < m)  # ... but not a confident one
    hard = hard * head.view(-1, 1, 1, 1).float()                      # "no head": all-zero target
    confident = confident * (~unsure).view(-1, 1, 1, 1).float()       # unsure frames left out
    return hard, confident


def plane_loss(logits: torch.Tensor, plane: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, accuracy) over the frames whose plane is known (``plane`` >= 0). With
    none known the loss is 0 but still depends on the head (DDP needs every gradient)."""
    known = plane >= 0
    if not bool(known.any()):
        return logits.float().sum() * 0.0, torch.zeros((), device=logits.device)
    loss = F.cross_entropy(logits.float()[known], plane[known])
    acc = (logits[known].argmax(1) == plane[known]).float().mean()
    return loss, acc
