"""One synthetic head sweep as an mp4 cine loop, with its truth beside it: what
``sonostream segment-video`` can be tried on, and checked against.

    <name>.mp4        H.264, ``fps`` frames per second, grayscale B-mode
    <name>.truth.csv  frame_index, has_head, cx, cy, a, b, angle_rad, hc_mm, is_standard_plane,
                      pixel_size_mm (pixels of the video; empty where the slice misses the head)

The patient is drawn like the cohort's (same seed, same index: the same fetus), so a patient
index past the cohort's last gives one no model has trained on.
"""
from __future__ import annotations

from pathlib import Path

from preprocessing import atomic
from preprocessing.format import SonostreamError, csv_text
from preprocessing.synth.anatomy import make_patient, plan_video
from preprocessing.synth.render import render_video

TRUTH_COLUMNS = ("frame_index", "has_head", "cx", "cy", "a", "b", "angle_rad", "hc_mm",
                 "is_standard_plane", "pixel_size_mm")


def write_sweep(out_mp4, patient: int = 1000, frames: int = 48, size: int = 256, seed: int = 0,
                fps: float = 12.0) -> dict:
    """Render video 0 (always a head sweep) of synthetic patient ``patient``; returns
    {"video", "truth", "pixel_size_mm", "standard_frame", "frames"}."""
    from preprocessing.media import write_mp4
    if frames < 2:
        raise SonostreamError(f"frames={frames}: a sweep needs at least 2 frames")
    if size < 64:
        raise SonostreamError(f"size={size} is too small: use size >= 64 pixels")
    out_mp4 = Path(out_mp4)
    video = plan_video(seed, make_patient(seed, patient), 0, frames, size)
    rows, images = [], []
    for f, image, _, labels in render_video(seed, video):
        images.append(image)
        rows.append({"frame_index": f.index, "has_head": int(labels["hc_mm"] is not None),
                     "cx": labels["ellipse_cx"], "cy": labels["ellipse_cy"],
                     "a": labels["ellipse_a"], "b": labels["ellipse_b"],
                     "angle_rad": labels["ellipse_angle"], "hc_mm": labels["hc_mm"],
                     "is_standard_plane": int(labels["is_standard_plane"]),
                     "pixel_size_mm": float(video.pixel_size_mm)})
    write_mp4(out_mp4, images, fps=fps, crf=12)
    truth = out_mp4.with_suffix(".truth.csv")
    atomic.write_text(truth, csv_text(TRUTH_COLUMNS, rows))
    return {"video": str(out_mp4), "truth": str(truth), "pixel_size_mm": float(video.pixel_size_mm),
            "standard_frame": video.standard_index, "frames": frames}
