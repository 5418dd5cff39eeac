"""`sonostream import video`: exported cine loops (mp4, avi, mov, ...) -> frames CSV, via PyAV.

One file is one video, read by ``preprocessing.media.read_video``: every ``stride``-th decoded
frame is kept (``frame_id`` is its index in the file, so ids stay comparable across strides;
``time_s`` its presentation time), cropped to the sector found from the kept frames.

patient_id is the file name without extension (``--patient-from file``) or the name of the
folder holding the file (``--patient-from folder``: one folder per patient, several loops each);
video_name is the file name without extension. File and folder names often carry names: with
``pseudonyms`` (``--pseudonymise``) both become keyed hashes (``p-``, ``v-``,
``preprocessing.importers.pseudonym``), ``source_file`` is left out and every row carries the
key's fingerprint.

A file cut off part-way (fewer frames decoded than its container lists: a copy or export that
stopped early) is rejected with the counts; ``keep_truncated`` imports the frames it holds
instead, flagged (``truncated=true`` on its rows, counted in the summary).
"""
from __future__ import annotations

import os
from pathlib import Path

from preprocessing.format import SonostreamError
from preprocessing.importers import pseudonym
from preprocessing.importers.common import (ImportProblem, ImportResult, ImportWriter, ItemWriter,
                                            crop_columns)
from preprocessing.importers.journal import describe, fingerprint
from preprocessing.importers.parallel import check_workers, run_items
from preprocessing.media import (VIDEO_EXTENSIONS, VideoReport, VideoTruncated, find_files,
                                 frame_rate, is_video, read_video)

PATIENT_FROM = ("file", "folder")


def import_video(inputs: list[str], out_dir: str, stride: int = 1, crop_sector: bool = True,
                 patient_from: str = "file", overwrite: bool = False,
                 progress: bool = True, keep_truncated: bool = False, workers: int = 1,
                 pseudonyms=None) -> ImportResult:
    """``pseudonyms``: a ``pseudonym.Pseudonymiser`` hashing the ids; None keeps them."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise SonostreamError(f"stride must be an integer >= 1 (1 keeps every frame), got "
                              f"{stride!r}")
    if patient_from not in PATIENT_FROM:
        raise SonostreamError(f"patient_from must be one of {PATIENT_FROM}, got {patient_from!r}")
    check_workers(workers)
    files, missing = find_files(inputs, is_video)
    if not files and not missing:
        raise SonostreamError(f"no video files in {', '.join(inputs)} (looked for "
                              f"{', '.join(VIDEO_EXTENSIONS)})")
    options = {"stride": stride, "crop_sector": crop_sector, "patient_from": patient_from,
               "keep_truncated": keep_truncated, "pseudonyms": describe(pseudonyms)}
    pseudonym.check_folder(out_dir, pseudonyms, overwrite)
    with ImportWriter(out_dir, "video", overwrite,
                      fingerprint("video", options, files, missing)) as writer:
        pseudonym.record_folder(out_dir, pseudonyms)
        for path in missing:
            writer.reject(path, f"{path}: no such file or directory")
        args = (stride, crop_sector, patient_from, keep_truncated, pseudonyms)
        run_items(writer, [(path, _import_file, (path, *args)) for path in files], workers,
                  progress, "video")
        return writer.finish()


def _import_file(writer: ItemWriter, path: str, stride: int, crop_sector: bool,
                 patient_from: str, keep_truncated: bool, pseudonyms=None) -> None:
    report = VideoReport() if keep_truncated else None
    try:
        sector, frames = read_video(path, stride, crop_sector, report)
        _write_frames(writer, path, stride, sector, frames, patient_from, pseudonyms)
    except SonostreamError as e:
        cut = e if isinstance(e, VideoTruncated) else report.truncated if report else None
        if cut is None or not (cut is e or cut.decoded == 0):
            raise
        hint = f" (or keep its {cut.decoded} decoded frames: --keep-truncated)" \
            if cut.decoded else ""
        raise ImportProblem(f"{cut}{hint}") from None
    if report is not None and report.truncated is not None:
        writer.flag_truncated(path, str(report.truncated))


def _write_frames(writer: ItemWriter, path: str, stride: int, sector, frames,
                  patient_from: str, pseudonyms) -> None:
    stem = Path(path).stem
    patient = stem if patient_from == "file" else Path(os.path.abspath(path)).parent.name
    ids = {"source_file": path}
    if pseudonyms is not None:
        patient, stem = pseudonyms.patient(patient), pseudonyms.video(stem)
        ids = pseudonyms.columns()
    rate = frame_rate(path)
    columns = {**ids,
               "frame_time_ms": round(1000.0 * stride / rate, 3) if rate else None,
               **(crop_columns(sector) if sector else {})}
    writer.start_video(patient, stem, path)
    n = 0
    for n, (index, time_s, image) in enumerate(frames, 1):
        writer.add_frame(patient, stem, index, image,
                         time_s=round(time_s, 4) if time_s is not None else None, **columns)
    if n == 0:
        raise ImportProblem(f"{path}: the video holds no frame")
