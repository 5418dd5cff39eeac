"""`sonostream inspect DIR`: what a built dataset holds, and a contact sheet of sample frames."""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.compute as pc

from . import atomic
from . import format as fmt
from .dataset import Dataset, open_dataset
from .format import SonostreamError
from .imaging import decode_gray


def split_counts(df) -> dict:
    """Patients, videos and frames per split of an index (as a DataFrame)."""
    out = {}
    for split in fmt.SPLITS:
        sub = df[df["split"] == split]
        out[split] = {"patients": int(sub["patient_id"].nunique()),
                      "videos": int(sub["video_key"].nunique()), "frames": int(len(sub))}
    return out


def single_frame_videos(df) -> int:
    """Videos of one frame in an index (as a DataFrame with frame_index and num_frames)."""
    return int(((df["frame_index"] == 0) & (df["num_frames"] == 1)).sum())


def reason_kind(reason: str) -> str:
    """A reject reason without its particulars (paths, numbers, quoted values), for counting."""
    reason = reason.split(" (")[0]
    reason = re.sub(r"\S*/\S*", "<path>", reason)
    reason = re.sub(r"'[^']*'", "<value>", reason)
    return re.sub(r"\d+", "N", reason)


def count_reasons(rejects: list[dict]) -> dict[str, int]:
    return dict(Counter(reason_kind(r["reason"]) for r in rejects).most_common())


def read_rejects(root) -> list[dict]:
    path = Path(root) / fmt.REJECTS_FILE
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summarize(root: str) -> dict:
    ds = open_dataset(root)
    df = ds.index.select(["split", "patient_id", "video_key", "num_frames", "height", "width",
                          "has_mask", *fmt.LABEL_COLUMNS]).to_pandas()
    splits = split_counts(df)
    per_video = df.groupby("video_key")["num_frames"].first()
    shards = ds.manifest["shards"]
    sizes = [s["bytes"] for s in shards]
    coverage = {name: round(float(df[name].notna().mean()), 4) if len(df) else 0.0
                for name in fmt.LABEL_COLUMNS}
    coverage["mask"] = round(float(df["has_mask"].mean()), 4) if len(df) else 0.0
    reasons = count_reasons(read_rejects(ds.root))
    planes = df["plane"].value_counts().to_dict()
    return {
        "root": str(ds.root),
        "frames": int(len(df)), "patients": int(df["patient_id"].nunique()),
        "videos": int(df["video_key"].nunique()), "splits": splits,
        "frames_per_video": {"min": int(per_video.min()) if len(per_video) else 0,
                             "median": float(per_video.median()) if len(per_video) else 0.0,
                             "max": int(per_video.max()) if len(per_video) else 0},
        "image_sizes": {f"{w}x{h}": int(n) for (h, w), n in
                        df.groupby(["height", "width"]).size().items()},
        "codec": ds.manifest["codec"],
        "shards": {"count": len(shards), "total_mb": round(sum(sizes) / 2**20, 2),
                   "mean_mb": round(sum(sizes) / max(1, len(sizes)) / 2**20, 2),
                   "max_mb": round(max(sizes, default=0) / 2**20, 2)},
        "label_coverage": coverage,
        "planes": {str(k): int(v) for k, v in planes.items()},
        "rejects": {"count": sum(reasons.values()), "reasons": reasons},
    }


def format_summary(s: dict) -> str:
    lines = [f"dataset {s['root']}: {s['frames']} frames, {s['videos']} videos, "
             f"{s['patients']} patients, codec {s['codec']}"]
    lines.append(f"  {'split':<6}{'patients':>10}{'videos':>9}{'frames':>9}")
    for split, c in s["splits"].items():
        lines.append(f"  {split:<6}{c['patients']:>10}{c['videos']:>9}{c['frames']:>9}")
    fpv = s["frames_per_video"]
    lines.append(f"  frames per video: min {fpv['min']}, median {fpv['median']:g}, max {fpv['max']}")
    lines.append("  image sizes: " + ", ".join(f"{k} ({v})" for k, v in s["image_sizes"].items()))
    sh = s["shards"]
    lines.append(f"  shards: {sh['count']} ({sh['total_mb']} MB; mean {sh['mean_mb']} MB, "
                 f"max {sh['max_mb']} MB)")
    cov = ", ".join(f"{k} {v:.0%}" for k, v in s["label_coverage"].items())
    lines.append(f"  label coverage: {cov}")
    if s["planes"]:
        lines.append("  planes: " + ", ".join(f"{k} {v}" for k, v in s["planes"].items()))
    rej = s["rejects"]
    lines.append(f"  rejected rows: {rej['count']}")
    for reason, n in rej["reasons"].items():
        lines.append(f"    {n:>6}  {reason}")
    return "\n".join(lines)


def contact_sheet(root: str, out_png: str, n: int = 16, seed: int = 0, tile: int = 160) -> Path:
    """A grid of ``n`` frames drawn evenly over the index (a seeded pick), mask outlines in
    green, each tile captioned with its split, video and frame index."""
    ds = open_dataset(root)
    if ds.index.num_rows == 0:
        raise SonostreamError(f"{root}: the index has no frames to show")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(ds.index.num_rows, size=min(n, ds.index.num_rows), replace=False))
    rows = ds.index.take(pc.cast(pick, "int64")).to_pylist()
    cols = int(np.ceil(np.sqrt(len(rows))))
    grid_rows = int(np.ceil(len(rows) / cols))
    sheet = np.zeros((grid_rows * (tile + 18), cols * tile, 3), np.uint8)
    for i, row in enumerate(rows):
        y, x = divmod(i, cols)
        img = _tile(ds, row, tile)
        top = y * (tile + 18)
        sheet[top:top + tile, x * tile:(x + 1) * tile] = img
        caption = f"{row['split']} {row['video_key'][:20]} #{row['frame_index']}"
        cv2.putText(sheet, caption, (x * tile + 3, top + tile + 13), cv2.FONT_HERSHEY_SIMPLEX,
                    0.33, (230, 230, 230), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", sheet)
    atomic.write_bytes(out_png, buf.tobytes())
    return Path(out_png)


def _tile(ds: Dataset, row: dict, tile: int) -> np.ndarray:
    gray = decode_gray(ds.member(row, "image"))
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if row["has_mask"]:
        mask = decode_gray(ds.member(row, "mask"))
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, (0, 220, 0), max(1, img.shape[0] // 160))
    h, w = img.shape[:2]
    s = tile / max(h, w)
    img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    out = np.zeros((tile, tile, 3), np.uint8)
    oy, ox = (tile - img.shape[0]) // 2, (tile - img.shape[1]) // 2
    out[oy:oy + img.shape[0], ox:ox + img.shape[1]] = img
    return out
