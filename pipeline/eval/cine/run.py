"""One loop into its output folder (:func:`segment_video`), or every loop of an input
(:func:`segment_loops`): a file, a folder of files (one folder each and ``summary.csv``), or a
video in the shards. ``sonostream segment-video`` only parses its flags and calls this."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.infer import pick_device
from preprocessing import atomic
from preprocessing import format as fmt
from preprocessing.format import SonostreamError

from ..quality import check_min_quality
from .measure import segment_cine, summarize
from .outputs import write_outputs
from .source import find_loops, read_file, read_shards

SUMMARY_COLUMNS = ("input", "status", "frames", "head_frames", "uncertain_frames", "best_frame",
                   "best_hc_mm", "best_quality", "out", "reason")


def segment_video(checkpoint, out, *, cine, model=None, batch_size: int = 16, device=None,
                  video: bool = True, quiet: bool = False, min_quality: float | None = None) -> dict:
    """Segment ``cine`` (a ``source.Cine``) with ``checkpoint`` (or the already loaded ``model``
    = (module, meta)); writes the loop's folder ``out`` and returns its summary. ``min_quality``
    overrides the segmenter's quality floor."""
    from pipeline.models.segmenter import load_segmenter
    module, meta = model if model is not None else load_segmenter(checkpoint)
    dev = pick_device(device)
    module.to(dev)
    result = segment_cine(module, meta, cine.frames, dev, batch_size, quiet, min_quality)
    summary = summarize(cine, result, checkpoint)
    write_outputs(Path(out), cine, result, summary, video=video)
    return summary


def describe(s: dict) -> str:
    """One line about a segmented loop, as the command prints it."""
    unsure = s.get("uncertain_frames") or 0
    hc = f"HC {s['best_hc_mm']:.1f} mm" if s.get("best_hc_mm") is not None else (
        ("no head found" if not unsure else "no head measured with confidence")
        if s["best_frame"] is None else "HC n/a (no pixel size: give --pixel-size-mm)")
    best = f"best frame {s['best_frame']} (quality {s['best_quality']:.2f}), {hc}" \
        if s["best_frame"] is not None else hc
    heads = f"head in {s['head_frames']}"
    if unsure:
        heads += (f", uncertain in {unsure} (a region of quality below the floor "
                  f"{s['min_quality']:.2f}: no HC)")
    return f"{s['source']}: {s['frames']} frames, {heads}; {best}; {s.get('frames_per_s') or 0:.0f} frames/s"


def _out_name(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return str(Path(rel).with_suffix("")).replace(os.sep, "__")


def segment_loops(checkpoint, out, *, input=None, data=None, video_key=None,
                  pixel_size_mm: float | None = None, crop_sector: bool = True,
                  batch_size: int = 16, device=None, video: bool = True, quiet: bool = False,
                  min_quality: float | None = None, log=print) -> tuple[int, int]:
    """Segment what ``input`` (file or folder) or ``data`` + ``video_key`` names; ``log`` gets a
    line per loop. Returns (loops segmented, loops that failed). In a folder, a loop that cannot
    be read is listed in ``summary.csv`` with its reason and the others go on."""
    from pipeline.models.segmenter import load_segmenter
    if video_key and not data:
        raise SonostreamError("--video-key names a video in a dataset: give --data too")
    if data and not video_key:
        raise SonostreamError("--data goes with --video-key (for files, use --input)")
    if batch_size < 1:
        raise SonostreamError(f"--batch-size must be >= 1, got {batch_size}")
    if min_quality is not None:
        check_min_quality(min_quality)
    model = load_segmenter(checkpoint)   # a wrong checkpoint fails before any decoding
    common = dict(model=model, batch_size=batch_size, device=device, video=video, quiet=quiet,
                  min_quality=min_quality)
    if video_key:
        cine = read_shards(data, video_key, pixel_size_mm)
        log(describe(segment_video(checkpoint, out, cine=cine, **common)) + f"\nwrote {out}/")
        return 1, 0
    files = find_loops(input)
    if os.path.isfile(input):
        cine = read_file(input, crop_sector, pixel_size_mm)
        for warning in cine.warnings:
            log(f"warning: {warning}")
        log(describe(segment_video(checkpoint, out, cine=cine, **common)) + f"\nwrote {out}/")
        return 1, 0
    rows, failed = [], 0
    for path in files:
        where = Path(out) / _out_name(path, input)
        try:
            cine = read_file(path, crop_sector, pixel_size_mm)
            s = segment_video(checkpoint, where, cine=cine, **common)
        except SonostreamError as e:   # one bad loop must not stop the others; it is listed
            failed += 1
            rows.append({"input": path, "status": "error", "reason": str(e)})
            log(f"skipped {path}: {e}")
            continue
        rows.append({"input": path, "status": "ok", "out": str(where),
                     **{k: s.get(k) for k in SUMMARY_COLUMNS[2:8]},
                     "reason": "; ".join(cine.warnings)})   # ok, but: a truncated file
        for warning in cine.warnings:
            log(f"warning: {warning}")
        log(describe(s))
    atomic.write_text(Path(out) / "summary.csv", fmt.csv_text(SUMMARY_COLUMNS, rows))
    log(f"{len(files) - failed} of {len(files)} loops segmented; wrote {out}/summary.csv")
    return len(files) - failed, failed
