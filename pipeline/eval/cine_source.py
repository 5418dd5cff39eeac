"""Cine loops to segment: a video file, a multi-frame DICOM, or a video already in the shards.

Files are read with the importers' own code (``preprocessing.importers``), so a loop is
segmented exactly as ``sonostream import`` would have stored it: decoded by PyAV or pydicom and
cropped to the ultrasound sector (``crop_sector``). Coordinates reported for a file are in the
source file's pixels (the crop's offset is added back); for a video in the shards, in the stored
frame's pixels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocessing.importers.common import ImportProblem, find_inputs
from preprocessing.importers.dicom import looks_like_dicom
from preprocessing.importers.video import EXTENSIONS as VIDEO_EXTENSIONS
from preprocessing.importers.video import is_video

MIN_FRAMES = 2


@dataclass
class Cine:
    name: str                     # output-friendly name (file stem or video key)
    source: str                   # what was read, for messages and the summary
    kind: str                     # "video" | "dicom" | "shards"
    frames: list                  # (H, W) uint8 frames, as segmented
    frame_index: list             # each frame's index in the source
    pixel_size_mm: float | None   # mm per pixel of ``frames``; None: HC cannot be given in mm
    fps: float | None
    offset: tuple = (0.0, 0.0)    # (x, y) from ``frames`` pixels to the source's pixels
    truth: dict = field(default_factory=dict)  # "hc_mm" (array) and "standard_frame" when known


def is_cine_file(path: str) -> bool:
    return is_video(path) or looks_like_dicom(path)


def find_loops(path: str) -> list[str]:
    """The video and DICOM files at ``path`` (a file, or a folder searched recursively)."""
    if not os.path.exists(path):
        raise ValueError(f"--input {path}: no such file or folder")
    if os.path.isfile(path):
        return [path]
    files, _ = find_inputs([path], is_cine_file)
    if not files:
        raise ValueError(f"--input {path}: the folder holds no video ({', '.join(VIDEO_EXTENSIONS)}) "
                         "or DICOM file")
    return files


def read_file(path: str, crop_sector: bool = True, pixel_size_mm: float | None = None) -> Cine:
    """One video or DICOM file; ValueError naming the file when it cannot be used."""
    try:
        cine = _read_dicom(path, crop_sector) if looks_like_dicom(path) else \
            _read_video(path, crop_sector)
    except ImportProblem as e:
        raise ValueError(str(e)) from None
    if pixel_size_mm is not None:
        if not (math.isfinite(pixel_size_mm) and pixel_size_mm > 0):
            raise ValueError(f"--pixel-size-mm must be a positive number, got {pixel_size_mm}")
        cine.pixel_size_mm = float(pixel_size_mm)
    if len(cine.frames) < MIN_FRAMES:
        raise _single_frame(path)
    return cine


def _single_frame(path: str) -> ValueError:
    return ValueError(f"{path} holds a single frame, not a cine loop; segment-video needs at least "
                      f"{MIN_FRAMES} frames (for still images: `sonostream import` them, build, and "
                      "`sonostream evaluate`)")


def _offset(sector) -> tuple[float, float]:
    return (float(sector.box[0]), float(sector.box[1])) if sector is not None else (0.0, 0.0)


def _read_video(path: str, crop_sector: bool) -> Cine:
    from preprocessing.importers.video import frame_rate, read_loop
    if not is_video(path):
        raise ValueError(f"{path}: not a video ({', '.join(VIDEO_EXTENSIONS)}) or DICOM file")
    sector, images = read_loop(path, 1, crop_sector)
    index, frames = [], []
    for i, _, image in images:
        index.append(i)
        frames.append(image)
    if not frames:
        raise ValueError(f"{path}: the video holds no frame")
    return Cine(Path(path).stem, path, "video", frames, index, None, frame_rate(path),
                _offset(sector))


def _read_dicom(path: str, crop_sector: bool) -> Cine:
    from preprocessing.importers.dicom import Loop
    loop = Loop(path, crop_sector)
    if loop.count < MIN_FRAMES:   # before decoding a still image's pixels for nothing
        raise _single_frame(path)
    frames = list(loop.images())
    fps = 1000.0 / loop.frame_time_ms if loop.frame_time_ms else None
    return Cine(Path(path).stem, path, "dicom", frames, list(range(len(frames))),
                loop.pixel_size_mm, fps, _offset(loop.sector))


def read_shards(data: str, video_key: str) -> Cine:
    """The frames of ``video_key`` in the dataset ``data``, in order, with its labels as truth."""
    import pyarrow.compute as pc

    from pipeline.data.frames import FrameReader, FrameTable
    from pipeline.data.source import ShardSource
    source = ShardSource(data)
    keys = source.index.column("video_key")
    rows = np.flatnonzero(pc.equal(keys, video_key).to_numpy(zero_copy_only=False))
    if len(rows) == 0:
        known = sorted(set(keys.to_pylist()))
        raise ValueError(f"--video-key {video_key!r} is not in {data} ({len(known)} videos, e.g. "
                         f"{', '.join(known[:4])}); `sonostream inspect {data}` lists them")
    frame_index = source.index.column("frame_index").to_numpy()[rows]
    order = np.argsort(frame_index, kind="stable")
    rows, frame_index = rows[order], frame_index[order]
    table = FrameTable.from_index(source.index)
    reader = FrameReader(source, table, None, threads=2)
    frames = [reader.image(int(r)) for r in rows]
    sizes = table.pixel_size[rows]
    sizes = sizes[np.isfinite(sizes)]
    truth = {"hc_mm": table.hc_mm[rows]}
    if "is_standard_plane" in source.index.column_names:
        flags = source.index.column("is_standard_plane").to_numpy(zero_copy_only=False)[rows]
        hits = [i for i, f in enumerate(flags) if f is True or f == 1]
        if hits:
            truth["standard_frame"] = hits[0]
    fps = None
    if "frame_time_ms" in source.index.column_names:
        ms = source.index.column("frame_time_ms")[int(rows[0])].as_py()
        fps = 1000.0 / float(ms) if ms else None
    return Cine(video_key, f"{data}#{video_key}", "shards", frames, frame_index.tolist(),
                float(np.median(sizes)) if len(sizes) else None, fps, truth=truth)
