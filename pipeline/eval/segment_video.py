"""``sonostream segment-video``: which loops to read, one output folder each, and what to print.
The work itself is ``cine.segment_video``."""
from __future__ import annotations

import os
from pathlib import Path

from preprocessing import atomic

from .cine import segment_video
from .cine_source import find_loops, read_file, read_shards
from .evaluate import csv_text

SUMMARY_COLUMNS = ("input", "status", "frames", "head_frames", "best_frame", "best_hc_mm",
                   "best_quality", "out", "reason")


def describe(s: dict) -> str:
    hc = f"HC {s['best_hc_mm']:.1f} mm" if s.get("best_hc_mm") is not None else (
        "no head found" if s["best_frame"] is None else "HC n/a (no pixel size: give --pixel-size-mm)")
    best = f"best frame {s['best_frame']} (quality {s['best_quality']:.2f}), {hc}" \
        if s["best_frame"] is not None else hc
    return (f"{s['source']}: {s['frames']} frames, head in {s['head_frames']}; {best}; "
            f"{s.get('frames_per_s') or 0:.0f} frames/s")


def _out_name(path: str, root: str) -> str:
    rel = os.path.relpath(path, root)
    return str(Path(rel).with_suffix("")).replace(os.sep, "__")


def run(args) -> int:
    from pipeline.models.segmenter import load_segmenter
    if args.video_key and not args.data:
        raise ValueError("--video-key names a video in a dataset: give --data too")
    if args.data and not args.video_key:
        raise ValueError("--data goes with --video-key (for files, use --input)")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = load_segmenter(args.checkpoint)   # a wrong checkpoint fails before any decoding
    common = dict(model=model, batch_size=args.batch_size, device=args.device, video=args.video,
                  quiet=args.quiet)
    if args.video_key:
        cine = read_shards(args.data, args.video_key)
        if args.pixel_size_mm is not None:
            if not args.pixel_size_mm > 0:
                raise ValueError(f"--pixel-size-mm must be a positive number, got {args.pixel_size_mm}")
            cine.pixel_size_mm = float(args.pixel_size_mm)
        s = segment_video(args.checkpoint, args.out, cine=cine, **common)
        print(describe(s) + f"\nwrote {args.out}/")
        return 0
    files = find_loops(args.input)
    if os.path.isfile(args.input):
        cine = read_file(args.input, args.crop_sector, args.pixel_size_mm)
        s = segment_video(args.checkpoint, args.out, cine=cine, **common)
        print(describe(s) + f"\nwrote {args.out}/")
        return 0
    rows, failed = [], 0
    for path in files:
        out = Path(args.out) / _out_name(path, args.input)
        try:
            cine = read_file(path, args.crop_sector, args.pixel_size_mm)
            s = segment_video(args.checkpoint, out, cine=cine, **common)
        except ValueError as e:   # one bad loop must not stop the others; it is listed
            failed += 1
            rows.append({"input": path, "status": "error", "reason": str(e)})
            print(f"skipped {path}: {e}")
            continue
        rows.append({"input": path, "status": "ok", "out": str(out),
                     **{k: s.get(k) for k in SUMMARY_COLUMNS[2:7]}})
        print(describe(s))
    atomic.write_text(Path(args.out) / "summary.csv", csv_text(SUMMARY_COLUMNS, rows))
    print(f"{len(files) - failed} of {len(files)} loops segmented; wrote {args.out}/summary.csv")
    return 1 if failed == len(files) else 0
