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
    """Mean teacher: an EMA copy of the model labels unlabelled frames for the student."""
    alpha: float = 1.0               # weight of the unlabelled term after ramp-up
    rampup_steps: int = 200          # alpha ramps up as exp(-5 (1 - t)^2) over these steps
    ema_decay: float = 0.99          # teacher = decay * teacher + (1 - decay) * student
    consistency: str = "mse"         # mse: on probabilities | pseudo: BCE on confident teacher pixels
    threshold: float = 0.9           # pseudo: a pixel counts when p > t or p < 1 - t
    unlabelled_per_labelled: float = 1.0   # unlabelled frames per labelled frame in a batch

    def __post_init__(self):
        if self.consistency not in CONSISTENCY:
            raise SonostreamError(f"semi.consistency must be one of {CONSISTENCY}, got "
                                  f"{self.consistency!r}")
        if not 0 <= self.ema_decay < 1:
            raise SonostreamError(f"semi.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.5 <= self.threshold < 1:
            raise SonostreamError(f"semi.threshold must be in [0.5, 1), got {self.threshold}")
        if self.alpha < 0 or self.rampup_steps < 0 or self.unlabelled_per_labelled <= 0:
            raise SonostreamError("semi.alpha and semi.rampup_steps must be >= 0, "
                                  "semi.unlabelled_per_labelled > 0")


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
    """exp(-5 (1 - t)^2), t = step / length (Laine & Aila): the teacher is poor at first."""
    if length <= 0:
        return 1.0
    t = min(1.0, max(0.0, step / length))
    return math.exp(-5.0 * (1.0 - t) ** 2)


def consistency(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse",
                threshold: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of pixels used) between student and teacher logits [N, 1, H, W]."""
    p_t = torch.sigmoid(teacher.float()).detach()
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(student.float()), p_t), torch.ones((), device=student.device)
    confident = ((p_t > threshold) | (p_t < 1 - threshold)).float()
    bce = F.binary_cross_entropy_with_logits(student.float(), (p_t > 0.5).float(), reduction="none")
    return (bce * confident).sum() / confident.sum().clamp_min(1.0), confident.mean()


def plane_loss(logits: torch.Tensor, plane: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, accuracy) over the frames whose plane is known (``plane`` >= 0). With
    none known the loss is 0 but still depends on the head (DDP needs every gradient)."""
    known = plane >= 0
    if not bool(known.any()):
        return logits.float().sum() * 0.0, torch.zeros((), device=logits.device)
    loss = F.cross_entropy(logits.float()[known], plane[known])
    acc = (logits[known].argmax(1) == plane[known]).float().mean()
    return loss, acc
