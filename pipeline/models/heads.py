"""The three pretext heads. Each takes encoder output that was computed once for all of them.

* :class:`MIRDecoder` - masked image reconstruction as a VAE: per-location Gaussian latent at
  stride 32, decoded back to the *full* input resolution by learned 2x upsamplings (not decoded
  small and interpolated up).
* :class:`PMHead` - patient matching: a 2-layer MLP on a pair's pooled features -> one logit.
* :class:`IOHead` - image ordering: an MLP on the K frame features, concatenated in the order
  the frames are shown, -> one logit per permutation class.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from preprocessing.format import SonostreamError


@dataclass
class HeadsConfig:
    latent_channels: int = 64      # MIR: VAE latent channels per stride-32 location
    decoder_width: int = 128       # MIR: channels of the first upsampling stage (halved per stage)
    pm_hidden: int = 512           # PM: hidden units of the pair MLP
    io_hidden: int = 512           # IO: hidden units of the ordering MLP

    def __post_init__(self):
        for k in ("latent_channels", "decoder_width", "pm_hidden", "io_hidden"):
            if getattr(self, k) < 1:
                raise SonostreamError(f"heads.{k} must be >= 1, got {getattr(self, k)}")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)   # batch-size independent (per-rank batches can be small)


class MIRDecoder(nn.Module):
    """feat (N, C, h, w) -> recon (N, out_chans, H, W), mu and logvar (N, z, h, w).

    Three learned 2x upsamplings (ConvTranspose + 3x3 conv) take the stride-32 latent to
    stride 4; a 1x1 conv then predicts every pixel of each 4x4 cell and PixelShuffle lays them
    out at full resolution (as MAE predicts a patch's pixels). Every output pixel has its own
    learned weights, unlike decoding small and interpolating up; and no activation map is
    larger than stride 4, which keeps the decoder a small fraction of the encoder's cost even
    when it reconstructs all K frames of every clip.
    """

    STAGES, CELL = 3, 4   # 2**3 * 4 = 32, the encoder's stride

    def __init__(self, in_dim: int, cfg: HeadsConfig, out_chans: int = 1):
        super().__init__()
        self.stats = nn.Conv2d(in_dim, 2 * cfg.latent_channels, 1)
        layers, c = [], cfg.latent_channels
        for i in range(self.STAGES):
            w = max(16, cfg.decoder_width >> i)
            layers += [nn.ConvTranspose2d(c, w, 2, stride=2), _norm(w), nn.GELU(),
                       nn.Conv2d(w, w, 3, padding=1), _norm(w), nn.GELU()]
            c = w
        layers += [nn.Conv2d(c, out_chans * self.CELL ** 2, 1), nn.PixelShuffle(self.CELL)]
        self.up = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor, size: tuple[int, int], noise_seed: int | None = None):
        mu, logvar = self.stats(feat).float().chunk(2, dim=1)
        logvar = logvar.clamp(-10.0, 10.0)   # exp() stays finite in fp16/bf16
        z = mu
        if self.training:
            # Noise from a generator seeded per step: the same step gives the same draw after a
            # resume, whatever else consumed the global RNG.
            g = None
            if noise_seed is not None:
                g = torch.Generator(device=mu.device).manual_seed(noise_seed)
            eps = torch.randn(mu.shape, generator=g, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        recon = self.up(z.to(feat.dtype))
        if recon.shape[-2:] != tuple(size):   # H or W not a multiple of 32
            recon = F.interpolate(recon, size=size, mode="bilinear", align_corners=False)
        return recon, mu, logvar


class PMHead(nn.Module):
    """fa, fb (P, C) -> logits (P,): same patient or not. Symmetric in a and b."""

    def __init__(self, in_dim: int, cfg: HeadsConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * in_dim, cfg.pm_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(cfg.pm_hidden, 1))

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([(fa - fb).abs(), fa * fb], dim=1)).squeeze(1)


class IOHead(nn.Module):
    """feats (B, K, C), frames in the order shown -> logits (B, classes)."""

    def __init__(self, in_dim: int, clip_len: int, classes: int, cfg: HeadsConfig):
        super().__init__()
        self.classes = classes
        self.mlp = nn.Sequential(nn.Linear(clip_len * in_dim, cfg.io_hidden), nn.ReLU(inplace=True),
                                 nn.Linear(cfg.io_hidden, classes))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats.flatten(1))
