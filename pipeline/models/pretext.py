"""PretrainModel: one encoder pass over every frame of a clip batch feeds MIR, PM and IO.

The seed encoded each sample three times (1 image for MIR, 2 for PM, K for IO: 7 at K = 4). Here
the B*K frames of B clips are encoded once; PM picks its pairs and IO its permutation among those
features, which is the same as encoding the picked or permuted frames because the encoder sees
one frame at a time. All frames are masked for MIR, so PM and IO learn from masked frames:
masking doubles as their augmentation.
"""
from __future__ import annotations

import torch
from torch import nn

from .encoder import ResNetEncoder, feature_dim
from .heads import HeadsConfig, IOHead, MIRDecoder, PMHead
from .inputs import normalize   # 0..1 -> -1..1 (inputs.py defines every model input)


def apply_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x (N, 1, H, W) normalized; mask (N, 1, H, W) bool, True = hidden -> 0."""
    return x if mask is None else x.masked_fill(mask, 0.0)


class PretrainModel(nn.Module):
    def __init__(self, arch: str, clip_len: int, io_classes: int, heads: HeadsConfig | None = None,
                 tasks=("mir", "pm", "io"), in_chans: int = 1):
        super().__init__()
        heads = heads or HeadsConfig()
        self.encoder = ResNetEncoder(arch, in_chans)
        d = self.encoder.out_dim
        self.tasks = tuple(tasks)
        self.mir = None
        self.skip_stride = None   # the MIR latent's encoder stage, taken from the same pass
        if "mir" in tasks:
            if heads.mir_stride != 32:
                self.skip_stride = heads.mir_stride
            self.mir = MIRDecoder(d, heads, in_chans,
                                  feature_dim(arch, heads.mir_stride) if self.skip_stride else None)
        self.pm = PMHead(d, heads) if "pm" in tasks else None
        self.io = IOHead(d, clip_len, io_classes, heads) if "io" in tasks else None

    def encode(self, x: torch.Tensor):
        """x (N, 1, H, W) -> feature map (N, C, h, w) and pooled features (N, C)."""
        fmap, pooled, _ = self.encode_with_skip(x)
        return fmap, pooled

    def encode_with_skip(self, x: torch.Tensor):
        """:meth:`encode` and the MIR latent's earlier stage (None when MIR sits on the last
        map), all from one encoder pass."""
        if self.skip_stride is None:
            fmap, skip = self.encoder(x), None
        else:
            fmap, skip = self.encoder(x, skip_stride=self.skip_stride)
        return fmap, fmap.mean(dim=(2, 3)), skip

    def forward(self, frames: torch.Tensor, mir_mask: torch.Tensor | None, io_perm: torch.Tensor,
                pm_a: torch.Tensor, pm_b: torch.Tensor, noise_seed: int | None = None) -> dict:
        """frames (B, K, 1, H, W) in 0..1; mir_mask like frames (bool); io_perm (B, K);
        pm_a, pm_b (P, 2) as (clip, frame). Returns each active head's raw outputs."""
        b, k, c, h, w = frames.shape
        x = normalize(frames.reshape(b * k, c, h, w))
        m = None if mir_mask is None else mir_mask.reshape(b * k, c, h, w)
        fmap, pooled, skip = self.encode_with_skip(apply_mask(x, m))
        out = {"target": x}
        if self.mir is not None:
            recon, mu, logvar = self.mir(fmap, (h, w), noise_seed, skip)
            out.update(recon=recon, mu=mu, logvar=logvar)
        feats = pooled.view(b, k, -1)
        if self.pm is not None:
            if len(pm_a):
                out["pm_logits"] = self.pm(feats[pm_a[:, 0], pm_a[:, 1]], feats[pm_b[:, 0], pm_b[:, 1]])
            else:  # no pairs in this batch: keep the head in the graph (DDP expects every grad)
                out["pm_logits"] = pooled.new_zeros(0)
                out["unused"] = self.pm(pooled[:1], pooled[:1]).sum() * 0.0
        if self.io is not None:
            out["io_logits"] = self.io(feats[torch.arange(b, device=feats.device)[:, None], io_perm])
        return out
