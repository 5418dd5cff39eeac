"""``sonostream evaluate``: segment a split, score it, and write what a reader needs.

E/metrics.json    dice, iou, hd95_mm, hc_mae_mm, plane_accuracy (+ counts and spreads)
E/per_image.csv   one row per frame of the split
E/hc18.csv        the HC18 submission (filename,center_x_mm,...,angle_rad), one row per frame
E/overlays/       best.png and worst.png (by Dice), frame + truth (green) + prediction (red)
                  + fitted ellipse (yellow)

Post-processing: only the largest connected region of the prediction is kept (one head per
frame), as nnU-Net does when it helps on validation data.
Definitions (so the numbers cannot flatter): ``dice``/``iou``/``hd95_mm`` are means over frames
whose true mask shows a head; frames without a head are scored apart (``dice_all`` includes them,
``empty_false_positive_rate`` is how often a head was predicted there). HC comes from an ellipse
fitted (sub-pixel) to the predicted probability map at the stored resolution, times the frame's
pixel size; without a pixel size it is missing (null), never 0. A frame with a true HC but no
predicted head counts in ``hc_missed``, not in the mean.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pipeline.data.frames import FrameReader, FrameTable
from pipeline.data.source import ShardSource
from pipeline.models.segmenter import load_segmenter
from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.imaging import Letterbox

from .hc import HC18_COLUMNS, fit_ellipse, hc18_row
from .metrics import dice, hd95, iou, summarize
from .overlay import overlay, save_overlays

MIN_HEAD_PIXELS = 16   # fewer predicted pixels than this: no head (no ellipse, no HC)
PER_IMAGE_COLUMNS = ("key", "filename", "patient_id", "plane", "has_mask", "head_true", "head_pred",
                     "dice", "iou", "hd95_mm", "pixel_size_mm", "hc_true_mm", "hc_pred_mm",
                     "hc_abs_err_mm", "plane_pred", "cx", "cy", "a", "b", "angle_rad")


def pick_device(device=None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _to_model(frame: np.ndarray, size: tuple[int, int]):
    """(model input, letterbox or None): square frames are resized, others letterboxed (as
    ``build`` stores them: longer side to the size, centred on black)."""
    if frame.shape == tuple(size):
        return frame, None
    if frame.shape[0] == frame.shape[1]:
        return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA), None
    lb = Letterbox.fit(frame.shape[0], frame.shape[1], size[0])
    return lb.apply(frame), lb


def _from_model(prob: np.ndarray, frame: np.ndarray, lb) -> np.ndarray:
    if lb is not None:
        prob = prob[lb.pad_y:lb.pad_y + lb.out_h, lb.pad_x:lb.pad_x + lb.out_w]
    if prob.shape == frame.shape:
        return prob
    return cv2.resize(prob, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)


@torch.no_grad()
def predict(model, frames: list[np.ndarray], size: tuple[int, int], device) -> tuple[list, np.ndarray | None]:
    """Probability maps at each frame's own size ([H, W] float32) and plane logits [N, P]."""
    if size[0] != size[1]:
        raise ValueError(f"the model's input size must be square, got {size}")
    inputs = [_to_model(f, size) for f in frames]
    x = torch.from_numpy(np.stack([x for x, _ in inputs])).to(device).unsqueeze(1).float() / 255.0
    logits, plane = model(x)
    probs = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
    out = [_from_model(p, f, lb) for p, f, (_, lb) in zip(probs, frames, inputs)]
    return out, (None if plane is None else plane.float().cpu().numpy())


def _none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _filenames(table: FrameTable, rows: np.ndarray) -> list[str]:
    """HC18 file names: the source file's base name when those are unique, else its path."""
    paths = [str(p) for p in table.source_path[rows]]
    names = [Path(p).name for p in paths]
    return names if len(set(names)) == len(names) else paths


def evaluate(checkpoint, data, split: str = "test", out=None, *, batch_size: int = 16,
             overlays: int = 8, device=None, quiet: bool = False) -> dict:
    """Score ``checkpoint`` on ``split`` of ``data``; writes E/ when ``out`` is given."""
    model, meta = load_segmenter(checkpoint)
    device = pick_device(device)
    model.to(device)
    source = ShardSource(data)
    table = FrameTable.from_index(source.index)
    rows = table.rows_of(split)
    if len(rows) == 0:
        raise ValueError(f"{data} has no frames in split {split!r}; choose another --split "
                         f"(it has {sorted(set(table.split.tolist()))})")
    reader = FrameReader(source, table, None, threads=2)
    size = tuple(meta["image_size"])
    planes = list(meta.get("planes") or [])
    names = _filenames(table, rows)
    records, hc18, cases = [], [], []
    bar = tqdm(total=len(rows), unit="frame", desc=f"evaluate {split}", disable=quiet)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        frames = [reader.image(int(r)) for r in chunk]
        probs, plane_logits = predict(model, frames, size, device)
        for j, (r, frame, prob) in enumerate(zip(chunk.tolist(), frames, probs)):
            rec, ell, gt, pred = _score(table, r, reader, prob)
            rec["filename"] = names[start + j]
            if plane_logits is not None:
                rec["plane_pred"] = planes[int(plane_logits[j].argmax())]
            records.append(rec)
            ps = _none(float(table.pixel_size[r]))
            hc18.append(hc18_row(rec["filename"], ell, ps, *table.pad[r].tolist()))
            if rec["head_true"]:
                cases.append((rec["dice"], rec["key"], frame, pred, gt, ell, rec))
        bar.update(len(chunk))
    bar.close()
    metrics = aggregate(records, planes)
    metrics.update(split=split, checkpoint=str(checkpoint), mode=meta.get("mode"),
                   init=meta.get("init"), label_fraction=meta.get("label_fraction"),
                   train_step=meta.get("step"))
    if out is not None:
        write_outputs(Path(out), metrics, records, hc18, cases, overlays)
    return metrics


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


def _score(table: FrameTable, r: int, reader: FrameReader, prob: np.ndarray):
    pred, prob = largest_component(prob)
    head_pred = int(pred.sum()) >= MIN_HEAD_PIXELS
    ell = fit_ellipse(prob) if head_pred else None
    ps = _none(float(table.pixel_size[r]))
    hc_true = _none(float(table.hc_mm[r]))
    hc_pred = ell.hc_mm(ps) if ell is not None else None
    rec = {"key": str(table.keys[r]), "patient_id": str(table.patient_ids[table.patient[r]]),
           "plane": fmt.PLANES[table.plane[r]] if table.plane[r] >= 0 else None,
           "has_mask": bool(table.has_mask[r]), "head_pred": head_pred, "pixel_size_mm": ps,
           "hc_true_mm": hc_true, "hc_pred_mm": hc_pred,
           "hc_abs_err_mm": abs(hc_pred - hc_true) if hc_pred is not None and hc_true is not None else None,
           "plane_pred": None, "dice": None, "iou": None, "hd95_mm": None,
           **({k: getattr(ell, k) for k in ("cx", "cy", "a", "b")} if ell else
              {k: None for k in ("cx", "cy", "a", "b")}),
           "angle_rad": ell.angle if ell else None}
    gt = None
    if table.has_mask[r]:
        gt = reader.mask(r).astype(bool)
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
        "hc_abs_err_median_mm": s_hc["median"], "dice_std": s_dice["std"],
    }


def write_outputs(out: Path, metrics: dict, records, hc18, cases, n_overlays: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "per_image.csv", csv_text(PER_IMAGE_COLUMNS, records))
    atomic.write_text(out / "hc18.csv", csv_text(HC18_COLUMNS, hc18))
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


def csv_text(columns, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([fmt.csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()
