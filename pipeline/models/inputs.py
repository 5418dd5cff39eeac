"""What the networks expect as input: the one definition of it.

Stored frames are 8-bit grayscale (0..255, ``PIXEL_MAX``). Every model input in sonostream is
made by :func:`to_unit` (pixels / 255 -> 0..1) and then :func:`normalize` (``(x - MEAN) / STD`` =
``x * 2 - 1`` -> -1..1, so a masked, zeroed MIR patch reads as mid-grey). The ``Segmenter``
applies ``normalize`` inside its ``forward`` (its input is 0..1); the bare ``ResNetEncoder`` and
the state dicts in ``encoder.pt`` / ``segmenter.pt`` expect the normalised -1..1 input.
:func:`preprocessing` writes these same constants into both files' metadata, so what a
plain torchvision / timm / smp model is told to do cannot drift from what sonostream does.
"""
from __future__ import annotations

import torch

PIXEL_MAX = 255.0      # stored frames: uint8 0..255
MEAN, STD = 0.5, 0.5   # after / PIXEL_MAX: (x - MEAN) / STD, i.e. x * 2 - 1
RESIZE = ("frames of another size: square ones resized with cv2.INTER_AREA, others letterboxed "
          "(longer side to the size, centred on black), as `sonostream build` stores them")


def to_unit(pixels: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """uint8 pixels 0..255 -> float 0..1."""
    return pixels.to(dtype) / PIXEL_MAX


def normalize(imgs: torch.Tensor) -> torch.Tensor:
    """0..1 pixels -> -1..1 (``(x - MEAN) / STD``, written so it is bit-identical to ``x*2-1``)."""
    return imgs * (1.0 / STD) - MEAN / STD


def preprocessing(in_chans: int, image_size=None) -> dict:
    """The input recipe stored in ``encoder.pt`` / ``segmenter.pt`` (plain str/int/float/list)."""
    out = {"pixels": "uint8 0..255, grayscale (the stored frames)",
           "pixel_max": PIXEL_MAX, "mean": [MEAN] * in_chans, "std": [STD] * in_chans,
           "formula": f"x = (pixels / pixel_max - mean) / std  (here pixels / "
                      f"{PIXEL_MAX * STD:g} - 1, range -1..1)",
           "channels": "gray", "in_chans": in_chans, "layout": "NCHW float32", "resize": RESIZE}
    if image_size is not None:
        out["image_size"] = [int(s) for s in image_size]
    return out

