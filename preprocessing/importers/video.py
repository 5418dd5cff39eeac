"""`sonostream import video`: exported cine loops (mp4, avi, mov, ...) -> frames CSV, via PyAV.

One file is one video; every ``stride``-th decoded frame is kept (``frame_id`` is its index in
the file, so ids stay comparable across strides; ``time_s`` its presentation time). The sector is
found from the kept frames (what moves is the image; see ``sector``) and applied to all of them,
so a loop is decoded twice unless its kept frames fit in CACHE_BYTES.

patient_id is the file name without extension (``--patient-from file``) or the name of the
folder holding the file (``--patient-from folder``: one folder per patient, several loops each);
video_name is the file name without extension.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from preprocessing.importers.common import (ImportProblem, ImportResult, ImportWriter,
                                            crop_columns, find_inputs)
from preprocessing.importers.sector import SectorProbe, split_colour

EXTENSIONS = (".mp4", ".avi", ".mov", ".m4v", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")
CACHE_BYTES = 512 * 2**20
PATIENT_FROM = ("file", "folder")


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in EXTENSIONS


def import_video(inputs: list[str], out_dir: str, stride: int = 1, crop_sector: bool = True,
                 patient_from: str = "file", overwrite: bool = False,
                 progress: bool = True) -> ImportResult:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1 (1 keeps every frame), got {stride!r}")
    if patient_from not in PATIENT_FROM:
        raise ValueError(f"patient_from must be one of {PATIENT_FROM}, got {patient_from!r}")
    files, missing = find_inputs(inputs, is_video)
    if not files and not missing:
        raise ValueError(f"no video files in {', '.join(inputs)} (looked for "
                         f"{', '.join(EXTENSIONS)})")
    writer = ImportWriter(out_dir, "video", overwrite)
    for path in missing:
        writer.reject(path, f"{path}: no such file or directory")
    for path in tqdm(files, desc="video", unit="file", disable=not progress):
        with writer.item(path):
            _import_file(writer, path, stride, crop_sector, patient_from)
    return writer.finish()


def decode(path: str, stride: int):
    """Yields (frame index, time in s or None, gray, colour mask) for every stride-th frame."""
    import av
    try:
        container = av.open(path)
    except Exception as e:  # av.InvalidDataError, OSError, ... : whatever FFmpeg cannot open
        raise ImportProblem(f"{path}: not a readable video ({e})") from None
    with container:
        if not container.streams.video:
            raise ImportProblem(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % stride == 0:
                    gray, colour = split_colour(frame.to_ndarray(format="rgb24"))
                    time_s = float(frame.time) if frame.time is not None else None
                    yield index, time_s, gray, colour
        except av.FFmpegError as e:
            raise ImportProblem(f"{path}: decoding failed after frame {index} ({e})") from None


def frame_rate(path: str) -> float | None:
    import av
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else None


def read_loop(path: str, stride: int = 1, crop_sector: bool = True):
    """(sector or None, iterable of (frame index, time in s or None, image)): the frames as the
    importer stores them (cropped to the sector when asked). Raises ImportProblem naming ``path``
    when the file cannot be decoded or holds no frame."""
    frames, cache, size = decode(path, stride), [], 0
    probe = SectorProbe()
    if crop_sector:
        for item in frames:
            probe.add(item[2], item[3])
            size += item[2].nbytes * 2
            if cache is not None:
                cache.append(item)
                cache = cache if size <= CACHE_BYTES else None
        if probe.frames == 0:
            raise ImportProblem(f"{path}: the video holds no frame")
        frames = cache if cache is not None else decode(path, stride)
    sector = probe.find() if crop_sector else None
    images = ((index, time_s, sector.apply(gray, colour) if sector else gray)
              for index, time_s, gray, colour in frames)
    return sector, images


def _import_file(writer: ImportWriter, path: str, stride: int, crop_sector: bool,
                 patient_from: str) -> None:
    sector, frames = read_loop(path, stride, crop_sector)
    stem = Path(path).stem
    patient = stem if patient_from == "file" else Path(os.path.abspath(path)).parent.name
    rate = frame_rate(path)
    columns = {"source_file": path,
               "frame_time_ms": round(1000.0 * stride / rate, 3) if rate else None,
               **(crop_columns(sector) if sector else {})}
    writer.start_video(patient, stem, path)
    n = 0
    for n, (index, time_s, image) in enumerate(frames, 1):
        writer.add_frame(patient, stem, index, image,
                         time_s=round(time_s, 4) if time_s is not None else None, **columns)
    if n == 0:
        raise ImportProblem(f"{path}: the video holds no frame")


def write_mp4(path, frames, fps: float = 10.0, crf: int = 18) -> Path:
    """Encode ``frames`` ((H, W) uint8 gray or (H, W, 3) uint8 RGB, all one size) as H.264 mp4,
    atomically (a temp file in the same folder, then rename). Odd sizes are padded by one black
    row/column (yuv420p needs even sizes). Returns the path."""
    import av

    from preprocessing import atomic
    path = Path(path)
    with atomic.atomic_open(path, "wb") as fh:
        with av.open(fh, "w", format="mp4") as out:
            stream = None
            for img in frames:
                rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
                h, w = rgb.shape[:2]
                if h % 2 or w % 2:
                    rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))
                if stream is None:
                    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                    stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                out.mux(packet)
    return path
