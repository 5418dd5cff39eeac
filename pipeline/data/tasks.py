"""The three pretext tasks' labels, made from one batch of clips.

* **IO** (image ordering): each clip gets a uniformly random permutation ``perm`` of its K
  frames; the model sees ``frames[perm]`` and predicts the permutation's class. A sweep can run
  either way (the probe moves up or down): the frames shown as ``clip[p]`` look exactly like the
  time-reversed clip shown as ``reversed_clip[K-1-p]``. So by default ``p`` and its time
  reversal ``K-1-p`` are one class (``io_reverse="same"``: K!/2 classes, 12 for K = 4), and the
  label gives the frames' order up to direction. ``io_reverse="distinct"`` keeps all K! classes. ``IO_CLASSES[label]`` is the
  canonical permutation; ``frames[perm][argsort(canonical)]`` restores temporal order (or its
  exact reverse).
* **PM** (patient matching): pairs of frames across the batch, 1 = same patient. By default
  (``pm_positive="patient"``) a clip's positive is a frame of a clip from *another video* of
  its patient in the batch (never its own clip or video: those share speckle, gain and drift,
  so "same clip" would be learnt instead of "same patient"), and its negative a frame of a clip
  of another patient. A clip gives one positive and one negative, or neither: a clip with no
  other video of its patient in the batch (a patient with a single video, or whose other videos
  are not in this batch) or no other patient gives no pair at all, so positives and negatives
  are always balanced, one of each per clip that has both. The placement's patient groups
  (``loader.patient_groups``) put clips of one patient from distinct videos into a batch so
  that most clips have a positive; patients with a single video give no PM pairs.
  ``pm_positive="video"``: the positive is another frame of the same clip (every clip with
  another patient in the batch gives a pair; the weaker, same-clip signal). By default the two
  sides come from different clips, so each has its own MIR mask (with tube masks the two frames
  of a same-clip pair share one).
* **MIR** (masked image reconstruction): exactly ``round(ratio * gh * gw)`` of the ``gh x gw``
  patches are masked, drawn on the device that trains (:func:`clip_masks`). ``mask_mode="tube"``
  (the default) hides the same patches in all K frames of a clip, so what differs between a
  clip's frames is the anatomy's motion, not which patches are hidden (with a fresh mask per
  frame, ``"frame"``, IO's frame differences are dominated by the masks: an oracle on pooled
  pixels orders such clips at chance). The loss counts hidden pixels inside the imaged sector
  only (:func:`sector_mask`: the fan, pixels lit in some frame of the clip).
"""
from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

from preprocessing.format import SonostreamError

IO_REVERSE = ("same", "distinct")
MASK_MODES = ("tube", "frame")
MAX_IO_CLIP_LEN = 6   # 6! = 720 permutations; beyond that a classifier over all of them is silly


@lru_cache(maxsize=None)
def io_classes(k: int, reverse: str = "same") -> np.ndarray:
    """[C, K] canonical permutations; row c is class c."""
    if reverse not in IO_REVERSE:
        raise SonostreamError(f"io_reverse must be one of {IO_REVERSE}, got {reverse!r}")
    if not 2 <= k <= MAX_IO_CLIP_LEN:
        raise SonostreamError(f"image ordering needs 2 <= clip_len <= {MAX_IO_CLIP_LEN}, got {k}")
    perms = [p for p in itertools.permutations(range(k))
             if reverse == "distinct" or p <= _time_reversed(p)]
    if len(perms) < 2:
        raise SonostreamError(f"clip_len {k} with io_reverse='same' leaves one class; use clip_len "
                              f">= 3 or io_reverse='distinct'")
    return np.array(perms, dtype=np.int64)


def _time_reversed(p: tuple) -> tuple:
    return tuple(len(p) - 1 - i for i in p)


@lru_cache(maxsize=None)
def _class_lookup(k: int, reverse: str) -> dict:
    return {tuple(p): c for c, p in enumerate(io_classes(k, reverse).tolist())}


def io_labels(rng: np.random.Generator, n: int, k: int, reverse: str = "same"):
    """(perm [n, K], label [n]): random permutations and their class indices."""
    lookup = _class_lookup(k, reverse)
    perm = rng.permuted(np.tile(np.arange(k, dtype=np.int64), (n, 1)), axis=1)
    labels = np.empty(n, np.int64)
    for i, p in enumerate(perm.tolist()):
        t = tuple(p)
        if reverse == "same" and t > _time_reversed(t):
            t = _time_reversed(t)
        labels[i] = lookup[t]
    return perm, labels


PM_POSITIVES = ("video", "patient")


def pm_pairs(rng: np.random.Generator, patient: np.ndarray, video: np.ndarray, k: int,
             positive: str = "patient"):
    """(a [P, 2], b [P, 2], label [P]): pairs of (clip, frame) with 1 = same patient.

    Positives and negatives alternate (clip i's positive, then its negative). ``positive``:
    "patient" (a clip of another video of the patient; clips without one give no pair) or
    "video" (another frame of the same clip).
    """
    if positive not in PM_POSITIVES:
        raise SonostreamError(f"pm_positive must be one of {PM_POSITIVES}, got {positive!r}")
    patient, video = np.asarray(patient), np.asarray(video)
    n = len(patient)
    other = patient[:, None] != patient[None, :]
    has_pair = other.any(axis=1)
    if positive == "patient":
        sibling = ~other & (video[:, None] != video[None, :])
        has_pair &= sibling.any(axis=1)
    clips = np.flatnonzero(has_pair)
    if len(clips) == 0:
        empty = np.zeros((0, 2), np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    noise = rng.random((n, n))
    neg = np.argmax(np.where(other, noise, -1.0), axis=1)
    f_pos = rng.integers(0, k, size=(n, 2))
    if positive == "patient":   # any frame of a clip of another video
        pos = np.argmax(np.where(sibling, noise, -1.0), axis=1)
    else:                       # a different frame of the same clip
        pos = np.arange(n)
        if k > 1:
            f_pos[:, 1] = (f_pos[:, 0] + rng.integers(1, k, size=n)) % k
    f_neg = rng.integers(0, k, size=(n, 2))
    a = np.empty((2 * len(clips), 2), np.int64)
    b = np.empty_like(a)
    a[0::2] = np.stack([clips, f_pos[clips, 0]], 1)
    b[0::2] = np.stack([pos[clips], f_pos[clips, 1]], 1)
    a[1::2] = np.stack([clips, f_neg[clips, 0]], 1)
    b[1::2] = np.stack([neg[clips], f_neg[clips, 1]], 1)
    label = np.tile(np.array([1.0, 0.0], np.float32), len(clips))
    return a, b, label


def patch_masks(n: int, grid: tuple[int, int], ratio: float, generator=None, device=None):
    """Bool tensor [n, gh, gw]: True = masked patch; exactly ``round(ratio * gh * gw)`` per frame.

    Runs on ``device`` with ``generator`` (a torch.Generator on that device), so on a GPU the
    masks never cross the bus. :func:`expand_patches` turns them into pixel masks.
    """
    import torch

    gh, gw = grid
    if not (gh >= 1 and gw >= 1):
        raise SonostreamError(f"mask grid {grid} must be at least 1x1")
    if not 0.0 <= ratio <= 1.0:
        raise SonostreamError(f"mask ratio must be in [0, 1], got {ratio}")
    n_masked = int(math.floor(ratio * gh * gw + 0.5))
    scores = torch.rand(n, gh * gw, generator=generator, device=device)
    idx = scores.argsort(dim=1)[:, :n_masked]
    patches = torch.zeros(n, gh * gw, dtype=torch.bool, device=device)
    patches.scatter_(1, idx, True)
    return patches.view(n, gh, gw)


def clip_masks(b: int, k: int, grid: tuple[int, int], ratio: float, mode: str = "tube",
               generator=None, device=None):
    """Bool tensor [b, k, gh, gw] for b clips of k frames: ``"tube"`` draws one mask per clip and
    repeats it over the k frames; ``"frame"`` draws one per frame (:func:`patch_masks`)."""
    if mode not in MASK_MODES:
        raise SonostreamError(f"mask_mode must be one of {MASK_MODES}, got {mode!r}")
    if mode == "frame":
        return patch_masks(b * k, grid, ratio, generator, device).view(b, k, *grid)
    m = patch_masks(b, grid, ratio, generator, device)
    return m.unsqueeze(1).expand(b, k, *grid).contiguous()


def sector_mask(frames, erode: int = 1):
    """Bool [B, 1, 1, H, W]: the imaged sector (the fan) of each clip in ``frames`` (B, K, C, H, W),
    any dtype with 0 = black. Black outside the fan is the same in every clip: the MIR target
    there is always 0, and scoring it rewards a decoder that paints the fan's outline.

    The fan is derived from the data: pixels non-zero in some frame of the clip, with black
    inside it filled (anechoic fluid can be 0 in every frame: a pixel counts when its row has lit
    pixels on both sides of it and its column above and below it, which keeps a sector or a
    rectangle and its black surround apart), then eroded by ``erode`` pixels (3x3 minimum) so the
    fan's edge, where resampling blends the image into the black, does not count. A clip with no
    black at all gives an all-True mask (nothing is excluded)."""
    import torch
    import torch.nn.functional as F

    b, _, _, h, w = frames.shape
    lit = (frames > 0).any(dim=2).any(dim=1)                   # [B, H, W]
    x = lit.to(torch.int32)

    def between(dim):   # lit on both sides along dim
        return (x.cumsum(dim) > 0) & (x.flip(dim).cumsum(dim).flip(dim) > 0)

    fan = lit | (between(2) & between(1))
    if erode > 0:
        y = fan.float().unsqueeze(1)
        for _ in range(erode):   # erosion = complement of the complement's dilation; the frame's
            y = 1.0 - F.max_pool2d(1.0 - y, 3, stride=1, padding=1)   # border is not black
        fan = y[:, 0] > 0.5
    return fan.view(b, 1, 1, h, w)


def expand_patches(patches, height: int, width: int):
    """[n, 1, gh, gw] patch mask -> [n, 1, H, W] pixel mask (nearest, exact when H, W divide)."""
    import torch.nn.functional as F

    n, _, gh, gw = patches.shape
    if gh > height or gw > width:
        raise SonostreamError(f"mask grid {gh}x{gw} is finer than the frame {height}x{width}")
    if height % gh == 0 and width % gw == 0:
        ph, pw = height // gh, width // gw
        return patches.view(n, 1, gh, 1, gw, 1).expand(n, 1, gh, ph, gw, pw).reshape(n, 1, height, width)
    return F.interpolate(patches.float(), size=(height, width), mode="nearest") > 0.5
