"""Evaluation of head segmentation: mask metrics (Dice, IoU, HD95), the sub-pixel ellipse fit
that turns a mask into a head circumference, HC18 submission rows, and visual overlays."""
from .hc import HC18_COLUMNS, Ellipse, fit_ellipse, hc18_row
from .metrics import boundary, dice, hd95, iou, summarize
from .overlay import overlay, save_overlays, save_png

__all__ = ["HC18_COLUMNS", "Ellipse", "boundary", "dice", "fit_ellipse", "hc18_row", "hd95",
           "iou", "overlay", "save_overlays", "save_png", "summarize"]
