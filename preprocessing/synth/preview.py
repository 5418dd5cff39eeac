"""One PNG figure of the synthetic cohort for the README (OpenCV drawing, no matplotlib).

Top row: six frames across one head sweep (before the head appears, growing, the standard
plane, shrinking, after it), then an abdomen frame. Bottom row: the same head frames with the
head-mask outline drawn in colour, then a femur frame. Every tile is labelled with its frame
index, plane and head circumference.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from preprocessing.synth.anatomy import make_patient, plan_video
from preprocessing.synth.cohort import video_frames

LABEL_H, TITLE_H, GAP = 22, 30, 8
OUTLINE = (0, 215, 255)  # BGR amber: visible on gray, unlike pure red on dark speckle
STANDARD = (80, 220, 80)


def _sweep_indices(video) -> list[int]:
    """Six frames: before the head, two growing, the standard plane, shrinking, after."""
    n, s = len(video.frames), video.standard_index
    missing = [f.index for f in video.frames if not f.has_head]
    before = max([i for i in missing if i < s], default=0)
    after = min([i for i in missing if i > s], default=n - 1)
    grow = np.linspace(before, s, 4)[1:3].round().astype(int).tolist()
    return [before, *grow, s, int(round((s + after) / 2)), after]


def _pick_patient(seed: int, n_frames: int, size: int):
    """The first patient whose head sweep starts and ends without a head (the full story)."""
    for index in range(64):
        patient = make_patient(seed, index)
        video = plan_video(seed, patient, 0, n_frames, size)
        if not video.frames[0].has_head and not video.frames[-1].has_head:
            return patient, video
    patient = make_patient(seed, 0)
    return patient, plan_video(seed, patient, 0, n_frames, size)


def _tile(image: np.ndarray, text: str, colour=(235, 235, 235)) -> np.ndarray:
    tile = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
    strip = np.full((LABEL_H, tile.shape[1], 3), 32, np.uint8)
    cv2.putText(strip, text, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, 1, cv2.LINE_AA)
    return np.vstack([strip, tile])


def _label(f, labels, plane: str) -> str:
    hc = labels["hc_mm"]
    return f"frame {f.index} | {plane} | " + (f"HC {hc:.0f} mm" if hc is not None else "no HC")


def save_preview(out_png, seed: int = 0, size: int = 256, difficulty: str = "standard") -> Path:
    """Render the preview figure to ``out_png`` (created with its folder); returns its path."""
    n_frames = 32
    patient, head = _pick_patient(seed, n_frames, size)
    head, rendered = video_frames(seed, patient, head.index, n_frames, size, difficulty)
    frames = list(rendered)
    top, bottom = [], []
    for i in _sweep_indices(head):
        f, image, mask, labels = frames[i]
        colour = STANDARD if i == head.standard_index else (235, 235, 235)
        text = _label(f, labels, "head") + (" | standard" if i == head.standard_index else "")
        top.append(_tile(image, text, colour))
        overlay = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, OUTLINE, max(1, size // 200), cv2.LINE_AA)
        bottom.append(_tile(overlay, _label(f, labels, "head mask") if contours
                            else f"frame {f.index} | head mask | empty", colour))
    for row, plane, video_index in ((top, "abdomen", 1), (bottom, "femur", 2)):
        _, rendered = video_frames(seed, patient, video_index, n_frames, size, difficulty, plane)
        f, image, _, labels = list(rendered)[n_frames // 2]
        row.append(np.full((LABEL_H + size, GAP, 3), 255, np.uint8))
        row.append(_tile(image, _label(f, labels, plane)))
    width = sum(t.shape[1] for t in top)
    body = np.vstack([np.hstack(top), np.full((GAP, width, 3), 255, np.uint8), np.hstack(bottom)])
    title = np.full((TITLE_H, body.shape[1], 3), 255, np.uint8)
    hard = ", hard" if difficulty == "hard" else ""
    text = (f"synthetic cohort (seed {seed}{hard}): patient {patient.patient_id}, "
            f"GA {patient.ga_weeks:.1f} wk, head sweep {head.name} (top: B-mode, bottom: head "
            "mask outline), abdomen and femur sweeps")
    cv2.putText(title, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.vstack([title, body]), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {out}")
    return out
