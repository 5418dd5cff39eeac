"""``sonostream bench video``: segment-video on unseen synthetic head sweeps whose truth is known.

Per sweep, rendered in memory (no video codec between the renderer and the model):
  * speed: the model alone (batch 1 and the given batch, side by side on the same frames), and
    the per-frame measurement (largest region, ellipse fit, quality) and the smoothing;
  * the temporal method against the per-frame fits: HC error over the head frames, jitter of the
    HC error (mean absolute second difference, the sweep's own rise and fall taken out), and the
    best frame's distance to the labelled standard plane, ours (parabola vertex over the smoothed
    peak) against the naive choice (the largest raw area).
"""
from __future__ import annotations

import math
import statistics
import time

import numpy as np

from preprocessing.format import SonostreamError


def _sweep(seed: int, patient: int, frames: int, size: int):
    from preprocessing.synth.anatomy import make_patient, plan_video
    from preprocessing.synth.render import render_video
    video = plan_video(seed, make_patient(seed, patient), 0, frames, size)
    images, hc = [], []
    for _, image, _, labels in render_video(seed, video):
        images.append(image)
        hc.append(labels["hc_mm"] if labels["hc_mm"] is not None else math.nan)
    return images, np.array(hc), video.standard_index, video.pixel_size_mm


def _model_seconds(model, images, size, device, batch: int) -> float:
    from pipeline.infer import predict
    t0 = time.perf_counter()
    for s in range(0, len(images), batch):
        predict(model, images[s:s + batch], size, device)
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _mae(values: np.ndarray, truth: np.ndarray) -> float | None:
    d = np.abs(values - truth)
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else None


def bench_video(checkpoint, sweeps: int = 8, frames: int = 48, size: int = 256, seed: int = 0,
                first_patient: int = 1000, batch: int = 16, device=None) -> dict:
    from pipeline.eval.cine.measure import segment_cine
    from pipeline.infer import pick_device
    from pipeline.eval.cine.temporal import jitter
    from pipeline.models.segmenter import load_segmenter
    if sweeps < 1 or frames < 3 or batch < 1:
        raise SonostreamError("--sweeps and --batch must be >= 1 and --frames >= 3")
    model, meta = load_segmenter(checkpoint)
    dev = pick_device(device)
    model.to(dev)
    msize = tuple(meta["image_size"])
    rows = []
    for k in range(sweeps):
        images, truth, standard, ps = _sweep(seed, first_patient + k, frames, size)
        _model_seconds(model, images[:batch], msize, dev, batch)   # warm-up
        t1 = _model_seconds(model, images, msize, dev, 1)
        tb = _model_seconds(model, images, msize, dev, batch)
        r = segment_cine(model, meta, images, dev, batch)
        raw_hc, smooth_hc = r.raw.hc_mm(ps), r.smooth.hc_mm(ps)
        area = r.raw.a * r.raw.b
        naive = int(np.nanargmax(area)) if np.isfinite(area).any() else None
        rows.append({
            "patient": first_patient + k, "frames": frames, "standard_frame": standard,
            "best_frame": r.best, "naive_best_frame": naive,
            "best_offset": None if r.best is None else r.best - standard,
            "naive_offset": None if naive is None else naive - standard,
            "hc_err_at_best_mm": None if r.best is None else abs(smooth_hc[r.best] - truth[r.best]),
            "hc_mae_raw_mm": _mae(raw_hc, truth), "hc_mae_smoothed_mm": _mae(smooth_hc, truth),
            "err_jitter_raw_mm": jitter(raw_hc - truth), "err_jitter_smoothed_mm": jitter(smooth_hc - truth),
            "model_fps_batch1": frames / t1, f"model_fps_batch{batch}": frames / tb,
            "total_fps": frames / r.seconds,
        })
    mean = lambda key: statistics.fmean([x[key] for x in rows if x[key] is not None])  # noqa: E731
    absmean = lambda key: statistics.fmean([abs(x[key]) for x in rows if x[key] is not None])  # noqa: E731
    within = lambda key: sum(x[key] is not None and abs(x[key]) <= 2 for x in rows)  # noqa: E731
    return {
        "checkpoint": str(checkpoint), "device": str(dev), "sweeps": sweeps, "frames": frames,
        "size": size, "model_size": list(msize), "batch": batch,
        "best_offset_abs_mean": absmean("best_offset"), "naive_offset_abs_mean": absmean("naive_offset"),
        "best_within_2": within("best_offset"), "naive_within_2": within("naive_offset"),
        "hc_err_at_best_mm_mean": mean("hc_err_at_best_mm"),
        "hc_mae_raw_mm": mean("hc_mae_raw_mm"), "hc_mae_smoothed_mm": mean("hc_mae_smoothed_mm"),
        "err_jitter_raw_mm": mean("err_jitter_raw_mm"),
        "err_jitter_smoothed_mm": mean("err_jitter_smoothed_mm"),
        "model_fps_batch1": mean("model_fps_batch1"), f"model_fps_batch{batch}": mean(f"model_fps_batch{batch}"),
        "total_fps": mean("total_fps"), "per_sweep": rows,
    }
