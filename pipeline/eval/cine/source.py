"""Cine loops to segment: a video file, a multi-frame DICOM, or a video already in the shards.

Files are read by ``preprocessing.media``, the code ``sonostream import`` reads them with, so a
loop is segmented exactly as an import would have stored it: decoded by PyAV or pydicom and
cropped to the ultrasound sector (``crop_sector``). Coordinates reported for a file are in the
source file's pixels (the crop's offset is added back); for a video in the shards, in the stored
frame's pixels. A video file cut off part-way is segmented as far as it goes, with a warning
(``Cine.warnings``) saying how many of the frames its container lists were read.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocessing.format import SonostreamError
from preprocessing.media import (VIDEO_EXTENSIONS, DicomLoop, VideoReport, find_files,
                                 frame_rate, is_loop_file, is_video, looks_like_dicom, read_video)

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
    warnings: list = field(default_factory=list)  # e.g. a truncated file: what was read of it


def find_loops(path: str) -> list[str]:
    """The video and DICOM files at ``path`` (a file, or a folder searched recursively)."""
    if not os.path.exists(path):
        raise SonostreamError(f"--input {path}: no such file or folder")
    if os.path.isfile(path):
        return [path]
    files, _ = find_files([path], is_loop_file)
    if not files:
        raise SonostreamError(f"--input {path}: the folder holds no video "
                              f"({', '.join(VIDEO_EXTENSIONS)}) or DICOM file")
    return files


def _pixel_size(pixel_size_mm: float | None) -> float | None:
    if pixel_size_mm is None:
        return None
    if not (math.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise SonostreamError(f"--pixel-size-mm must be a positive number, got {pixel_size_mm}")
    return float(pixel_size_mm)


def read_file(path: str, crop_sector: bool = True, pixel_size_mm: float | None = None) -> Cine:
    """One video or DICOM file; a SonostreamError naming the file when it cannot be used.
    ``pixel_size_mm`` (when given) overrides what the file says."""
    size = _pixel_size(pixel_size_mm)
    cine = _read_dicom(path, crop_sector) if looks_like_dicom(path) else _read_video(path, crop_sector)
    if size is not None:
        cine.pixel_size_mm = size
    if len(cine.frames) < MIN_FRAMES:
        raise _single_frame(path)
    return cine


def _single_frame(path: str) -> SonostreamError:
    return SonostreamError(f"{path} holds a single frame, not a cine loop; segment-video needs at "
                           f"least {MIN_FRAMES} frames (for still images: `sonostream import` "
                           "them, build, and `sonostream evaluate`)")


def _offset(sector) -> tuple[float, float]:
    return (float(sector.box[0]), float(sector.box[1])) if sector is not None else (0.0, 0.0)


def _read_video(path: str, crop_sector: bool) -> Cine:
    if not is_video(path):
        raise SonostreamError(f"{path}: not a video ({', '.join(VIDEO_EXTENSIONS)}) or DICOM file")
    report = VideoReport()
    try:
        sector, images = read_video(path, 1, crop_sector, report)
        index, frames = [], []
        for i, _, image in images:
            index.append(i)
            frames.append(image)
    except SonostreamError:
        if report.truncated is not None and report.truncated.decoded == 0:
            raise report.truncated from None   # cut off before its first frame
        raise
    cut = report.truncated
    if cut is not None and len(frames) < MIN_FRAMES:
        raise cut   # cut off before it became a loop: says so, not "a single frame"
    if not frames:
        raise SonostreamError(f"{path}: the video holds no frame")
    cine = Cine(Path(path).stem, path, "video", frames, index, None, frame_rate(path),
                _offset(sector))
    if cut is not None:
        of = f"{'about ' if cut.about else ''}{cut.expected}"
        cine.warnings.append(f"{path} is truncated: read {cut.decoded} of {of} frames (the file "
                             "ends early; re-export or re-copy it); segmented the frames it holds")
    return cine


def _read_dicom(path: str, crop_sector: bool) -> Cine:
    loop = DicomLoop(path, crop_sector)
    if loop.count < MIN_FRAMES:   # before decoding a still image's pixels for nothing
        raise _single_frame(path)
    frames = list(loop.images())
    fps = 1000.0 / loop.frame_time_ms if loop.frame_time_ms else None
    return Cine(Path(path).stem, path, "dicom", frames, list(range(len(frames))),
                loop.pixel_size_mm, fps, _offset(loop.sector))


def read_shards(data: str, video_key: str, pixel_size_mm: float | None = None) -> Cine:
    """The frames of ``video_key`` in the dataset ``data``, in order, with its labels as truth.
    ``pixel_size_mm`` (when given) overrides the dataset's."""
    from pipeline.data import FrameDecoder, IndexView, ShardSource
    size = _pixel_size(pixel_size_mm)
    source = ShardSource(data)
    view = IndexView(source.index)
    try:
        rows = view.video_rows(video_key)
    except SonostreamError as e:
        raise SonostreamError(f"--video-key: {e} ({data})") from None
    decoder = FrameDecoder(source, view, threads=2)
    frames = decoder.map(decoder.image, rows.tolist())
    sizes = view.pixel_size[rows]
    sizes = sizes[np.isfinite(sizes)]
    truth = {"hc_mm": view.hc_mm[rows]}
    flags = view.column("is_standard_plane")
    if flags is not None:
        hits = [i for i, f in enumerate(flags[rows]) if f is True or f == 1]
        if hits:
            truth["standard_frame"] = hits[0]
    fps = None
    ms = view.column("frame_time_ms")   # an extra column (text) that the importers write
    if ms is not None and ms[rows[0]] and float(ms[rows[0]]) > 0:
        fps = 1000.0 / float(ms[rows[0]])
    if size is None:
        size = float(np.median(sizes)) if len(sizes) else None
    return Cine(video_key, f"{data}#{video_key}", "shards", frames, view.frame_index[rows].tolist(),
                size, fps, truth=truth)
