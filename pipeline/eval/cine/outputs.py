"""What ``segment-video`` writes for a loop (see the package notes): CSVs, summary, best-frame
PNGs, overlay mp4 and the HC-over-time plot. Every file is written atomically."""
from __future__ import annotations

import io
import math
from pathlib import Path

import cv2
import numpy as np

from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.media import write_mp4

from ..overlay import GREEN, overlay, save_overlays, save_png

COLUMNS = ("frame_index", "head_present", "cx", "cy", "a", "b", "angle_rad", "hc_mm", "quality",
           "uncertain")
MIN_VIDEO_SIDE = 256   # smaller loops are enlarged (nearest neighbour) in the mp4 to be visible
STRIP_FRAMES = 8       # frames.png: this many evenly spaced frames with their outlines


def frame_overlay(cine, result, i: int) -> np.ndarray:
    """(H, W, 3) RGB: frame i, its predicted region (red) and smoothed ellipse (yellow)."""
    return overlay(cine.frames[i], result.masks[i], None, result.smooth.ellipse(i))


def _caption(cine, result, i: int, hc: np.ndarray, unit: str) -> str:
    text = f"frame {cine.frame_index[i]}"
    if result.smooth.present[i]:
        text += f"  HC {hc[i]:.1f} {unit}" if math.isfinite(hc[i]) else ""
        text += f"  q {result.smooth.quality[i]:.2f}"
    elif result.smooth.uncertain[i]:
        text += f"  uncertain (q {result.smooth.quality[i]:.2f})"
    else:
        text += "  no head"
    return text + ("  BEST" if i == result.best else "")


def _video_frames(cine, result, hc: np.ndarray, unit: str):
    h, w = cine.frames[0].shape[:2]
    scale = max(1, math.ceil(MIN_VIDEO_SIDE / max(h, w)))
    for i in range(len(cine.frames)):
        rgb = frame_overlay(cine, result, i)   # a loop's frames share one size (see source)
        if scale > 1:
            rgb = cv2.resize(rgb, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        bar = np.zeros((18, rgb.shape[1], 3), np.uint8)
        cv2.putText(bar, _caption(cine, result, i, hc, unit), (3, 13), cv2.FONT_HERSHEY_PLAIN,
                    0.9, GREEN if i == result.best else (255, 255, 255), 1, cv2.LINE_AA)
        yield np.concatenate([bar, rgb], axis=0)


def plot_hc(cine, result, raw_hc, smooth_hc, unit: str, path: Path) -> Path:
    """HC per frame (raw fits as dots, smoothed as a line), quality, truth when known, best frame."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    x = np.asarray(cine.frame_index)
    fig = Figure(figsize=(8, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x, raw_hc, "o", ms=3, color="0.6", label="per-frame fit")
    ax.plot(x, smooth_hc, "-", color="tab:blue", lw=2, label="smoothed")
    truth = (cine.truth or {}).get("hc_mm")
    if truth is not None and unit == "mm" and np.isfinite(truth).any():
        ax.plot(x, truth, "--", color="tab:green", lw=1.2, label="reference")
    if (cine.truth or {}).get("standard_frame") is not None:
        ax.axvline(x[cine.truth["standard_frame"]], color="tab:green", ls=":", lw=1.2,
                   label="labelled standard plane")
    if result.best is not None:
        ax.axvline(x[result.best], color="tab:red", lw=1.2, label=f"best frame ({x[result.best]})")
    ax.set_xlabel("frame")
    ax.set_ylabel("head circumference (mm)" if unit == "mm" else "head perimeter (px; no pixel size)")
    q = ax.twinx()
    q.fill_between(x, result.smooth.quality, color="tab:orange", alpha=0.15, step="mid")
    if result.min_quality > 0:
        q.axhline(result.min_quality, color="tab:orange", ls=":", lw=1)
        unsure = result.raw.uncertain
        if unsure.any():
            q.plot(x[unsure], result.raw.quality[unsure], "x", color="tab:orange", ms=4)
    q.set_ylim(0, 1.05)
    q.set_ylabel("quality (dotted: floor; x: uncertain)" if result.min_quality > 0 else "quality",
                 color="tab:orange")
    ax.set_zorder(q.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(loc="lower center", fontsize=7, ncol=3)
    ax.set_title(f"{cine.name}: HC over time", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic.write_bytes(path, buf.getvalue())
    return path


def write_outputs(out: Path, cine, result, summary: dict, video: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ps = cine.pixel_size_mm
    for name, track in (("per_frame.csv", result.smooth), ("per_frame_raw.csv", result.raw)):
        rows = track.shifted(*cine.offset).rows(ps, cine.frame_index)
        atomic.write_text(out / name, fmt.csv_text(COLUMNS, rows))
    raw_hc, unit = result.raw.size_series(ps)
    smooth_hc, _ = result.smooth.size_series(ps)
    files = {"per_frame": "per_frame.csv", "per_frame_raw": "per_frame_raw.csv",
             "hc_plot": "hc_over_time.png"}
    if result.best is not None:
        b = result.best
        save_png(overlay(cine.frames[b], None), out / "best_frame.png")
        save_png(frame_overlay(cine, result, b), out / "best_overlay.png")
        files.update(best_frame="best_frame.png", best_overlay="best_overlay.png")
    plot_hc(cine, result, raw_hc, smooth_hc, unit, out / "hc_over_time.png")
    picks = np.unique(np.linspace(0, len(cine.frames) - 1, min(STRIP_FRAMES, len(cine.frames)))
                      .round().astype(int))
    save_overlays([(frame_overlay(cine, result, int(i)), _caption(cine, result, int(i), smooth_hc, unit))
                   for i in picks], out / "frames.png", cols=4)
    files["frames"] = "frames.png"
    if video:
        write_mp4(out / "overlay.mp4", _video_frames(cine, result, smooth_hc, unit),
                  fps=cine.fps or 10.0)
        files["video"] = "overlay.mp4"
    summary["files"] = files
    atomic.write_json(out / "summary.json", summary)
