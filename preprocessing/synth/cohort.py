"""Write a synthetic cohort to disk: frames, head masks and ``frames.csv`` (the importer contract).

Layout under ``out_dir``::

    frames/P0007/sweep_01/12.png   8-bit grayscale B-mode frame
    masks/P0007/sweep_01/12.png    0/255 filled outer-skull ellipse (all zeros without a head)
    frames.csv                     one row per frame, rows shuffled; written last, atomically

Patients are rendered in parallel but each is a pure function of (seed, patient index), so the
bytes on disk do not depend on ``workers``.
"""
from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import cv2
from tqdm import tqdm

from preprocessing import atomic
from preprocessing.format import LABEL_COLUMNS, MASK_COLUMN, REQUIRED_COLUMNS, csv_cell
from preprocessing.format import SonostreamError
from preprocessing.synth import hard
from preprocessing.synth.anatomy import TAG_SHUFFLE, make_patient, plan_video, rng_for
from preprocessing.synth.render import render_video

CSV_NAME = "frames.csv"
EXTRA_COLUMNS = ("ga_weeks",)
COLUMNS = (*REQUIRED_COLUMNS, MASK_COLUMN, *LABEL_COLUMNS, *EXTRA_COLUMNS)


def _check(patients, videos_per_patient, frames_per_video, size, seed, workers,
           difficulty="standard") -> None:
    if difficulty not in hard.DIFFICULTIES:
        raise SonostreamError(f"difficulty must be one of {', '.join(hard.DIFFICULTIES)}, got "
                              f"{difficulty!r}")
    checks = (
        (patients, 1, "patients", "ask for at least 1 patient"),
        (videos_per_patient, 1, "videos_per_patient", "ask for at least 1 video per patient"),
        (frames_per_video, 2, "frames_per_video", "a sweep needs at least 2 frames"),
        (size, 64, "size", "use size >= 64 pixels; the fan and its anatomy need the room"),
        (seed, 0, "seed", "use a non-negative integer seed"),
        (workers, 1, "workers", "use workers >= 1 (1 renders in this process)"),
    )
    for value, least, name, fix in checks:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SonostreamError(f"{name} must be an integer, got {value!r}")
        if value < least:
            raise SonostreamError(f"{name}={value} is too small: {fix}")


def video_frames(seed: int, patient, video_index: int, frames: int, size: int,
                 difficulty: str = "standard", plane: str | None = None):
    """(the video's plan, an iterator of its (frame, image, mask, labels)) at ``difficulty``."""
    video = plan_video(seed, patient, video_index, frames, size, plane=plane)
    if difficulty == "hard":
        video, extra = hard.plan_hard(seed, video)
        return video, hard.render_video(seed, video, extra)
    return video, render_video(seed, video)


def render_patient(out_dir: str, seed: int, index: int, videos: int, frames: int,
                   size: int, difficulty: str = "standard") -> list[list[str]]:
    """Render and write every frame and mask of one patient; returns its CSV rows (as text)."""
    out = Path(out_dir)
    patient = make_patient(seed, index)
    rows = []
    for v in range(videos):
        video, rendered = video_frames(seed, patient, v, frames, size, difficulty)
        rel = f"{patient.patient_id}/{video.name}"
        for sub in ("frames", "masks"):
            (out / sub / rel).mkdir(parents=True, exist_ok=True)
        for f, image, mask, labels in rendered:
            frame_path, mask_path = f"frames/{rel}/{f.index}.png", f"masks/{rel}/{f.index}.png"
            if not (cv2.imwrite(str(out / frame_path), image)
                    and cv2.imwrite(str(out / mask_path), mask)):
                raise OSError(f"could not write {out / frame_path} or its mask")
            values = {"frame_path": frame_path, "patient_id": patient.patient_id,
                      "video_name": video.name, "frame_id": str(f.index), MASK_COLUMN: mask_path,
                      **labels, "ga_weeks": f"{patient.ga_weeks:.1f}"}
            rows.append([csv_cell(values[c]) for c in COLUMNS])
    return rows


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def make_cohort(out_dir, patients: int = 24, videos_per_patient: int = 3,
                frames_per_video: int = 32, size: int = 256, seed: int = 0, workers: int = 1,
                progress: bool = True, difficulty: str = "standard") -> Path:
    """Generate a synthetic fetal ultrasound cohort under ``out_dir``; returns the CSV's path.

    ``patients`` x ``videos_per_patient`` sweeps of ``frames_per_video`` square ``size`` x ``size``
    frames. Video 0 of every patient is a head sweep; others are head, abdomen or femur (p = 0.5,
    0.25, 0.25). Same arguments give byte-identical files, whatever ``workers`` is. An existing
    ``frames.csv`` is removed first, so a folder holding one is always complete; other files
    already in ``out_dir`` are left alone (and overwritten where names collide).

    ``workers > 1`` starts "spawn" processes (safe with OpenCV's threads, unlike fork), so a
    calling script needs the usual ``if __name__ == "__main__":`` guard.

    ``difficulty="hard"`` adds what makes real scans hard (``synth.hard``: low contrast,
    shadows, skull dropout, heads partly outside the fan, head look-alikes, scanner presets per
    patient) with the same labels and masks; "standard" is the cohort as it always was.
    """
    _check(patients, videos_per_patient, frames_per_video, size, seed, workers, difficulty)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / CSV_NAME
    csv_path.unlink(missing_ok=True)

    per_patient = videos_per_patient * frames_per_video
    jobs = [(str(out), seed, i, videos_per_patient, frames_per_video, size, difficulty)
            for i in range(patients)]
    results: dict[int, list] = {}
    bar = tqdm(total=patients * per_patient, unit="frame", desc="synth", disable=not progress)
    with bar:
        if workers == 1:
            for job in jobs:
                results[job[2]] = render_patient(*job)
                bar.update(per_patient)
        else:
            with ProcessPoolExecutor(min(workers, patients), mp_context=get_context("spawn"),
                                     initializer=_worker_init) as pool:
                futures = {pool.submit(render_patient, *job): job[2] for job in jobs}
                for done in as_completed(futures):
                    results[futures[done]] = done.result()
                    bar.update(per_patient)

    rows = [row for i in range(patients) for row in results[i]]
    order = rng_for(seed, TAG_SHUFFLE).permutation(len(rows))  # readers must not rely on order
    with atomic.atomic_open(csv_path, "w") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows[i] for i in order)
    return csv_path
