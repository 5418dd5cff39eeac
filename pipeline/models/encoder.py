"""The image encoder: a torchvision ResNet with a 1-channel stem, randomly initialised.

No weights are downloaded (ultrasound is not ImageNet, and clusters are often offline). The
module *is* a torchvision ``ResNet`` minus ``avgpool``/``fc``, so its state dict uses the
torchvision names (``conv1.weight``, ``layer1.0.conv1.weight``, ...) that
segmentation-models-pytorch's ResNet encoders also use: ``encoder.pt`` loads into either.
Its input is normalised, -1..1 (``inputs.py``; ``encoder.pt`` records the recipe).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from preprocessing.format import SonostreamError

from .files import ENCODER_KEYS, describe, load_weights, require
from .inputs import preprocessing

# name -> (block, blocks per stage). "tiny" (a ResNet-10: one block per stage) is the debug size.
ARCHS = {
    "tiny": (BasicBlock, [1, 1, 1, 1]),
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}
FORMAT = "sonostream-encoder/1"


@dataclass
class EncoderConfig:
    arch: str = "resnet18"      # tiny | resnet18 | resnet34 | resnet50
    in_chans: int = 1           # grayscale B-mode

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise SonostreamError(f"model.arch must be one of {', '.join(ARCHS)}, got "
                                  f"{self.arch!r}")
        if self.in_chans < 1:
            raise SonostreamError(f"model.in_chans must be >= 1, got {self.in_chans}")


class ResNetEncoder(ResNet):
    """imgs (N, in_chans, H, W), normalised (``inputs.normalize``: -1..1) -> feature map
    (N, out_dim, H/32, W/32)."""

    def __init__(self, arch: str = "resnet18", in_chans: int = 1):
        EncoderConfig(arch, in_chans)  # validates
        block, layers = ARCHS[arch]
        super().__init__(block, layers)
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        del self.fc, self.avgpool
        self.arch, self.in_chans = arch, in_chans
        self.out_dim = feature_dim(arch)

    def forward(self, x: torch.Tensor, skip_stride: int | None = None):
        """The last feature map; with ``skip_stride`` (4, 8, 16) also the map of that stride
        (layer1, layer2, layer3) from the same pass: ``(last, skip)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        skip = None
        for stride, layer in zip((4, 8, 16, 32), (self.layer1, self.layer2, self.layer3,
                                                  self.layer4)):
            x = layer(x)
            if stride == skip_stride:
                skip = x
        return x if skip_stride is None else (x, skip)


def encoder_meta(arch: str, in_chans: int, image_size=None) -> dict:
    """What ``encoder.pt`` says of its network: shape, input recipe (``inputs.preprocessing``;
    ``image_size`` is the pretraining frame size, any multiple of 32 works) and output."""
    block, layers = ARCHS[arch]
    return {"arch": arch, "in_chans": in_chans, "out_dim": feature_dim(arch),
            "block": block.__name__, "layers": list(layers),
            "preprocessing": preprocessing(in_chans, image_size),
            "output": f"feature map [N, {feature_dim(arch)}, H/32, W/32]: layer4 of a torchvision "
                      "ResNet (no avgpool/fc)"}


def export_encoder(state_dict: dict, arch: str, in_chans: int, path, image_size=None,
                   **meta) -> None:
    """Write ``encoder.pt``: plain dict of str/int/float/list and tensors, so ``weights_only=True``
    loads it."""
    from preprocessing.atomic import atomic_open
    blob = {"format": FORMAT, **encoder_meta(arch, in_chans, image_size),
            "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()}, **meta}
    with atomic_open(path, "wb") as f:
        torch.save(blob, f)


def feature_dim(arch: str, stride: int = 32) -> int:
    """Channels of the encoder's feature map of ``stride`` (4, 8, 16, 32 = the last)."""
    return {4: 64, 8: 128, 16: 256, 32: 512}[stride] * ARCHS[arch][0].expansion


def load_encoder(path, arch: str | None = None) -> ResNetEncoder:
    """A fresh :class:`ResNetEncoder` holding the weights of ``encoder.pt`` at ``path``, in eval
    mode (``.train()`` to train it on). Its input is normalised: see ``preprocessing`` in the file."""
    return load_encoder_and_meta(path, arch)[0]


def load_encoder_and_meta(path, arch: str | None = None) -> tuple[ResNetEncoder, dict]:
    """:func:`load_encoder`, and the file's metadata (every key but ``state_dict``: arch,
    preprocessing with the pretraining ``image_size``, step, complete, ...)."""
    path = Path(path)
    if not path.is_file():
        raise SonostreamError(f"encoder checkpoint {path} does not exist (pretraining writes "
                              f"RUN/encoder.pt)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not ours"
        blob = type(e).__name__
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        what = describe(blob) if not isinstance(blob, str) else f"not loadable as a torch file: {blob}"
        raise SonostreamError(f"{path} is not a sonostream encoder (expected format {FORMAT!r}; "
                              f"it is {what}); pass the encoder.pt a pretraining run wrote")
    require(blob, ENCODER_KEYS, path, "encoder")
    if arch is not None and blob["arch"] != arch:
        raise SonostreamError(f"{path} holds a {blob['arch']} encoder, not {arch}; set model.arch "
                              f"to {blob['arch']!r} or pass another encoder")
    enc = ResNetEncoder(blob["arch"], blob["in_chans"])
    load_weights(enc, blob["state_dict"], path, f"{blob['arch']} encoder")
    return enc.eval(), {k: v for k, v in blob.items() if k != "state_dict"}
