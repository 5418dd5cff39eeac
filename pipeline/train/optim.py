"""AdamW with separate encoder and head learning rates, and a warm-up + cosine schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from preprocessing.format import SonostreamError


@dataclass
class OptimConfig:
    lr_encoder: float = 1e-3        # peak learning rate of the encoder
    lr_heads: float = 1e-3          # peak learning rate of the task heads
    weight_decay: float = 0.05      # AdamW decay; never applied to norms and biases
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 500         # linear warm-up from 0 over these optimizer steps...
    min_lr_ratio: float = 0.05      # ...then cosine down to this fraction of the peak

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.lr_encoder < 0 or self.lr_heads < 0:
            raise SonostreamError("optim.lr_encoder and optim.lr_heads must be >= 0")
        if self.warmup_steps < 0:
            raise SonostreamError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise SonostreamError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


# What a checkpoint's optimizer and LR-scheduler state keep (loading them restores these, so a
# changed value would be ignored on resume: ``check_resume`` refuses it instead). warmup_steps,
# min_lr_ratio and the length come from the config at every start.
OPTIM_KEPT = ("optim.lr_encoder", "optim.lr_heads", "optim.weight_decay", "optim.betas")
NO_DECAY = "_no_decay"   # suffix of the group names without weight decay


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: encoder/heads x decayed/not. Names are kept for the logs."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if name.startswith("encoder.") else "heads"
        decay = p.ndim > 1   # weights of convs and linears; not norms or biases
        key = (part, decay)
        if key not in groups:
            groups[key] = {"name": f"{part}{'' if decay else NO_DECAY}", "params": [],
                           "lr": cfg.lr_encoder if part == "encoder" else cfg.lr_heads,
                           "weight_decay": cfg.weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg), betas=cfg.betas)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak LR for the optimizer step after ``step`` steps (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(optimizer, cfg: OptimConfig, total_steps: int):
    """A LambdaLR stepped once per optimizer step (not per process: it is not passed to prepare)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
