"""The data commands of ``sonostream``: synth, build, verify, inspect and import.

``pipeline.cli`` (the console script) calls :func:`add_parsers` and, for these commands,
:func:`run`. This module never imports ``pipeline`` (the data layer is torch-free), and its
imports are lazy so that ``sonostream --help`` stays fast.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .cpus import default_workers

MAX_LISTED = 20   # rejects printed by an import


def add_parsers(sub) -> None:
    """Add the data commands to ``sub`` (an argparse sub-parsers object)."""
    s = sub.add_parser("synth", help="write a synthetic ultrasound cohort (frames.csv + PNGs)",
                       description="Write a deterministic synthetic B-mode cohort: head, abdomen "
                       "and femur sweeps with head masks, ellipse labels and HC in mm.")
    s.add_argument("--out", required=True, help="folder to write (frames/, masks/, frames.csv)")
    s.add_argument("--patients", type=int, default=24, help="number of patients (default 24)")
    s.add_argument("--videos-per-patient", type=int, default=3, help="sweeps per patient (default 3)")
    s.add_argument("--frames-per-video", type=int, default=32, help="frames per sweep (default 32)")
    s.add_argument("--size", type=int, default=256, help="frame height and width in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    s.add_argument("--workers", type=int, default=default_workers(), help="processes (default: cores, max 8)")
    s.add_argument("--preview", metavar="PNG", help="also save a figure of one sweep and the other planes")
    s.add_argument("--difficulty", choices=["standard", "hard"], default="standard",
                   help="hard: low contrast, acoustic shadows and skull dropout, heads partly "
                   "outside the fan, head look-alikes (rings), scanner presets per patient "
                   "(gain, dynamic range, speckle size, resolution); same labels and masks "
                   "(default standard: byte-identical to earlier versions)")

    b = sub.add_parser("build", help="pack a frames CSV into shards + index.parquet",
                       description="Pack a frames CSV into WebDataset shards with a Parquet index. "
                       "Rerunning after a crash resumes after the last finished shard; the same "
                       "CSV, options and seed give byte-identical shards and index. Across "
                       "machines: --plan --parts N, then --part I --parts N for each I (at "
                       "once, e.g. a Slurm array: launch/slurm/build.sbatch), then --merge.")
    b.add_argument("--csv", help="frames CSV (frame_path, patient_id, video_name, "
                   "frame_id, ...; an optional split column (train/val/test) places patients, "
                   "overriding the fractions); needed by a build and by --plan")
    b.add_argument("--out", required=True, help="dataset folder to write")
    mode = b.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="read and check the CSV, write the plan "
                      "of a build split into --parts N parts into --out (build options go here)")
    mode.add_argument("--part", type=int, metavar="I", help="build part I (0..N-1) of the plan in "
                      "--out; resumable; a finished part exits at once")
    mode.add_argument("--merge", action="store_true", help="check every part of the plan in --out "
                      "and write index.parquet, manifest.json, rejects.csv (refused while a part "
                      "is missing or unfinished)")
    b.add_argument("--parts", type=int, metavar="N", help="number of parts (with --plan and --part)")
    b.add_argument("--image-size", type=int, default=256,
                   help="stored frames are SIZE x SIZE: longer side resized to SIZE, centred on "
                   "black; 0 keeps the source size (default 256)")
    b.add_argument("--codec", choices=["jpeg", "png"], default="jpeg", help="frame codec (default jpeg)")
    b.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    b.add_argument("--shard-size-mb", type=float, default=64.0, help="shard size limit in MB (default 64)")
    b.add_argument("--workers", type=int, default=default_workers(), help="encoding processes (default: cores, max 8)")
    b.add_argument("--val-fraction", type=float, default=None,
                   help="share of the patients the CSV does not place that go to val (default "
                   "0.1, or 0 when the CSV's split column names val rows)")
    b.add_argument("--test-fraction", type=float, default=None,
                   help="share of the patients the CSV does not place that go to test, 0..1 "
                   "(default 0.1, or 0 when the CSV's split column names test rows, so a named "
                   "test set stays exactly that; 1: all of them, whatever --val-fraction)")
    b.add_argument("--seed", type=int, default=0, help="seed of the patient split and video order (default 0)")
    b.add_argument("--min-video-frames", type=int, default=1,
                   help="reject videos with fewer usable frames (default 1: keep single images, "
                   "e.g. HC18; 2 or more for ordering tasks)")
    b.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="reject a frame or mask whose header says more pixels (width x height), "
                   "before decoding it; it lands in rejects.csv (default 50000000: ultrasound "
                   "frames are under 2 Mpx)")
    b.add_argument("--verify-decode", action="store_true",
                   help="decode every source frame in full, also 8-bit gray JPEGs of the stored "
                   "size, which are stored as they are after a check of their structure (header, "
                   "size, tables, markers, end of image) and a decode of 1 frame in 32")
    b.add_argument("--overwrite", action="store_true", help="replace a dataset or unfinished build in --out")
    b.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="re-hash shards and check every index row",
                       description="Check a dataset: shard sizes and sha256 against manifest.json, "
                       "every index row against a real tar member, and the contract's invariants. "
                       "Exits 1 and lists the problems on any mismatch.")
    v.add_argument("dir", help="dataset folder")
    v.add_argument("--decode", action="store_true", help="also decode every image and check its size")
    v.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="counts per split, sizes, label coverage, contact sheet",
                       description="Summarise a dataset; optionally save a contact sheet PNG.")
    i.add_argument("dir", help="dataset folder")
    i.add_argument("--contact-sheet", metavar="PNG", help="save a grid of sample frames with mask outlines")
    i.add_argument("--n", type=int, default=16, help="frames on the contact sheet (default 16)")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    _add_import_parsers(sub)


def _common(p: argparse.ArgumentParser, crop_default: bool) -> None:
    p.add_argument("--out", required=True, help="folder to write (frames/, masks/, frames.csv, import_rejects.csv)")
    p.add_argument("--crop-sector", action=argparse.BooleanOptionalAction, default=crop_default,
                   help="crop each video to its imaging fan/rectangle and blank everything outside "
                   f"it (text, calipers, colour bars); default {'on' if crop_default else 'off'}")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes reading the inputs, one file each at a time; the output is the "
                   "same bytes for any number (default: the CPUs this job may use, max 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier import in --out, finished or not (without it, an "
                   "interrupted import of the same inputs and options continues where it stopped)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _pseudonym_flags(p: argparse.ArgumentParser, default_on: bool) -> None:
    if default_on:
        p.add_argument("--keep-identifiers", action="store_true",
                       help="keep PatientID, SOPInstanceUID, StudyInstanceUID and the source file "
                       "paths as they are, instead of keyed pseudonyms (p-/s-/v-...)")
    else:
        p.add_argument("--pseudonymise", action="store_true",
                       help="replace patient and video ids (file and folder names) by keyed "
                       "pseudonyms (p-/v-...) and leave out source file paths")
    p.add_argument("--key-file", metavar="PATH",
                   help="pseudonym key (64 hex digits, mode 0600; created if absent); the same "
                   "key gives the same ids. Default: $SONOSTREAM_KEY_FILE, else "
                   "~/.config/sonostream/pseudonym.key")


def _pseudonyms(args):
    """The Pseudonymiser the import flags ask for, or None (identifiers kept)."""
    from .format import SonostreamError
    from .importers.pseudonym import Pseudonymiser
    wanted = getattr(args, "pseudonymise", False) or not getattr(args, "keep_identifiers", True)
    if not wanted:
        if args.key_file:
            flag = "--keep-identifiers" if args.source == "dicom" else "no --pseudonymise"
            raise SonostreamError(f"--key-file is unused with {flag}; drop it, or "
                                  + ("drop --keep-identifiers" if args.source == "dicom"
                                     else "add --pseudonymise"))
        return None
    return Pseudonymiser.from_key_file(args.key_file)


def _add_import_parsers(subparsers) -> None:
    imp = subparsers.add_parser(
        "import", help="turn HC18 folders, DICOM files or videos into a frames CSV",
        description="Import a real-world source into the frames CSV contract (frames/, masks/, "
        "frames.csv; problems in import_rejects.csv), ready for `sonostream build --csv OUT/frames.csv`.")
    sub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")

    h = sub.add_parser("hc18", help="the HC18 challenge layout (training_set/, test_set/, CSVs)",
                       description="Import the HC18 challenge folder: masks filled from the "
                       "annotation outlines, fitted ellipses, pixel size and reference HC.")
    h.add_argument("--root", required=True, help="folder holding training_set/ and/or test_set/")
    _common(h, crop_default=False)
    _pseudonym_flags(h, default_on=False)

    d = sub.add_parser("dicom", help="single- and multi-frame ultrasound DICOM files",
                       description="Import ultrasound DICOM files (single images and cine loops; "
                       "RGB, YBR, palette, 16-bit; uncompressed, RLE, JPEG). A file is one video.")
    d.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files or folders (searched recursively for *.dcm and DICM-marked files)")
    _common(d, crop_default=True)
    _pseudonym_flags(d, default_on=True)

    v = sub.add_parser("video", help="video files (mp4, avi, mov, ...)",
                       description="Import exported cine loops; one file is one video.")
    v.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files or folders (searched recursively for video extensions)")
    v.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1: all)")
    v.add_argument("--patient-from", choices=["file", "folder"], default="file",
                   help="patient id: the file name (default) or its folder's name (one folder "
                   "per patient)")
    v.add_argument("--keep-truncated", action="store_true",
                   help="import the frames a cut-off file holds (fewer than its container lists), "
                   "flagged truncated=true, instead of rejecting it")
    _common(v, crop_default=True)
    _pseudonym_flags(v, default_on=False)


def run(args) -> int:
    """Run the data command ``args.command``; returns the exit status."""
    return COMMANDS[args.command](args)


def cmd_synth(args) -> int:
    from .synth import make_cohort, save_preview
    csv_path = make_cohort(args.out, patients=args.patients, videos_per_patient=args.videos_per_patient,
                           frames_per_video=args.frames_per_video, size=args.size, seed=args.seed,
                           workers=args.workers, difficulty=args.difficulty)
    n = args.patients * args.videos_per_patient * args.frames_per_video
    print(f"wrote {n} frames of {args.patients} patients; frames CSV: {csv_path}")
    if args.preview:
        path = save_preview(args.preview, seed=args.seed, size=args.size, difficulty=args.difficulty)
        print(f"preview: {path}")
    return 0


def _build_option_defaults() -> dict:
    """The build options (BuildOptions' fields, which are also the flags' defaults)."""
    from dataclasses import asdict
    from .build import BuildOptions
    return asdict(BuildOptions())


def _build_mode_error(args) -> str | None:
    """What is wrong with the combination of build flags (None: nothing)."""
    split = args.plan or args.part is not None or args.merge
    mode = "--plan" if args.plan else "--part" if args.part is not None else "--merge"
    if not split:
        if args.parts is not None:
            return "--parts goes with --plan or --part (a build split into parts)"
        return None if args.csv else "--csv is required (the frames CSV to build)"
    if args.plan:
        if args.csv is None:
            return "--plan needs --csv (the frames CSV to plan)"
        if args.parts is None or args.parts < 1:
            return "--plan needs --parts N (N >= 1: how many parts the build is split into)"
        return None
    if args.csv is not None:
        return f"{mode} takes the CSV from the plan in --out; drop --csv (it goes with --plan)"
    changed = [f"--{k.replace('_', '-')}" for k, v in _build_option_defaults().items()
               if getattr(args, k) != v]
    if changed:
        return (f"{', '.join(changed)}: build options are fixed by the plan (give them with "
                f"--plan); drop them from {mode}")
    if args.part is not None and args.parts is None:
        return "--part needs --parts N (the number of parts of the plan)"
    if args.merge and (args.parts is not None or args.overwrite):
        return "--merge takes the parts from the plan in --out; drop --parts and --overwrite"
    return None


def _cmd_build_split(args) -> int:
    from .partition import build_part, plan_parts
    if args.part is not None:
        r = build_part(args.out, args.part, args.parts, workers=max(1, args.workers),
                       overwrite=args.overwrite, progress=not args.quiet)
        if r.up_to_date:
            print(f"part {args.part} of {args.out} is already built; nothing to do")
        else:
            resumed = f", {r.reused_shards} kept from an interrupted run" if r.reused_shards else ""
            print(f"built part {args.part} of {args.out}: {r.shards} shards{resumed} in "
                  f"{r.seconds:.1f}s; {r.rows} CSV rows: {r.frames} frames, {r.rejects} rejected")
        return 0
    from .build import BuildOptions
    opts = BuildOptions(**{k: getattr(args, k) for k in _build_option_defaults()})
    p = plan_parts(args.csv, args.out, opts, args.parts, overwrite=args.overwrite)
    for warning in p.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    state = (" (already built from this plan; nothing to do)" if p.up_to_date else
             " (the same plan was already there; kept)" if p.unchanged else "")
    print(f"planned {args.out}{state}: {p.rows} CSV rows, {p.videos} videos in {len(p.part_frames)} "
          f"parts of {min(p.part_frames)}..{max(p.part_frames)} frames, {p.rejects} rejected now")
    print(f"next: sonostream build --out {args.out} --part I --parts {len(p.part_frames)} for I in "
          f"0..{len(p.part_frames) - 1} (at once), then sonostream build --out {args.out} --merge")
    return 0


def cmd_build(args) -> int:
    from . import format as fmt
    from .build import BuildOptions, build
    problem = _build_mode_error(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.plan or args.part is not None:
        return _cmd_build_split(args)
    opts = BuildOptions(image_size=args.image_size, codec=args.codec, jpeg_quality=args.jpeg_quality,
                        shard_size_mb=args.shard_size_mb, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, seed=args.seed,
                        min_video_frames=args.min_video_frames, max_pixels=args.max_pixels,
                        verify_decode=args.verify_decode)
    if args.merge:
        from .partition import merge
        r = merge(args.out)
        opts = BuildOptions(**json.loads((Path(args.out) / fmt.MANIFEST_FILE).read_text())
                            ["fingerprint"]["options"])
    else:
        r = build(args.csv, args.out, opts, workers=max(1, args.workers),
                  overwrite=args.overwrite, progress=not args.quiet)
    for warning in r.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if r.up_to_date and args.merge:
        print(f"{args.out} is already merged; nothing to do")
    elif r.up_to_date:
        print(f"{args.out} is already built from this CSV with these options; nothing to do "
              "(--overwrite rebuilds)")
    elif args.merge:
        print(f"merged {args.out}: {r.shards} shards in {r.seconds:.1f}s")
    else:
        rate = r.rows / r.seconds if r.seconds else 0.0
        resumed = f", {r.reused_shards} kept from an interrupted run" if r.reused_shards else ""
        print(f"built {args.out}: {r.shards} shards{resumed} in {r.seconds:.1f}s ({rate:.0f} rows/s)")
    print(f"{r.rows} CSV rows: {r.frames} frames in the index, {r.rejects} rejected"
          + (f" (see {os.path.join(args.out, 'rejects.csv')})" if r.rejects else ""))
    for split, c in r.splits.items():
        print(f"  {split:<5} {c['patients']:>6} patients {c['videos']:>7} videos {c['frames']:>9} frames")
    val, test = fmt.resolve_fractions(opts.val_fraction, opts.test_fraction)
    share = {"test": test, "val": min(val, 1 - test)}
    share["train"] = 1 - share["test"] - share["val"]
    for split, c in r.splits.items():
        if c["frames"] == 0 and r.frames and share[split] > 1e-9:
            print(f"warning: split {split!r} is empty; with few patients, raise its fraction "
                  "or change --seed", file=sys.stderr)
    for reason, n in r.reject_reasons.items():
        print(f"  rejected {n:>6}: {reason}")
    if r.frames == 0:
        print(f"error: no frame made it into {args.out}; every row is in rejects.csv with its "
              "reason", file=sys.stderr)
        return 1
    if r.single_frame_videos:
        print(f"note: {r.single_frame_videos} videos have a single frame: fine for segmentation "
              "and reconstruction, not for ordering clips (--min-video-frames 2 rejects them)")
    return 0


def cmd_verify(args) -> int:
    from .verify import MAX_LISTED, verify
    problems = verify(args.dir, decode=args.decode, progress=not args.quiet)
    if not problems:
        print(f"{args.dir}: OK (shards match the manifest; every index row points at its member)")
        return 0
    print(f"{args.dir}: {len(problems)} problem(s)", file=sys.stderr)
    for p in problems[:MAX_LISTED]:
        print(f"  {p}", file=sys.stderr)
    if len(problems) > MAX_LISTED:
        print(f"  ... and {len(problems) - MAX_LISTED} more", file=sys.stderr)
    return 1


def cmd_inspect(args) -> int:
    from .summary import contact_sheet, format_summary, summarize
    s = summarize(args.dir)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    if args.contact_sheet:
        path = contact_sheet(args.dir, args.contact_sheet, n=args.n)
        print(f"contact sheet: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_import(args) -> int:
    progress = not args.quiet
    pseudonyms = _pseudonyms(args)
    if args.source == "hc18":
        from .importers.hc18 import import_hc18
        result = import_hc18(args.root, args.out, crop_sector=args.crop_sector,
                             overwrite=args.overwrite, progress=progress, workers=args.workers,
                             pseudonyms=pseudonyms)
    elif args.source == "dicom":
        from .importers.dicom import import_dicom
        result = import_dicom(args.input, args.out, crop_sector=args.crop_sector,
                              overwrite=args.overwrite, progress=progress, workers=args.workers,
                              pseudonyms=pseudonyms, keep_identifiers=pseudonyms is None)
    else:
        from .importers.video import import_video
        result = import_video(args.input, args.out, stride=args.stride,
                              crop_sector=args.crop_sector, patient_from=args.patient_from,
                              overwrite=args.overwrite, progress=progress,
                              keep_truncated=args.keep_truncated, workers=args.workers,
                              pseudonyms=pseudonyms)
    for r in result.truncated[:MAX_LISTED]:
        print(f"truncated, kept: {r['reason']}", file=sys.stderr)
    if len(result.truncated) > MAX_LISTED:
        print(f"... and {len(result.truncated) - MAX_LISTED} more truncated", file=sys.stderr)
    for r in result.rejects[:MAX_LISTED]:
        print(f"rejected: {r['reason']}", file=sys.stderr)
    if len(result.rejects) > MAX_LISTED:
        print(f"... and {len(result.rejects) - MAX_LISTED} more", file=sys.stderr)
    print(result.summary())
    if pseudonyms is not None:
        print(f"ids pseudonymised with key {pseudonyms.fingerprint}"
              + ("" if args.crop_sector else "; text burned into the frames is not removed "
                 "(--no-crop-sector)"))
    if result.rejects:
        print(f"rejects: {result.out_dir}/import_rejects.csv")
    if result.frames == 0:
        print("error: no frame was imported; every input is in import_rejects.csv with its reason",
              file=sys.stderr)
        return 1
    print(f"next: sonostream build --csv {result.csv_path} --out DATASET_DIR")
    return 0


COMMANDS = {"synth": cmd_synth, "build": cmd_build, "verify": cmd_verify, "inspect": cmd_inspect,
            "import": cmd_import}
