"""How sure a head measurement is, and the floor below which it is not reported.

Per frame, :func:`measure` takes the largest predicted region (one head per frame; fewer than
MIN_HEAD_PIXELS pixels: no head), fits its sub-pixel ellipse and scores it: quality (0..1) = the
model's confidence in the region (mean probability inside it, rescaled from 0.5..1 to 0..1) x how
elliptical it is (IoU with its fitted ellipse) x, for a multitask model, its probability that the
frame is a head plane.

A region whose quality is below the segmenter's floor (``min_quality`` in segmenter.pt) is
**uncertain**: it gets no ellipse and no HC, is never a loop's best frame, and every summary counts
such frames (``segment-video``, ``evaluate``). The floor is calibrated per model on its own val
split at the end of fine-tuning (:func:`calibrate_segmenter`; ``sonostream calibrate-quality``
redoes it for any segmenter.pt), on the val frames that have a mask:

* H: the qualities of the regions measured on frames whose mask shows a head; F: those measured
  on frames whose mask is empty (a false region);
* t99 = the highest threshold that keeps at least KEEP (99 %) of H (``q >= floor`` is kept);
* the floor rejects as many regions of F as t99 does, at the lowest quality that does: midway
  between the highest region of F below t99 and the next measured quality above it.

It falls back on ``DEFAULT_MIN_QUALITY`` (but never above t99) when fewer than MIN_HEADS head
regions were measured, or when no region of F lies below t99 (val shows no false region that a
floor could reject). ``quality_calibration`` in segmenter.pt records the figures (heads kept,
false regions rejected) and which rule chose the floor.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.infer import MIN_HEAD_PIXELS, largest_component, pick_device, predict, softmax
from pipeline.models.segmenter import DEFAULT_MIN_QUALITY
from preprocessing.format import SonostreamError

from .hc import Ellipse, fit_ellipse

KEEP = 0.99           # share of val head regions the floor keeps
MIN_HEADS = 20        # fewer measured val heads than this: the default floor
MAX_FRAMES = 4096     # val frames measured at most (evenly spaced over the split)
SHIFT = 4


def ellipse_iou(mask: np.ndarray, e: Ellipse) -> float:
    """IoU of a bool mask and the filled ellipse ``e`` drawn on the same grid."""
    drawn = np.zeros(mask.shape, np.uint8)
    s = 1 << SHIFT   # cv2 fixed point: centre and axes at 1/16 px
    cv2.ellipse(drawn, (round(e.cx * s), round(e.cy * s)), (round(e.a * s), round(e.b * s)),
                math.degrees(e.angle), 0, 360, 1, -1, cv2.LINE_8, SHIFT)
    inter = np.logical_and(mask, drawn).sum()
    union = np.logical_or(mask, drawn).sum()
    return float(inter / union) if union else 0.0


def measure(prob: np.ndarray, head_prob: float | None = None):
    """(mask, ellipse or None, quality) of one frame's probability map (before any floor)."""
    mask, prob = largest_component(prob)
    if int(mask.sum()) < MIN_HEAD_PIXELS:
        return mask, None, 0.0
    e = fit_ellipse(prob)
    if e is None:
        return mask, None, 0.0
    confidence = float(np.clip(2.0 * prob[mask].mean() - 1.0, 0.0, 1.0))
    quality = confidence * ellipse_iou(mask, e) * (1.0 if head_prob is None else head_prob)
    return mask, e, quality


def head_probabilities(plane_logits, planes, n: int) -> list:
    """Each frame's probability of a head plane (multitask model), else None per frame."""
    planes = list(planes or [])
    if plane_logits is None or "head" not in planes:
        return [None] * n
    return softmax(plane_logits)[:, planes.index("head")].tolist()


def check_min_quality(value, what: str = "--min-quality") -> float:
    if value is None or not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise SonostreamError(f"{what} must be a quality between 0 and 1, got {value}")
    return float(value)


def floor_of(meta: dict, override: float | None = None) -> tuple[float, str]:
    """(floor, where it comes from) for a segmenter's metadata; ``override`` (--min-quality) wins."""
    if override is not None:
        return check_min_quality(override), "option"
    cal = meta.get("quality_calibration") or {}
    floor = meta.get("min_quality", DEFAULT_MIN_QUALITY)
    source = cal.get("source") or ("segmenter.pt" if "min_quality" in meta else "default")
    return check_min_quality(floor, "segmenter.pt min_quality"), source


def choose_floor(quality, head, keep: float = KEEP, default: float = DEFAULT_MIN_QUALITY,
                 min_heads: int = MIN_HEADS, split: str = "val") -> dict:
    """The floor for measured regions of qualities ``quality`` whose frames show a head (``head``
    True) or not (False), by the rule of the module notes; with its figures."""
    q = np.asarray(quality, dtype=np.float64)
    head = np.asarray(head, dtype=bool)
    if q.shape != head.shape:
        raise ValueError(f"quality {q.shape} and head {head.shape} differ in shape")
    h, f = np.sort(q[head]), np.sort(q[~head])
    out = {"rule": f"keep >= {keep:.0%} of val heads, reject the most false regions",
           "keep_target": keep, "head_regions": int(len(h)), "false_regions": int(len(f))}
    t99 = float(h[int(math.floor(len(h) * (1.0 - keep) + 1e-9))]) if len(h) else None
    below = f[f < t99] if t99 is not None else f[:0]
    if len(h) < min_heads:
        floor, source = default, "default"
        out["reason"] = f"{len(h)} head regions measured on {split} (fewer than {min_heads})"
    elif len(below) == 0:
        floor, source = min(default, t99), "default"
        out["reason"] = (f"no false region on {split}" if len(f) == 0 else
                         f"no false region on {split} scored below the heads' 1st percentile")
    else:
        hi = float(below[-1])
        above = np.concatenate([h[h > hi], f[f > hi]])
        floor, source = (hi + float(above.min())) / 2.0, "val"
    out.update(min_quality=float(floor), source=source, keep_threshold=t99,
               heads_kept=int((h >= floor).sum()), false_rejected=int((f < floor).sum()))
    out["heads_kept_pct"] = 100.0 * out["heads_kept"] / len(h) if len(h) else None
    out["false_rejected_pct"] = 100.0 * out["false_rejected"] / len(f) if len(f) else None
    return out


def measure_rows(model, meta: dict, source, view, rows, device, batch_size: int = 32):
    """(quality, region found, mask shows a head) per row of ``rows`` (rows with a mask)."""
    from pipeline.data import FrameDecoder
    decoder = FrameDecoder(source, view, threads=2)
    size = tuple(meta["image_size"])
    quality, found, head = [], [], []
    for start in range(0, len(rows), batch_size):
        chunk = [int(r) for r in rows[start:start + batch_size]]
        # frame and mask of each row decoded together, in the decode threads
        pairs = decoder.map(lambda r: (decoder.image(r), decoder.mask(r)), chunk)
        probs, plane_logits = predict(model, [f for f, _ in pairs], size, device)
        for (_, mask), prob, hp in zip(pairs, probs, head_probabilities(
                plane_logits, meta.get("planes"), len(chunk))):
            _, e, q = measure(prob, hp)
            quality.append(q)
            found.append(e is not None)
            head.append(bool(mask.any()))
    return np.array(quality, np.float64), np.array(found, bool), np.array(head, bool)


def calibrate(model, meta: dict, data, split: str = "val", device=None, batch_size: int = 32,
              max_frames: int = MAX_FRAMES, cache_dir=None, shard_url=None) -> dict:
    """The floor of ``model`` from the frames of ``split`` that have a mask (module notes)."""
    from pipeline.data import IndexView, ShardSource
    source = ShardSource(data, cache_dir=cache_dir, shard_url=shard_url)
    view = IndexView(source.index)
    rows = view.rows_of(split)
    rows = rows[view.has_mask[rows]]
    if len(rows) > max_frames:   # evenly spaced, whole videos' worth of variety, deterministic
        rows = rows[np.linspace(0, len(rows) - 1, max_frames).round().astype(int)]
    device = pick_device(device)
    model.to(device)
    q, found, head = measure_rows(model, meta, source, view, rows, device, batch_size)
    out = {"split": split, "frames": int(len(rows)), "head_frames": int(head.sum()),
           "no_head_frames": int((~head).sum()),
           **choose_floor(q[found], head[found], split=split)}
    if not len(rows):
        out["reason"] = f"no frames with a mask in split {split!r}"
    return out


def calibrate_segmenter(path, data, split: str = "val", out=None, device=None,
                        batch_size: int = 32, cache_dir=None, shard_url=None) -> dict:
    """Calibrates the segmenter.pt at ``path`` on ``split`` of ``data`` and stores its floor
    (``min_quality``, ``quality_calibration``) in ``out`` (default: ``path`` itself)."""
    from pipeline.models.segmenter import load_segmenter, update_segmenter
    model, meta = load_segmenter(path)
    cal = calibrate(model, meta, data, split, device, batch_size, cache_dir=cache_dir,
                    shard_url=shard_url)
    update_segmenter(path, out, min_quality=cal["min_quality"], quality_calibration=cal)
    return cal


def calibrate_finished_run(summary: dict, data, cache_dir=None, shard_url=None) -> dict | None:
    """After ``finetuning.train``: calibrates the run's segmenter.pt on val when the run is
    complete and this is the process that wrote it (the main rank: its summary names it). The
    summary gets ``quality_calibration``; returns it (None when there is nothing to do)."""
    if not (summary.get("segmenter") and summary.get("complete")):
        return None
    cal = calibrate_segmenter(summary["segmenter"], data, cache_dir=cache_dir, shard_url=shard_url)
    summary["quality_calibration"] = cal
    return cal


def describe_calibration(cal: dict) -> str:
    """One line: the floor and what it does on val."""
    pct = lambda v: "n/a" if v is None else f"{v:.1f} %"  # noqa: E731
    text = (f"quality floor {cal['min_quality']:.3f} ({cal['source']}"
            + (f": {cal['reason']}" if cal.get("reason") else "") + ")")
    if cal.get("frames") is not None:
        text += (f"; on {cal['split']} it keeps {pct(cal.get('heads_kept_pct'))} of "
                 f"{cal['head_regions']} head regions and rejects "
                 f"{pct(cal.get('false_rejected_pct'))} of {cal['false_regions']} false regions "
                 f"(on {cal['no_head_frames']} frames without a head)")
    return text
