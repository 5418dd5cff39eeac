"""``sonostream segment-video``: segment every frame of a cine loop, smooth the head's ellipse
over time, pick the frame that shows the head best, and report HC there.

O/per_frame.csv       frame_index,head_present,cx,cy,a,b,angle_rad,hc_mm,quality (smoothed)
O/per_frame_raw.csv   the same columns, per-frame fits before smoothing
O/summary.json        best frame, HC there, jitter before/after smoothing, inputs
O/best_frame.png      the selected frame as segmented; O/best_overlay.png with the outlines
O/overlay.mp4         every frame with its predicted outline (red) and smoothed ellipse (yellow)
O/hc_over_time.png    HC per frame (raw and smoothed), quality, the best frame
O/frames.png          up to 8 evenly spaced frames with their outlines and HC

Per frame: the largest predicted region (one head per frame); fewer than MIN_HEAD_PIXELS
pixels means no head, so no ellipse and no HC. Quality (0..1) = the model's confidence in the
region (mean probability inside it, rescaled from 0.5..1 to 0..1) x how elliptical the region is
(IoU with its fitted ellipse) x, for a multitask model, its probability that the frame is a head
plane. Pixel coordinates are those of the source file (see ``cine_source``), angles in radians
(``hc.Ellipse``), HC in mm when the pixel size is known (from the DICOM header, the dataset, or
``--pixel-size-mm``), else empty.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .evaluate import MIN_HEAD_PIXELS, largest_component, pick_device, predict
from .hc import Ellipse, fit_ellipse
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
            z = plane_logits - plane_logits.max(axis=1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            head_p = p[:, head].tolist()
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


def shifted(track: Track, offset) -> Track:
    """The track with centres moved by (dx, dy): crop pixels -> source pixels."""
    dx, dy = offset
    return dataclasses.replace(track, cx=track.cx + dx, cy=track.cy + dy)


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


def segment_video(checkpoint, out, *, cine, model=None, batch_size: int = 16, device=None,
                  video: bool = True, quiet: bool = False) -> dict:
    """Segment ``cine`` (a ``cine_source.Cine``) with ``checkpoint`` (or the already loaded
    ``model`` = (module, meta)); writes O/ (see above) and returns the summary."""
    from pipeline.models.segmenter import load_segmenter

    from .cine_outputs import write_outputs
    module, meta = model if model is not None else load_segmenter(checkpoint)
    dev = pick_device(device)
    module.to(dev)
    result = segment_cine(module, meta, cine.frames, dev, batch_size, quiet)
    summary = summarize(cine, result, checkpoint)
    write_outputs(Path(out), cine, result, summary, video=video)
    return summary
