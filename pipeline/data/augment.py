"""Ultrasound augmentation on the training device, drawn from a seeded torch.Generator.

Geometry (one random affine per frame, applied to the frame and its mask together): a
left-right flip, a small rotation, scale and shift. No up-down flip: the probe is always at
the top of a B-mode sector, and the far field is always darker and blurrier than the near field.
Intensity (frames only): gain (overall brightness), gamma (contrast), and multiplicative
speckle noise, the kind of noise ultrasound actually has.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preprocessing.format import SonostreamError


@dataclass
class AugmentConfig:
    flip: float = 0.5           # probability of a left-right flip
    rotate_deg: float = 10.0    # rotation in [-r, r] degrees
    scale: float = 0.1          # zoom in [1 - s, 1 + s]
    shift: float = 0.05         # translation in [-s, s] of the frame size
    gain: float = 0.2           # brightness x [1 - g, 1 + g]
    gamma: float = 0.3          # contrast: x ** exp(u), u in [-log(1+g), log(1+g)]
    speckle: float = 0.1        # multiplicative noise: x * (1 + speckle * N(0, 1))

    def __post_init__(self):
        for k in ("flip", "rotate_deg", "scale", "shift", "gain", "gamma", "speckle"):
            if getattr(self, k) < 0:
                raise SonostreamError(f"augment.{k} must be >= 0, got {getattr(self, k)}")
        if self.flip > 1 or self.scale >= 1 or self.gain >= 1:
            raise SonostreamError("augment.flip must be <= 1, augment.scale and augment.gain < 1")


def _uniform(n: int, half: float, g: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=g, device=device) * 2 - 1) * half


def affine(n: int, cfg: AugmentConfig, g: torch.Generator, device) -> torch.Tensor:
    """[n, 2, 3] sampling matrices (output -> input coordinates, as ``affine_grid`` wants)."""
    ang = _uniform(n, math.radians(cfg.rotate_deg), g, device)
    zoom = 1 + _uniform(n, cfg.scale, g, device)
    flip = torch.where(torch.rand(n, generator=g, device=device) < cfg.flip, -1.0, 1.0)
    tx, ty = _uniform(n, 2 * cfg.shift, g, device), _uniform(n, 2 * cfg.shift, g, device)
    c, s = torch.cos(ang) / zoom, torch.sin(ang) / zoom
    return torch.stack([torch.stack([c * flip, -s, tx], 1), torch.stack([s * flip, c, ty], 1)], 1)


def geometric(images: torch.Tensor, masks: torch.Tensor | None, cfg: AugmentConfig,
              g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """images float [N, 1, H, W] (0..1), masks float [N, 1, H, W] (0/1) -> the same, moved.
    Masks are resampled bilinearly and re-thresholded at 0.5 (nearest would jag the outline)."""
    theta = affine(images.shape[0], cfg, g, images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is None:
        return out, None
    m = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, (m > 0.5).to(masks.dtype)


def intensity(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """images float [N, 1, H, W] in 0..1 -> gain, gamma and speckle applied, clamped to 0..1."""
    n, dev = images.shape[0], images.device
    gain = (1 + _uniform(n, cfg.gain, g, dev)).view(n, 1, 1, 1)
    gamma = torch.exp(_uniform(n, math.log1p(cfg.gamma), g, dev)).view(n, 1, 1, 1)
    x = images.clamp(0, 1).pow(gamma) * gain
    if cfg.speckle > 0:
        x = x * (1 + cfg.speckle * torch.randn(images.shape, generator=g, device=dev))
    return x.clamp(0, 1)


# -- pretraining: one draw per clip ------------------------------------------------------------

@dataclass
class ClipAugmentConfig(AugmentConfig):
    """Pretraining's augmentation (the ``augment:`` section of a pretrain config), drawn once per
    clip: the K frames of a clip share one geometry and one intensity draw, so IO's ordering
    signal (the anatomy moving) survives, while two clips (the two sides of a PM pair, from two
    videos) get two draws. ``enabled: false`` leaves the batch untouched (today's batches).

    On top of the fine-tuning geometry and gain/gamma, the display window of a log-compressed
    B-mode image, which scanner presets set per patient: ``level`` shifts the grey (a gain
    change in dB: ``x + u``, u in [-level, level]) and ``dyn_range`` scales it about white (a
    wider or narrower dynamic range: ``1 + (x - 1) * r``, ln r in [-ln(1+d), ln(1+d)]). Black
    outside the fan stays black (MIR's sector is derived from it). ``speckle`` here draws one
    noise field per clip (shared by its frames)."""
    enabled: bool = False
    gain: float = 0.1
    gamma: float = 0.2
    speckle: float = 0.0
    level: float = 0.1
    dyn_range: float = 0.3

    def __post_init__(self):
        super().__post_init__()
        for k in ("level", "dyn_range"):
            if not 0 <= getattr(self, k) < 1:
                raise SonostreamError(f"augment.{k} must be in [0, 1), got {getattr(self, k)}")


def augment_clips(frames: torch.Tensor, cfg: ClipAugmentConfig, g: torch.Generator) -> torch.Tensor:
    """uint8 frames [B, K, 1, H, W] -> the same, one draw per clip from ``g`` (on the frames'
    device). Intensity first, on the stored pixels (the fan is exactly the non-zero ones), then
    the geometry (one affine per clip; outside the frame reads black).

    Black inside the fan (fluid, echoes below the display floor) stays black too, so a draw that
    lifts the floor leaves those pixels as dark holes: a scanner would lift those just below the
    floor with it. The clip's ``tasks.sector_mask`` is no better fan here: uneroded, its fill
    also lights blocks outside a dark clip's fan (seen on the hard cohort)."""
    b, k, c, h, w = frames.shape
    dev = frames.device
    x = frames.reshape(b * k, c, h, w).float() / 255.0

    def per_clip(t):   # [B] -> [B*K, 1, 1, 1]
        return t.repeat_interleave(k).view(b * k, 1, 1, 1)

    gain = per_clip(1 + _uniform(b, cfg.gain, g, dev))
    gamma = per_clip(torch.exp(_uniform(b, math.log1p(cfg.gamma), g, dev)))
    level = per_clip(_uniform(b, cfg.level, g, dev))
    span = per_clip(torch.exp(_uniform(b, math.log1p(cfg.dyn_range), g, dev)))
    y = 1 + (x.pow(gamma) * gain - 1) * span + level
    if cfg.speckle > 0:
        noise = torch.randn((b, 1, c, h, w), generator=g, device=dev).expand(b, k, c, h, w)
        y = y * (1 + cfg.speckle * noise.reshape(b * k, c, h, w))
    y = torch.where(x > 0, y.clamp(0, 1), torch.zeros_like(y))
    theta = affine(b, cfg, g, dev).repeat_interleave(k, 0)
    grid = F.affine_grid(theta, [b * k, c, h, w], align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (y * 255.0).round_().clamp_(0, 255).to(torch.uint8).view(b, k, c, h, w)
