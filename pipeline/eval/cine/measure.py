"""One measurement per frame of a loop (largest region, sub-pixel ellipse, quality:
``eval.quality``), the floor (below it a frame is uncertain: no ellipse, no HC), then the
smoothed track and the best frame (``temporal``); and the loop's summary."""
from __future__ import annotations

import dataclasses
import math
import time

from tqdm import tqdm

from pipeline.infer import predict

from ..quality import floor_of, head_probabilities, measure
from .temporal import Track, best_frame, jitter, smooth_track


@dataclasses.dataclass
class CineResult:
    raw: Track
    smooth: Track
    masks: list            # (H, W) bool predicted head region per frame
    best: int | None       # position in the loop (not the source frame index)
    seconds: float
    min_quality: float = 0.0       # the floor applied: regions below it are uncertain
    min_quality_source: str = ""   # "val" (calibrated), "default" or "option" (--min-quality)


def segment_cine(model, meta: dict, frames: list, device, batch_size: int = 16,
                 quiet: bool = True, min_quality: float | None = None) -> CineResult:
    """Segments ``frames`` in batches and measures the head in each; then smooths. Regions of
    quality below ``min_quality`` (default: the segmenter's own floor) are uncertain."""
    t0 = time.perf_counter()
    floor, floor_source = floor_of(meta, min_quality)
    size = tuple(meta["image_size"])
    masks, ellipses, quality = [], [], []
    bar = tqdm(total=len(frames), unit="frame", desc="segment", disable=quiet)
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        probs, plane_logits = predict(model, chunk, size, device)
        for prob, hp in zip(probs, head_probabilities(plane_logits, meta.get("planes"), len(chunk))):
            m, e, q = measure(prob, hp)
            masks.append(m)
            ellipses.append(e)
            quality.append(q)
        bar.update(len(chunk))
    bar.close()
    raw = Track.from_ellipses(ellipses, quality, min_quality=floor)
    smooth = smooth_track(raw)
    return CineResult(raw, smooth, masks, best_frame(smooth), time.perf_counter() - t0,
                      floor, floor_source)


def summarize(cine, result: CineResult, checkpoint) -> dict:
    ps = cine.pixel_size_mm
    raw_hc, unit = result.raw.size_series(ps)
    smooth_hc, _ = result.smooth.size_series(ps)
    b = result.best
    out = {"source": cine.source, "kind": cine.kind, "checkpoint": str(checkpoint),
           "frames": len(cine.frames), "head_frames_raw": int(result.raw.present.sum()),
           "head_frames": int(result.smooth.present.sum()),
           "uncertain_frames": int(result.raw.uncertain.sum()),
           "min_quality": result.min_quality, "min_quality_source": result.min_quality_source,
           "pixel_size_mm": ps, "fps": cine.fps,
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
