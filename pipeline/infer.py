"""Inference with a segmenter: device choice, batched prediction, post-processing.

Shared by ``evaluate`` (a split of a dataset), ``segment-video`` (cine loops) and ``bench video``;
none of them segments a frame any other way.

* :func:`predict` brings each frame to the model's input size the way ``build`` stores frames
  (square frames resized; others letterboxed by the contract's ``Letterbox``: longer side to the
  size, centred on black), runs the model once per batch, and maps the probabilities back onto
  each frame's own pixels.
* :func:`largest_component` keeps one head per frame (as nnU-Net does when it helps on
  validation data); fewer than MIN_HEAD_PIXELS pixels is no head at all.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from pipeline.models.inputs import to_unit
from preprocessing.format import Letterbox, SonostreamError
from preprocessing.imaging import letterbox

MIN_HEAD_PIXELS = 16   # fewer predicted pixels than this: no head (no ellipse, no HC)


def pick_device(device=None) -> torch.device:
    """``device`` as given, else CUDA when present, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _to_model(frame: np.ndarray, size: tuple[int, int]):
    """(model input, letterbox or None): square frames are resized, others letterboxed."""
    if frame.shape == tuple(size):
        return frame, None
    if frame.shape[0] == frame.shape[1]:
        return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA), None
    lb = Letterbox.fit(frame.shape[0], frame.shape[1], size[0])
    return letterbox(frame, lb), lb


def _from_model(prob: np.ndarray, frame: np.ndarray, lb: Letterbox | None) -> np.ndarray:
    if lb is not None:
        prob = prob[lb.pad_y:lb.pad_y + lb.out_h, lb.pad_x:lb.pad_x + lb.out_w]
    if prob.shape == frame.shape:
        return prob
    return cv2.resize(prob, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)


@torch.no_grad()
def predict(model, frames: list[np.ndarray], size: tuple[int, int], device) -> tuple[list, np.ndarray | None]:
    """Probability maps at each frame's own size ([H, W] float32) and plane logits [N, P] (None
    without a plane head). ``frames``: (H, W) uint8; ``size``: the model's square input size."""
    if size[0] != size[1]:
        raise SonostreamError(f"the model's input size must be square, got {size}")
    inputs = [_to_model(f, size) for f in frames]
    x = to_unit(torch.from_numpy(np.stack([x for x, _ in inputs])).to(device).unsqueeze(1))
    logits, plane = model(x)
    probs = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    out = [_from_model(p, f, lb) for p, f, (_, lb) in zip(probs, frames, inputs)]
    return out, (None if plane is None else plane.float().cpu().numpy())


def softmax(logits: np.ndarray) -> np.ndarray:
    """[N, C] logits -> probabilities, row by row."""
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def largest_component(prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, prob) keeping only the largest connected region of prob > 0.5: there is one head
    per frame, and a stray speck would otherwise count in Dice and pull the ellipse fit."""
    pred = (prob > 0.5).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(pred, connectivity=8)
    if n <= 2:   # background + at most one region: nothing to remove
        return pred.astype(bool), prob
    keep = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    grown = cv2.dilate(keep.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return keep, np.where(grown, prob, 0.0).astype(prob.dtype)   # keep the sub-pixel edge
