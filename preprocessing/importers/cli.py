"""`sonostream import {hc18,dicom,video}`: argument parsing and the printed summary.

``preprocessing.cli`` registers ``add_parser`` and calls ``run``; the importers themselves (and
pydicom / PyAV) are imported only when a command runs.
"""
from __future__ import annotations

import argparse
import sys

MAX_LISTED = 20


def _common(p: argparse.ArgumentParser, crop_default: bool) -> None:
    p.add_argument("--out", required=True, help="folder to write (frames/, masks/, frames.csv, rejects.csv)")
    p.add_argument("--crop-sector", action=argparse.BooleanOptionalAction, default=crop_default,
                   help="crop each video to its imaging fan/rectangle and blank everything outside "
                   f"it (text, calipers, colour bars); default {'on' if crop_default else 'off'}")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_parser(subparsers) -> None:
    imp = subparsers.add_parser(
        "import", help="turn HC18 folders, DICOM files or videos into a frames CSV",
        description="Import a real-world source into the frames CSV contract (frames/, masks/, "
        "frames.csv; problems in rejects.csv), ready for `sonostream build --csv OUT/frames.csv`.")
    sub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")

    h = sub.add_parser("hc18", help="the HC18 challenge layout (training_set/, test_set/, CSVs)",
                       description="Import the HC18 challenge folder: masks filled from the "
                       "annotation outlines, fitted ellipses, pixel size and reference HC.")
    h.add_argument("--root", required=True, help="folder holding training_set/ and/or test_set/")
    _common(h, crop_default=False)

    d = sub.add_parser("dicom", help="single- and multi-frame ultrasound DICOM files",
                       description="Import ultrasound DICOM files (single images and cine loops; "
                       "RGB, YBR, palette, 16-bit; uncompressed, RLE, JPEG). A file is one video.")
    d.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files or folders (searched recursively for *.dcm and DICM-marked files)")
    _common(d, crop_default=True)

    v = sub.add_parser("video", help="video files (mp4, avi, mov, ...)",
                       description="Import exported cine loops; one file is one video.")
    v.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files or folders (searched recursively for video extensions)")
    v.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1: all)")
    v.add_argument("--patient-from", choices=["file", "folder"], default="file",
                   help="patient id: the file name (default) or its folder's name (one folder "
                   "per patient)")
    _common(v, crop_default=True)


def run(args) -> int:
    progress = not args.quiet
    if args.source == "hc18":
        from .hc18 import import_hc18
        result = import_hc18(args.root, args.out, crop_sector=args.crop_sector,
                             overwrite=args.overwrite, progress=progress)
    elif args.source == "dicom":
        from .dicom import import_dicom
        result = import_dicom(args.input, args.out, crop_sector=args.crop_sector,
                              overwrite=args.overwrite, progress=progress)
    else:
        from .video import import_video
        result = import_video(args.input, args.out, stride=args.stride,
                              crop_sector=args.crop_sector, patient_from=args.patient_from,
                              overwrite=args.overwrite, progress=progress)
    for r in result.rejects[:MAX_LISTED]:
        print(f"rejected: {r['reason']}", file=sys.stderr)
    if len(result.rejects) > MAX_LISTED:
        print(f"... and {len(result.rejects) - MAX_LISTED} more", file=sys.stderr)
    print(result.summary())
    if result.rejects:
        print(f"rejects: {result.out_dir}/rejects.csv")
    if result.frames == 0:
        print("error: no frame was imported; every input is in rejects.csv with its reason",
              file=sys.stderr)
        return 1
    print(f"next: sonostream build --csv {result.csv_path} --out DATASET_DIR")
    return 0
