"""Visual checks: a frame with ground-truth, predicted and fitted-ellipse outlines, and grids
of such overlays saved as PNG (atomically, headless).

Colours (RGB): ground truth green, prediction red, fitted ellipse yellow; lines 1 px thick.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from preprocessing.atomic import write_bytes
from preprocessing.format import SonostreamError

GREEN, RED, YELLOW = (0, 255, 0), (255, 0, 0), (255, 255, 0)
_SHIFT = 4  # cv2 fixed-point bits: ellipse centre/axes drawn at 1/16 px instead of rounded


def _gray_u8(image: np.ndarray) -> np.ndarray:
    """(H, W) uint8 from an (H, W) or (H, W, 1) frame. Floats with max <= 1 are taken as 0..1
    intensities (network inputs), other values as 0..255."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim != 2:
        raise SonostreamError(f"expected an (H, W) grayscale frame, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind == "f":
        img = np.nan_to_num(img)
        img = img * 255.0 if img.max(initial=0.0) <= 1.0 else img
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw_mask_outline(rgb: np.ndarray, mask, color) -> None:
    if mask is None:
        return
    m = (np.asarray(mask) != 0).astype(np.uint8)
    if m.shape != rgb.shape[:2]:
        raise SonostreamError(f"mask shape {m.shape} does not match the frame {rgb.shape[:2]}")
    # Outer outline of every blob (no holes): pixel-centred, i.e. the outermost mask pixels.
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, color, 1)


def _draw_ellipse(rgb: np.ndarray, ellipse) -> None:
    if ellipse is None:
        return
    vals = (ellipse.cx, ellipse.cy, ellipse.a, ellipse.b, ellipse.angle)
    if not all(math.isfinite(v) for v in vals) or max(map(abs, vals[:4])) > 1e5:
        return  # a wild fit: nothing sensible to draw (and cv2 needs int32 coordinates)
    s = 1 << _SHIFT
    cv2.ellipse(rgb, (round(ellipse.cx * s), round(ellipse.cy * s)),
                (round(ellipse.a * s), round(ellipse.b * s)), math.degrees(ellipse.angle),
                0, 360, YELLOW, 1, cv2.LINE_8, _SHIFT)


def overlay(image: np.ndarray, pred_mask, gt_mask=None, ellipse=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the grayscale ``image`` (H, W) with the outline of ``gt_mask``
    (green), of ``pred_mask`` (red) and ``ellipse`` (an ``hc.Ellipse``, yellow), drawn in that
    order. Masks are (H, W), nonzero = foreground; None or empty masks draw nothing."""
    rgb = np.ascontiguousarray(np.repeat(_gray_u8(image)[..., None], 3, axis=2))
    _draw_mask_outline(rgb, gt_mask, GREEN)
    _draw_mask_outline(rgb, pred_mask, RED)
    _draw_ellipse(rgb, ellipse)
    return rgb


def save_png(rgb: np.ndarray, path) -> Path:
    """Writes one (H, W, 3) uint8 RGB image as PNG, atomically; returns the path."""
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SonostreamError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))  # cv2 writes BGR
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    write_bytes(path, buf.tobytes())
    return path


def save_overlays(items: Sequence[tuple[np.ndarray, str]], path, title: str | None = None,
                  cols: int = 4) -> Path:
    """A grid of captioned overlays ``[(rgb (H, W, 3) uint8, caption), ...]`` saved as one PNG,
    atomically; returns the path."""
    # The object-oriented API with the Agg canvas: no pyplot, so no global backend switch, no
    # display needed, and no figure kept alive in pyplot's registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = list(items)
    if not items:
        raise SonostreamError("save_overlays needs at least one (image, caption) item")
    cols = max(1, min(cols, len(items)))
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(3.0 * cols, 3.2 * rows + (0.4 if title else 0.0)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (rgb, caption) in zip(axes.flat, items):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(str(caption), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    path = Path(path)
    write_bytes(path, buf.getvalue())
    return path
