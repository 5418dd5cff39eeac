"""``sonostream evaluate``: segment a split, score it, and write what a reader needs.

E/metrics.json    dice, iou, hd95_mm, hc_mae_mm, plane_accuracy (+ counts and spreads, and
                  uncertain_frames), the quality floor applied (min_quality, its source and
                  the segmenter's quality_calibration), and what was scored: split, data
                  (absolute path or URL), its manifest_sha256, checkpoint (absolute path)
E/per_image.csv   one row per frame of the split
E/hc18.csv        the HC18 submission (filename,center_x_mm,...,angle_rad), one row per frame
E/overlays/       best.png and worst.png (by Dice), frame + truth (green) + prediction (red)
                  + fitted ellipse (yellow)

Post-processing (``pipeline.infer``): only the largest connected region of the prediction is
kept (one head per frame), as nnU-Net does when it helps on validation data. HC18 rows are in
source millimetres: the stored ellipse goes back through the contract's geometry.
Definitions (so the numbers cannot flatter): ``dice``/``iou``/``hd95_mm`` are means over frames
whose true mask shows a head; frames without a head are scored apart (``dice_all`` includes them,
``empty_false_positive_rate`` is how often a head was predicted there). HC comes from an ellipse
fitted (sub-pixel) to the predicted probability map at the stored resolution, times the frame's
pixel size; without a pixel size it is missing (null), never 0. Each frame's measurement has a
quality (``quality.measure``); below the segmenter's floor (``min_quality``) the frame is
*uncertain*: the region still counts in Dice, but it gets no ellipse, no HC and an empty HC18
row; ``uncertain_frames`` counts them. A frame with a true HC but no predicted head, or an
uncertain one, counts in ``hc_missed``, not in the mean.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.data import FrameDecoder, IndexView, ShardSource
from pipeline.infer import MIN_HEAD_PIXELS, pick_device, predict
from pipeline.models.segmenter import load_segmenter
from pipeline.train.provenance import absolute, dataset_ref
from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.format import SonostreamError
from preprocessing.progress import progress_bar

from .hc import HC18_COLUMNS, hc18_row
from .metrics import dice, hd95, iou, summarize
from .overlay import overlay, save_overlays
from .quality import floor_of, head_probabilities, measure

PER_IMAGE_COLUMNS = ("key", "filename", "patient_id", "plane", "has_mask", "head_true", "head_pred",
                     "dice", "iou", "hd95_mm", "pixel_size_mm", "hc_true_mm", "hc_pred_mm",
                     "hc_abs_err_mm", "plane_pred", "cx", "cy", "a", "b", "angle_rad", "quality",
                     "uncertain")


def _none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _filenames(view: IndexView, rows: np.ndarray) -> list[str]:
    """HC18 file names: the base names of the imported files (``source_file``, e.g.
    ``000_HC.png``) or else of the frame paths, the first that are unique; else the paths."""
    paths = [str(p) for p in view.source_path[rows]]
    source = view.column("source_file")
    candidates = [[Path(p).name for p in paths]]
    if source is not None and all(s is not None for s in source[rows]):
        candidates.insert(0, [Path(str(s)).name for s in source[rows]])
    for names in candidates:
        if len(set(names)) == len(names):
            return names
    return paths


def evaluate(checkpoint, data, split: str = "test", out=None, *, batch_size: int = 16,
             overlays: int = 8, device=None, quiet: bool = False,
             min_quality: float | None = None) -> dict:
    """Score ``checkpoint`` on ``split`` of ``data``; writes E/ when ``out`` is given.
    ``min_quality`` overrides the segmenter's quality floor."""
    model, meta = load_segmenter(checkpoint)
    floor, floor_source = floor_of(meta, min_quality)
    device = pick_device(device)
    model.to(device)
    source = ShardSource(data)
    view = IndexView(source.index)
    rows = view.rows_of(split)
    if len(rows) == 0:
        raise SonostreamError(f"{data} has no frames in split {split!r}; choose another --split "
                              f"(it has {sorted(set(view.split.tolist()))})")
    decoder = FrameDecoder(source, view, threads=2)
    size = tuple(meta["image_size"])
    planes = list(meta.get("planes") or [])
    names = _filenames(view, rows)
    records, hc18, cases = [], [], []
    bar = progress_bar(len(rows), "evaluate", "frame", enabled=not quiet)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        frames = decoder.map(decoder.image, chunk.tolist())   # frames may differ in size
        probs, plane_logits = predict(model, frames, size, device)
        head_p = head_probabilities(plane_logits, planes, len(chunk))
        for j, (r, frame, prob) in enumerate(zip(chunk.tolist(), frames, probs)):
            rec, ell, gt, pred = _score(view, r, decoder, prob, head_p[j], floor)
            rec["filename"] = names[start + j]
            if plane_logits is not None:
                rec["plane_pred"] = planes[int(plane_logits[j].argmax())]
            records.append(rec)
            hc18.append(hc18_row(rec["filename"], ell, rec["pixel_size_mm"], view.letterbox(r)))
            if rec["head_true"]:
                cases.append((rec["dice"], rec["key"], frame, pred, gt, ell, rec))
        bar.update(len(chunk))
    bar.close()
    metrics = aggregate(records, planes)
    metrics.update(min_quality=floor, min_quality_source=floor_source,
                   quality_calibration=meta.get("quality_calibration"), split=split, checkpoint=absolute(checkpoint), **dataset_ref(str(data)),
                   mode=meta.get("mode"),
                   init=meta.get("init"), label_fraction=meta.get("label_fraction"),
                   train_step=meta.get("step"))
    if out is not None:
        write_outputs(Path(out), metrics, records, hc18, cases, overlays)
    return metrics


def _score(view: IndexView, r: int, decoder: FrameDecoder, prob: np.ndarray,
           head_prob: float | None = None, min_quality: float = 0.0):
    pred, ell, quality = measure(prob, head_prob)
    head_pred = int(pred.sum()) >= MIN_HEAD_PIXELS
    uncertain = ell is not None and quality < min_quality
    if uncertain:
        ell = None   # a region below the floor: no ellipse, no HC
    ps = _none(float(view.pixel_size[r]))
    hc_true = _none(float(view.hc_mm[r]))
    hc_pred = ell.hc_mm(ps) if ell is not None else None
    rec = {"key": str(view.keys[r]), "patient_id": str(view.patient_ids[view.patient[r]]),
           "plane": fmt.PLANES[view.plane[r]] if view.plane[r] >= 0 else None,
           "has_mask": bool(view.has_mask[r]), "head_pred": head_pred, "pixel_size_mm": ps,
           "hc_true_mm": hc_true, "hc_pred_mm": hc_pred,
           "hc_abs_err_mm": abs(hc_pred - hc_true) if hc_pred is not None and hc_true is not None else None,
           "plane_pred": None, "dice": None, "iou": None, "hd95_mm": None,
           **({k: getattr(ell, k) for k in ("cx", "cy", "a", "b")} if ell else
              {k: None for k in ("cx", "cy", "a", "b")}),
           "angle_rad": ell.angle if ell else None,
           "quality": quality if head_pred else None, "uncertain": uncertain}
    gt = None
    if view.has_mask[r]:
        gt = decoder.mask(r).astype(bool)
        rec["dice"], rec["iou"] = dice(pred, gt), iou(pred, gt)
        if ps is not None:
            rec["hd95_mm"] = hd95(pred, gt, spacing=ps)
    rec["head_true"] = bool(gt.any()) if gt is not None else (hc_true is not None or None)
    return rec, ell, gt, pred


def aggregate(records: list[dict], planes: list) -> dict:
    heads = [r for r in records if r["has_mask"] and r["head_true"]]
    empties = [r for r in records if r["has_mask"] and not r["head_true"]]
    with_hc = [r for r in records if r["hc_true_mm"] is not None]
    s_dice = summarize([r["dice"] for r in heads])
    s_iou = summarize([r["iou"] for r in heads])
    s_hd = summarize([r["hd95_mm"] for r in heads])
    s_hc = summarize([r["hc_abs_err_mm"] for r in with_hc])
    plane_known = [r for r in records if r["plane"] is not None and r["plane_pred"] is not None]
    return {
        "frames": len(records), "frames_with_mask": len(heads) + len(empties),
        "head_frames": len(heads),
        "dice": s_dice["mean"], "iou": s_iou["mean"], "hd95_mm": s_hd["mean"],
        "hc_mae_mm": s_hc["mean"],
        "plane_accuracy": (sum(r["plane"] == r["plane_pred"] for r in plane_known) / len(plane_known)
                           if planes and plane_known else None),
        "dice_all": summarize([r["dice"] for r in heads + empties])["mean"],
        "empty_false_positive_rate": (sum(r["head_pred"] for r in empties) / len(empties)
                                      if empties else None),
        "hd95_undefined": s_hd["n_missing"], "hc_frames": s_hc["n"], "hc_missed": s_hc["n_missing"],
        "uncertain_frames": sum(bool(r.get("uncertain")) for r in records),
        "uncertain_head_frames": sum(bool(r.get("uncertain")) for r in heads),
        "hc_abs_err_median_mm": s_hc["median"], "dice_std": s_dice["std"],
    }


def write_outputs(out: Path, metrics: dict, records, hc18, cases, n_overlays: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "per_image.csv", fmt.csv_text(PER_IMAGE_COLUMNS, records))
    atomic.write_text(out / "hc18.csv", fmt.csv_text(HC18_COLUMNS, hc18))
    if cases and n_overlays > 0:
        cases.sort(key=lambda c: (c[0], c[1]))
        k = min(n_overlays, len(cases))
        for name, chosen in (("worst", cases[:k]), ("best", cases[::-1][:k])):
            items = [(overlay(f, p, g, e), f"{key}\nDice {d:.3f}" + (
                f", HC err {rec['hc_abs_err_mm']:.1f} mm" if rec["hc_abs_err_mm"] is not None else ""))
                for d, key, f, p, g, e, rec in chosen]
            save_overlays(items, out / "overlays" / f"{name}.png", title=f"{name} {k} by Dice")
        metrics["overlays"] = [str(out / "overlays" / "best.png"), str(out / "overlays" / "worst.png")]
    atomic.write_json(out / "metrics.json", metrics)
