"""One measurement per frame of a loop (largest region, sub-pixel ellipse, quality), then the
smoothed track and the best frame (``temporal``); and the loop's summary."""
from __future__ import annotations

import dataclasses
import math
import time

import cv2
import numpy as np
from tqdm import tqdm

from pipeline.infer import MIN_HEAD_PIXELS, largest_component, predict, softmax

from ..hc import Ellipse, fit_ellipse
from .temporal import Track, best_frame, jitter, smooth_track

SHIFT = 4


@dataclasses.dataclass
class CineResult:
    raw: Track
    smooth: Track
    masks: list            # (H, W) bool predicted head region per frame
    best: int | None       # position in the loop (not the source frame index)
    seconds: float


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
    """(mask, ellipse or None, quality) of one frame's probability map."""
    mask, prob = largest_component(prob)
    if int(mask.sum()) < MIN_HEAD_PIXELS:
        return mask, None, 0.0
    e = fit_ellipse(prob)
    if e is None:
        return mask, None, 0.0
    confidence = float(np.clip(2.0 * prob[mask].mean() - 1.0, 0.0, 1.0))
    quality = confidence * ellipse_iou(mask, e) * (1.0 if head_prob is None else head_prob)
    return mask, e, quality


def segment_cine(model, meta: dict, frames: list, device, batch_size: int = 16,
                 quiet: bool = True) -> CineResult:
    """Segments ``frames`` in batches and measures the head in each; then smooths."""
    t0 = time.perf_counter()
    size = tuple(meta["image_size"])
    planes = list(meta.get("planes") or [])
    head = planes.index("head") if "head" in planes else None
    masks, ellipses, quality = [], [], []
    bar = tqdm(total=len(frames), unit="frame", desc="segment", disable=quiet)
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        probs, plane_logits = predict(model, chunk, size, device)
        head_p = [None] * len(chunk)
        if plane_logits is not None and head is not None:
            head_p = softmax(plane_logits)[:, head].tolist()
        for prob, hp in zip(probs, head_p):
            m, e, q = measure(prob, hp)
            masks.append(m)
            ellipses.append(e)
            quality.append(q)
        bar.update(len(chunk))
    bar.close()
    raw = Track.from_ellipses(ellipses, quality)
    smooth = smooth_track(raw)
    return CineResult(raw, smooth, masks, best_frame(smooth), time.perf_counter() - t0)


def summarize(cine, result: CineResult, checkpoint) -> dict:
    ps = cine.pixel_size_mm
    raw_hc, unit = result.raw.size_series(ps)
    smooth_hc, _ = result.smooth.size_series(ps)
    b = result.best
    out = {"source": cine.source, "kind": cine.kind, "checkpoint": str(checkpoint),
           "frames": len(cine.frames), "head_frames_raw": int(result.raw.present.sum()),
           "head_frames": int(result.smooth.present.sum()), "pixel_size_mm": ps, "fps": cine.fps,
           "hc_unit": unit, "best_frame": None if b is None else int(cine.frame_index[b]),
           "best_position": b,
           "best_hc_mm": float(smooth_hc[b]) if b is not None and ps else None,
           "best_perimeter_px": float(result.smooth.perimeter_px()[b]) if b is not None else None,
           "best_quality": float(result.smooth.quality[b]) if b is not None else None,
           f"jitter_raw_{unit}": jitter(raw_hc), f"jitter_smoothed_{unit}": jitter(smooth_hc),
           "seconds": round(result.seconds, 2),
           "frames_per_s": round(len(cine.frames) / result.seconds, 1) if result.seconds else None}
    if cine.warnings:
        out["warnings"] = list(cine.warnings)
    truth = cine.truth or {}
    if truth.get("standard_frame") is not None:
        out["standard_frame"] = int(cine.frame_index[truth["standard_frame"]])
        if b is not None:
            out["best_frame_offset"] = int(b - truth["standard_frame"])
    hc_true = truth.get("hc_mm")
    if hc_true is not None and b is not None and ps and math.isfinite(hc_true[b]):
        out["hc_true_at_best_mm"] = float(hc_true[b])
        out["hc_abs_err_at_best_mm"] = abs(float(smooth_hc[b]) - float(hc_true[b]))
    return out
