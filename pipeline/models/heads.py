"""The three pretext heads. Each takes encoder output that was computed once for all of them.

* :class:`MIRDecoder` - masked image reconstruction as a VAE: per-location Gaussian latent at
  ``heads.mir_stride`` (default 8: 8x8 at 64 px; the encoder's last map is 2x2 there), made by
  a top-down merge of the last feature map with the encoder stage of that stride, decoded back
  to the *full* input resolution by learned 2x upsamplings (not decoded small and interpolated up).
* :class:`PMHead` - patient matching: a 2-layer MLP on a pair's pooled features -> one logit.
* :class:`IOHead` - image ordering: ``heads.io_head="symmetric"`` (default) and ``"pairwise"``
  compare the shown frames two by two and sum the pairs' log-probabilities into the permutation
  classes (``symmetric`` feeds each pair's MLP only what does not depend on which frame of the
  pair came first); ``"concat"`` is an MLP on the K frame features concatenated in the order shown.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.tasks import IO_REVERSE, io_classes
from preprocessing.format import SonostreamError

IO_HEADS = ("symmetric", "pairwise", "concat")
MIR_STRIDES = (8, 16, 32)   # the encoder stages a MIR latent can sit on (layer2, layer3, layer4)


@dataclass
class HeadsConfig:
    latent_channels: int = 64      # MIR: VAE latent channels per latent location
    decoder_width: int = 128       # MIR: decoder channels at stride 16 (halved per 2x finer)
    mir_stride: int = 8            # MIR: latent stride (8, 16 or 32 = the encoder's last map)
    pm_hidden: int = 512           # PM: hidden units of the pair MLP
    io_hidden: int = 512           # IO: hidden units of the ordering MLP (per pair if pairwise)
    io_head: str = "symmetric"     # IO: "symmetric" / "pairwise" (frames compared two by two) or "concat"

    def __post_init__(self):
        for k in ("latent_channels", "decoder_width", "pm_hidden", "io_hidden"):
            if getattr(self, k) < 1:
                raise SonostreamError(f"heads.{k} must be >= 1, got {getattr(self, k)}")
        if self.mir_stride not in MIR_STRIDES:
            raise SonostreamError(f"heads.mir_stride must be one of {MIR_STRIDES} (the encoder "
                                  f"stage the MIR latent sits on), got {self.mir_stride}")
        if self.io_head not in IO_HEADS:
            raise SonostreamError(f"heads.io_head must be one of {IO_HEADS}, got {self.io_head!r}")


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)   # batch-size independent (per-rank batches can be small)


class MIRDecoder(nn.Module):
    """feat (N, C, h, w) [+ skip (N, C_s, H/s, W/s)] -> recon (N, out_chans, H, W), mu and
    logvar (N, z, H/s, W/s) with s = ``cfg.mir_stride``.

    At s = 32 the latent comes from the encoder's last map alone, 2x2 at 64 px: too coarse to
    say where anything is. At s = 8 or 16 a top-down merge (as in a feature pyramid) makes it:
    the last map, 1x1-projected and upsampled, plus the 1x1-projected encoder stage of stride s
    (``skip``, from the same encoder pass), so MIR's gradient still reaches every stage. Then
    log2(s / 4) learned 2x upsamplings (ConvTranspose + 3x3 conv) take the latent to stride 4;
    a 1x1 conv predicts every pixel of each 4x4 cell and PixelShuffle lays them out at full
    resolution (as MAE predicts a patch's pixels). No activation map is larger than stride 4,
    which keeps the decoder a small fraction of the encoder's cost even when it reconstructs
    all K frames of every clip.
    """

    CELL = 4

    def __init__(self, in_dim: int, cfg: HeadsConfig, out_chans: int = 1,
                 skip_dim: int | None = None):
        super().__init__()
        self.stride = cfg.mir_stride
        if self.stride != 32 and skip_dim is None:
            raise SonostreamError(f"heads.mir_stride {self.stride} needs the encoder stage of "
                                  "that stride (skip_dim)")
        if self.stride == 32:
            self.stats = nn.Conv2d(in_dim, 2 * cfg.latent_channels, 1)
        else:
            w0 = self.width(cfg, self.stride)
            self.top = nn.Conv2d(in_dim, w0, 1)
            self.lateral = nn.Conv2d(skip_dim, w0, 1)
            self.merge = nn.Sequential(_norm(w0), nn.GELU())
            self.stats = nn.Conv2d(w0, 2 * cfg.latent_channels, 3, padding=1)
        layers, c = [], cfg.latent_channels
        for i in range(self.stages):
            w = self.width(cfg, self.stride >> (i + 1))
            layers += [nn.ConvTranspose2d(c, w, 2, stride=2), _norm(w), nn.GELU(),
                       nn.Conv2d(w, w, 3, padding=1), _norm(w), nn.GELU()]
            c = w
        layers += [nn.Conv2d(c, out_chans * self.CELL ** 2, 1), nn.PixelShuffle(self.CELL)]
        self.up = nn.Sequential(*layers)

    @staticmethod
    def width(cfg: HeadsConfig, stride: int) -> int:
        """Channels at ``stride``: ``decoder_width`` at 16, halved per 2x finer (at least 16),
        whatever the latent's stride, so a finer latent costs no more per pixel."""
        return max(16, cfg.decoder_width >> {16: 0, 8: 1, 4: 2}[stride])

    @property
    def stages(self) -> int:
        return {8: 1, 16: 2, 32: 3}[self.stride]

    def latent_input(self, feat: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.stride == 32:
            return feat
        lat = self.lateral(skip)
        top = F.interpolate(self.top(feat), size=lat.shape[-2:], mode="nearest")
        return self.merge(lat + top)

    def forward(self, feat: torch.Tensor, size: tuple[int, int], noise_seed: int | None = None,
                skip: torch.Tensor | None = None):
        x = self.latent_input(feat, skip)
        mu, logvar = self.stats(x).float().chunk(2, dim=1)
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
        if recon.shape[-2:] != tuple(size):   # H or W not a multiple of the stride
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


def io_reverse_of(clip_len: int, classes: int) -> str:
    """The ``io_reverse`` that gives ``classes`` IO classes at K = ``clip_len``."""
    for reverse in IO_REVERSE:
        try:
            if len(io_classes(clip_len, reverse)) == classes:
                return reverse
        except SonostreamError:
            pass
    raise SonostreamError(f"{classes} IO classes fit no io_reverse at clip_len {clip_len}")


def pair_relations(clip_len: int, reverse: str) -> tuple[list, torch.Tensor, int]:
    """(pairs, relation [C, P], R): the shown-position pairs (i < j), and for each IO class c and
    pair p the index of the pair's relation under class c's canonical permutation ``perm``:
    with ``reverse="same"`` the frames' distance in time ``|perm[i] - perm[j]| - 1`` (R = K - 1;
    a direction-free relation, as the class is), with ``"distinct"`` the signed offset
    ``perm[j] - perm[i]`` (R = 2 (K - 1)). The distances of all pairs fix the order up to
    direction, the offsets fix it exactly, so no two classes share a row."""
    k = clip_len
    perms = io_classes(k, reverse)
    pairs = list(itertools.combinations(range(k), 2))
    rel = torch.empty(len(perms), len(pairs), dtype=torch.long)
    for c, p in enumerate(perms.tolist()):
        for q, (i, j) in enumerate(pairs):
            d = p[j] - p[i]
            rel[c, q] = abs(d) - 1 if reverse == "same" else (d + k - 1 if d < 0 else d + k - 2)
    return pairs, rel, (k - 1 if reverse == "same" else 2 * (k - 1))


class IOHead(nn.Module):
    """feats (B, K, C), frames in the order shown -> logits (B, classes).

    ``symmetric`` (default) and ``pairwise``: for each pair of shown positions i < j an MLP gives
    log-probabilities over the pair's relation (distance in time, or signed offset with
    ``io_reverse="distinct"``: :func:`pair_relations`); a class's logit is the sum over pairs of
    the log-probability of the relation that class implies, a fixed map from pair scores to the
    ``io_classes`` (the joint log-likelihood if the pairs were independent). Comparing two frames
    is what ordering needs; the concatenating MLP must learn every comparison inside one layer,
    and stays at chance in a short run.

    The two pairwise kinds differ in what the pair MLP sees. ``pairwise``: ``[f_i, f_j, f_i - f_j]``,
    the frames themselves: it can learn where each training frame sits in its sweep and fits the
    training clips without ordering held-out ones (chance on val patients in 200 debug steps).
    ``symmetric``: ``[|f_i - f_j|, f_i * f_j]`` (PM's pair features), which do not change when the
    two frames swap, as the time distance they predict does not (``io_reverse="same"``); with
    ``"distinct"`` the signed ``f_i - f_j`` is added, since the offset's sign is then a label.
    It has to score how far apart two frames are from how they differ (BENCHMARKS.md, "IO stride").
    ``concat``: an MLP on the K features concatenated in the order shown.
    """

    def __init__(self, in_dim: int, clip_len: int, classes: int, cfg: HeadsConfig):
        super().__init__()
        self.classes, self.kind = classes, cfg.io_head
        if self.kind == "concat":
            self.mlp = nn.Sequential(nn.Linear(clip_len * in_dim, cfg.io_hidden),
                                     nn.ReLU(inplace=True), nn.Linear(cfg.io_hidden, classes))
            return
        reverse = io_reverse_of(clip_len, classes)
        pairs, rel, r = pair_relations(clip_len, reverse)
        # symmetric: the signed difference too where the offset's sign is a label
        self.signed = reverse == "distinct"
        parts = 3 if self.kind == "pairwise" else 2 + self.signed
        self.register_buffer("pair_i", torch.tensor([i for i, _ in pairs]), persistent=False)
        self.register_buffer("pair_j", torch.tensor([j for _, j in pairs]), persistent=False)
        self.register_buffer("relation", rel, persistent=False)
        self.pair = nn.Sequential(nn.Linear(parts * in_dim, cfg.io_hidden),
                                  nn.ReLU(inplace=True),
                                  nn.Linear(cfg.io_hidden, r))

    def pair_logprobs(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, P, R): each shown pair's log-probabilities over its relations."""
        fi, fj = feats[:, self.pair_i], feats[:, self.pair_j]
        d = fi - fj
        if self.kind == "pairwise":
            z = torch.cat([fi, fj, d], dim=-1)
        else:
            z = torch.cat([d.abs(), fi * fj, *([d] if self.signed else [])], dim=-1)
        return F.log_softmax(self.pair(z).float(), dim=-1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return self.mlp(feats.flatten(1))
        lp = self.pair_logprobs(feats)                                  # (B, P, R)
        p = torch.arange(lp.shape[1], device=lp.device)
        return lp[:, p[None, :], self.relation].sum(-1)                 # (B, C)
