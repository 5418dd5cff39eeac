"""Test helpers: small frames CSVs made on the fly (no synthetic-cohort dependency).

A plain module (not a conftest) so that conftest files in sub-folders can import it too."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np


def write_frames(root: Path, patients=3, videos=2, frames=5, shape=(48, 64), masks=True,
                 seed=0, name="frames.csv", extra_rows=(), labels=True) -> Path:
    """A frames CSV with PNG frames (and masks) under ``root``; rows in shuffled order.

    ``extra_rows`` are appended as given (dicts), for tests of bad input.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        for v in range(videos):
            for f in range(frames):
                rel = f"img/p{p:03d}/v{v}/{f}.png"
                img = rng.integers(0, 256, shape, dtype=np.uint8)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), img)
                row = {"frame_path": rel, "patient_id": f"{p:03d}", "video_name": f"v{v}",
                       "frame_id": str(f)}
                if masks:
                    m = np.zeros(shape, np.uint8)
                    cv2.ellipse(m, (shape[1] // 2, shape[0] // 2), (10 + f, 8), 0, 0, 360, 255, -1)
                    mrel = f"mask/p{p:03d}/v{v}/{f}.png"
                    (root / mrel).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / mrel), m)
                    row["mask_path"] = mrel
                if labels:
                    row.update(plane="head", pixel_size_mm="0.5", hc_mm="",
                               ellipse_cx="", ellipse_cy="", ellipse_a="", ellipse_b="",
                               ellipse_angle="", is_standard_plane="false", note=f"n{f}")
                rows.append(row)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order] + list(extra_rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    path = root / name
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path
