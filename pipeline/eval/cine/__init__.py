"""Cine loops (``sonostream segment-video``): segment every frame, smooth the head's ellipse over
time, pick the frame that shows the head best, and report HC there.

    source    loops from a video file, a DICOM file (``preprocessing.media``) or the shards
    temporal  per-frame ellipse tracks, their smoothing, the best frame (pure numpy)
    measure   the model over a loop's frames, one measurement per frame, the summary
    outputs   the files below
    run       one loop, or every loop of a folder, into its output folder

What a loop's folder holds:

O/per_frame.csv       frame_index,head_present,cx,cy,a,b,angle_rad,hc_mm,quality,uncertain (smoothed)
O/per_frame_raw.csv   the same columns, per-frame fits before smoothing
O/summary.json        best frame, HC there, uncertain frames and the floor, jitter before/after
                      smoothing, inputs
O/best_frame.png      the selected frame as segmented; O/best_overlay.png with the outlines
O/overlay.mp4         every frame with its predicted outline (red) and smoothed ellipse (yellow)
O/hc_over_time.png    HC per frame (raw and smoothed), quality, the best frame
O/frames.png          up to 8 evenly spaced frames with their outlines and HC

Per frame: the largest predicted region (one head per frame); fewer than MIN_HEAD_PIXELS
pixels means no head, so no ellipse and no HC. Quality (0..1) = the model's confidence in the
region (mean probability inside it, rescaled from 0.5..1 to 0..1) x how elliptical the region is
(IoU with its fitted ellipse) x, for a multitask model, its probability that the frame is a head
plane (``eval.quality``). A region below the segmenter's quality floor (``min_quality``,
calibrated on val; ``--min-quality`` overrides it) makes the frame uncertain: no ellipse, no HC,
never the best frame, counted in the summary. Pixel coordinates are those of the source file (see ``source``), angles in radians
(``hc.Ellipse``), HC in mm when the pixel size is known (from the DICOM header, the dataset, or
``--pixel-size-mm``), else empty.
"""
from .run import segment_loops, segment_video

__all__ = ["segment_loops", "segment_video"]
