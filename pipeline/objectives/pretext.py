"""Pretraining losses: MIR (masked reconstruction + beta * KL), PM (BCE with logits), IO (CE).

Every term is a *mean* (per masked pixel, per latent element, per pair, per clip), so the task
weights compare like with like. The seed summed the KL over the latent and divided nothing, which
made it thousands of times the reconstruction loss and the decoder learned to output the mean.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preprocessing.format import SonostreamError

TASKS = ("mir", "pm", "io")


@dataclass
class TasksConfig:
    mir: float = 1.0                 # weight of masked image reconstruction (0 drops the head)
    pm: float = 1.0                  # weight of patient matching
    io: float = 1.0                  # weight of image ordering
    beta: float = 0.01               # MIR: KL weight once warmed up
    beta_warmup_steps: int = 1000    # MIR: beta rises linearly from 0 over these steps

    def __post_init__(self):
        for t in TASKS + ("beta",):
            if getattr(self, t) < 0:
                raise SonostreamError(f"tasks.{t} must be >= 0, got {getattr(self, t)}")
        if not self.active:
            raise SonostreamError("tasks: every weight is 0; give at least one of mir, pm, io a "
                                  "weight > 0")

    @property
    def active(self) -> tuple:
        return tuple(t for t in TASKS if getattr(self, t) > 0)


def beta_at(step: int, beta: float, warmup: int) -> float:
    """KL weight at optimizer step ``step`` (0-based): linear warm-up, then constant."""
    return beta if warmup <= 0 else beta * min(1.0, step / warmup)


def mir_loss(recon, target, mask, mu, logvar, beta: float, sector=None):
    """recon, target (N, 1, H, W); mask (N, 1, H, W) bool (True = hidden); mu, logvar (N, z, h, w);
    sector: None or bool broadcastable to mask (True = inside the imaged fan,
    ``pipeline.data.tasks.sector_mask``).

    Reconstruction error counts only hidden pixels (the visible ones are trivially copied), and
    with ``sector`` only those inside the fan (outside it the target is always black)."""
    err = (recon.float() - target.float()).pow(2)
    m = mask if sector is None else mask & sector
    m = m.to(err.dtype)
    rec = (err * m).sum() / m.sum().clamp_min(1.0)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
    return rec + beta * kl, rec.detach(), kl.detach()


def pm_loss(logits, labels):
    """logits, labels (P,) -> (loss, accuracy); an empty batch of pairs gives zeros."""
    if logits.numel() == 0:
        zero = logits.new_zeros(())
        return zero, zero
    logits = logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, labels.float())
    acc = ((logits > 0).float() == labels.float()).float().mean()
    return loss, acc.detach()


def io_loss(logits, labels):
    """logits (B, classes), labels (B,) -> (loss, accuracy)."""
    logits = logits.float()
    return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().detach()


def pretrain_losses(out: dict, batch, mask, cfg: TasksConfig, step: int, sector=None) -> dict:
    """Weighted total and every term, as 0-dim tensors. ``mask``: (B, K, 1, H, W) of the batch;
    ``sector``: None or (B, 1, 1, H, W) bool, the clips' fans (``tasks.sector_mask``): MIR is
    scored inside them (``mir_rec``; ``mir_rec_all`` is the error over all hidden pixels, and
    ``mir_sector`` the share of pixels in the fan)."""
    total = out["unused"] if "unused" in out else out["target"].new_zeros(()).float()
    logs = {}
    if "recon" in out:
        beta = beta_at(step, cfg.beta, cfg.beta_warmup_steps)
        m = mask.flatten(0, 1)
        fan = None
        if sector is not None:
            fan = sector.expand_as(mask).flatten(0, 1)
        loss, rec, kl = mir_loss(out["recon"], out["target"], m, out["mu"], out["logvar"], beta,
                                 fan)
        total = total + cfg.mir * loss
        logs.update(loss_mir=loss.detach(), mir_rec=rec, mir_kl=kl,
                    beta=torch.tensor(beta, device=rec.device))
        if fan is not None:
            with torch.no_grad():
                err = (out["recon"].float() - out["target"].float()).pow(2)
                logs.update(mir_rec_all=(err * m).sum() / m.sum().clamp_min(1),
                            mir_sector=sector.float().mean())
    if "pm_logits" in out:
        loss, acc = pm_loss(out["pm_logits"], batch.pm_label)
        total = total + cfg.pm * loss
        logs.update(loss_pm=loss.detach(), acc_pm=acc)
    if "io_logits" in out:
        loss, acc = io_loss(out["io_logits"], batch.io_label)
        total = total + cfg.io * loss
        logs.update(loss_io=loss.detach(), acc_io=acc)
    return {"loss": total, **logs}
