"""Shared helpers for the importer tests: real DICOM files from pydicom-data, generated fixtures.

(Not a conftest.py: tests/conftest.py is imported as ``conftest`` by other tests, and a second
conftest.py outside a package would shadow it.)
"""
from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest


def _data_dirs() -> list[Path]:
    """pydicom-data's folder and pydicom's own test files (no download: get_testdata_file
    would try the network)."""
    dirs = []
    for module, sub in (("data_store", "data"), ("pydicom", "data/test_files")):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            dirs += [Path(p) / sub for p in spec.submodule_search_locations]
    return [d for d in dirs if d.is_dir()]


def dicom_file(name: str) -> str:
    """Path of a DICOM test file shipped with pydicom-data / pydicom; skips the test if absent."""
    for folder in _data_dirs():
        if (folder / name).is_file():
            return str(folder / name)
    pytest.skip(f"{name} not found in pydicom-data or pydicom's test files "
                f"(searched {[str(d) for d in _data_dirs()]}); install the dev extras")


# --- generated fixtures ----------------------------------------------------------------------
def fan_mask(h: int, w: int) -> np.ndarray:
    """A curved-array sector: apex above the top edge, 60 degrees, bool (h, w)."""
    yy, xx = np.mgrid[0:h, 0:w]
    ax, ay = (w - 1) / 2, -0.1 * h
    r = np.hypot(xx - ax, yy - ay)
    theta = np.arctan2(xx - ax, yy - ay)
    return (r > 0.25 * h) & (r < 1.05 * h) & (np.abs(theta) < math.radians(30))


def fan_loop(n: int, h: int = 120, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (n, h, w) uint8, fan mask): speckle that changes every frame inside the fan,
    static white overlay text above and beside it (not touching it), black elsewhere."""
    rng = np.random.default_rng(seed)
    fan = fan_mask(h, w)
    frames = []
    for _ in range(n):
        speckle = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 1.2)
        img = np.where(fan, np.clip(40 + 2.0 * (speckle - 128) + 60, 20, 255), 0).astype(np.uint8)
        cv2.putText(img, "GE 12cm", (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, 255, 1)
        cv2.putText(img, "MI 0.9", (w - 40, 30), cv2.FONT_HERSHEY_PLAIN, 0.7, 255, 1)
        frames.append(img)
    return np.stack(frames), fan


def write_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264",
                faststart: bool = False) -> Path:
    """``faststart``: the mp4's moov (its index) before the frames, as players stream it."""
    import av
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def cut_copy(src: Path, dst: Path, fraction: float) -> Path:
    """``dst``: the first ``fraction`` of ``src``'s bytes (a copy that stopped part-way)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[:int(len(data) * fraction)])
    return Path(dst)


def write_empty_video(path: Path) -> Path:
    """A valid AVI container with a video stream and no frame."""
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
        for packet in stream.encode():
            out.mux(packet)
    return path


def ellipse_mask(shape, cx, cy, a, b, angle_deg) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.ellipse(mask, ((cx, cy), (2 * a, 2 * b), angle_deg), 255, -1)
    return mask


HC18_ELLIPSES = {  # name -> (cx, cy, a, b, angle in degrees, pixel size mm)
    "000_HC.png": (200.0, 150.0, 110.0, 80.0, 20.0, 0.15),
    "001_HC.png": (180.5, 140.0, 90.0, 70.0, -35.0, 0.12),
    "001_2HC.png": (210.0, 130.0, 100.0, 85.0, 80.0, 0.12),
    "002_HC.png": (190.0, 145.0, 60.0, 50.0, 0.0, 0.2),
}


def ramanujan(a: float, b: float) -> float:
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def make_hc18(root: Path, shape=(270, 400), test_images=2) -> Path:
    """A small HC18-layout folder: images with a skull ring, 1-pixel outline annotations of
    known ellipses, the two pixel-size CSVs. Returns ``root``."""
    rng = np.random.default_rng(1)
    train, test = root / "training_set", root / "test_set"
    train.mkdir(parents=True)
    test.mkdir()
    fan = fan_mask(*shape)
    rows = []
    for name, (cx, cy, a, b, ang, px) in HC18_ELLIPSES.items():
        img = np.where(fan, rng.integers(20, 90, shape), 0).astype(np.uint8)
        cv2.ellipse(img, ((cx, cy), (2 * a, 2 * b), ang), 230, 3)
        cv2.imwrite(str(train / name), img)
        ann = np.zeros(shape, np.uint8)
        cv2.ellipse(ann, ((cx, cy), (2 * a, 2 * b), ang), 255, 1)
        cv2.imwrite(str(train / name.replace(".png", "_Annotation.png")), ann)
        rows.append((name, px, ramanujan(a, b) * px))
    with open(root / "training_set_pixel_size_and_HC.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "pixel size(mm)", "head circumference (mm)"])
        w.writerows((n, f"{p:.6f}", f"{hc:.2f}") for n, p, hc in rows)
    with open(root / "test_set_pixel_size.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "pixel size(mm)"])
        for i in range(test_images):
            name = f"{i:03d}_HC.png"
            cv2.imwrite(str(test / name), np.where(fan, rng.integers(20, 90, shape), 0).astype(np.uint8))
            w.writerow([name, "0.1"])
    return root


def read_rows(out) -> "pd.DataFrame":
    """OUT/frames.csv as text, empty cells kept as ''."""
    return pd.read_csv(Path(out) / "frames.csv", dtype=str, keep_default_na=False)


def read_rejects(out) -> list[dict]:
    with open(Path(out) / "import_rejects.csv", newline="") as f:
        return list(csv.DictReader(f))
