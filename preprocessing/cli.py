"""The `sonostream` command line. Each subcommand parses its flags and calls one function.

Imports are lazy so that `sonostream --help` and the data commands stay fast and torch-free.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EPILOG = """\
typical use:
  sonostream synth --out data/synth                 # a synthetic cohort (frames.csv + PNGs)
  sonostream build --csv data/synth/frames.csv --out data/shards
  sonostream verify data/shards
  sonostream inspect data/shards --contact-sheet sheet.png
  sonostream import dicom --input scans/ --out data/dicom   # also: import hc18 --root, import video
  sonostream loader data/shards --loader auto       # stream clip batches, report frames/s + faults
  sonostream pretrain --config launch/configs/debug/pretrain.yaml --data data/shards --out runs/pt
  sonostream finetune ... / evaluate ... / experiment label-efficiency ...   # segmentation
  sonostream segment-video --checkpoint runs/ft/segmenter.pt --input cine.dcm --out runs/sv
  sonostream demo --out runs/demo                   # all of it on the synthetic cohort -> report.md

The frames CSV needs frame_path, patient_id, video_name, frame_id; optional columns are
mask_path, plane, pixel_size_mm, hc_mm, ellipse_cx/cy/a/b/angle, is_standard_plane; any other
column is carried into the index as text. Paths are relative to the CSV's folder.
"""


def default_workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(8, os.cpu_count() or 1))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sonostream", description="Ultrasound frames to streaming shards, and what trains on them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    b = sub.add_parser("build", help="pack a frames CSV into shards + index.parquet",
                       description="Pack a frames CSV into WebDataset shards with a Parquet index. "
                       "Rerunning after a crash resumes after the last finished shard; the same "
                       "CSV, options and seed give byte-identical shards and index.")
    b.add_argument("--csv", required=True, help="frames CSV (frame_path, patient_id, video_name, frame_id, ...)")
    b.add_argument("--out", required=True, help="dataset folder to write")
    b.add_argument("--image-size", type=int, default=256,
                   help="stored frames are SIZE x SIZE: longer side resized to SIZE, centred on "
                   "black; 0 keeps the source size (default 256)")
    b.add_argument("--codec", choices=["jpeg", "png"], default="jpeg", help="frame codec (default jpeg)")
    b.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    b.add_argument("--shard-size-mb", type=float, default=64.0, help="shard size limit in MB (default 64)")
    b.add_argument("--workers", type=int, default=default_workers(), help="encoding processes (default: cores, max 8)")
    b.add_argument("--val-fraction", type=float, default=0.1, help="share of patients in val (default 0.1)")
    b.add_argument("--test-fraction", type=float, default=0.1, help="share of patients in test (default 0.1)")
    b.add_argument("--seed", type=int, default=0, help="seed of the patient split and video order (default 0)")
    b.add_argument("--min-video-frames", type=int, default=1,
                   help="reject videos with fewer usable frames (default 1: keep single images, "
                   "e.g. HC18; 2 or more for ordering tasks)")
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

    from .importers.cli import add_parser as add_import_parser
    add_import_parser(sub)

    lo = sub.add_parser("loader", help="stream clip batches from a dataset and report what came out",
                        description="Run the training loader over a dataset without training: "
                        "batches/s, frames/s, clips per epoch, skipped corrupt members. Checks "
                        "that shards stream (locally or from a URL) before GPU time is spent.")
    lo.add_argument("data", help="dataset folder or URL (http(s)://, s3://... with fsspec)")
    lo.add_argument("--loader", choices=["auto", "cpu", "dali"], default="auto",
                    help="cpu: WebDataset + OpenCV; dali: DALI (GPU decode when CUDA is present); "
                    "auto: dali when CUDA and DALI are available (default)")
    lo.add_argument("--batch-size", type=int, default=32, help="clips per batch (default 32)")
    lo.add_argument("--clip-len", type=int, default=4, help="frames per clip (default 4)")
    lo.add_argument("--stride", type=int, default=1, help="frames between clip frames (default 1)")
    lo.add_argument("--split", default="train", help="split(s), comma-separated (default train)")
    lo.add_argument("--workers", type=int, default=0, help="DataLoader processes (default 0: threads)")
    lo.add_argument("--threads", type=int, default=2, help="decode threads (default 2)")
    lo.add_argument("--epochs", type=int, default=1, help="epochs to stream (default 1)")
    lo.add_argument("--max-steps", type=int, help="stop after this many batches")
    lo.add_argument("--seed", type=int, default=0, help="placement seed (default 0)")
    lo.add_argument("--cache-dir", help="where remote shards are cached (default ~/.cache/sonostream)")
    lo.add_argument("--cache-limit-gb", type=float, help="evict least recently used cached shards "
                    "beyond this size (default: no limit)")
    lo.add_argument("--shard-url", help="shard URL template with {shard}, e.g. 'pipe:aws s3 cp s3://b/ds/shards/{shard} -'")

    from pipeline.pretrain import EXAMPLES as PRETRAIN_EXAMPLES, add_arguments as add_pretrain_arguments
    add_pretrain_arguments(sub.add_parser(
        "pretrain", help="pretrain the encoder (MIR + PM + IO) in one process; see accelerate launch",
        description="Pretrain an ultrasound image encoder on masked image reconstruction, patient "
        "matching and image ordering at once. One process here; for several GPUs or nodes run "
        "`accelerate launch ... -m pipeline.pretrain` with the same flags.",
        epilog=PRETRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))

    from pipeline.segment_cli import add_parsers as add_segment_parsers
    add_segment_parsers(sub)

    bench = sub.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bb = bsub.add_parser("build", help="build frames/s at 1 and 2 workers on a synthetic cohort",
                         description="Build the same synthetic cohort (256x256, JPEG) with 1 and "
                         "2 workers side by side and report frames/s and the scaling.")
    bb.add_argument("--frames", type=int, default=4096, help="frames in the cohort (default 4096)")
    bb.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported (default 3)")
    bb.add_argument("--workdir", help="keep the cohort here (default: a temporary folder)")
    bb.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bl = bsub.add_parser("loader", help="clip loader vs seed-style loader vs raw decode, frames/s",
                         description="Side by side on the same shards and CPU budget: our clip "
                         "loader, a seed-style loader (one file per image, DataFrame scans per "
                         "pair and sequence) and raw decode, at 20k and 200k indexed frames.")
    bl.add_argument("--seconds", type=float, default=8.0, help="timed seconds per run (default 8)")
    bl.add_argument("--workers", type=int, default=2, help="decode threads/processes each (default 2)")
    bl.add_argument("--batch-size", type=int, default=32, help="clips per batch (default 32)")
    bl.add_argument("--clip-len", type=int, default=4, help="frames per clip (default 4)")
    bl.add_argument("--sizes", default="20000,200000", help="indexed frames (default 20000,200000)")
    bl.add_argument("--workdir", help="keep the datasets here (default: a temporary folder)")
    bl.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bs = bsub.add_parser("step", help="seconds per pretraining step: fused vs the seed's three passes",
                         description="Time one multi-task pretraining step (forward, backward, "
                         "AdamW) on CPU, fused vs seed-style, alternately on the same model and "
                         "synthetic batch of B clips x K frames. Fused (the trainer's step) "
                         "encodes the B*K frames once for MIR, PM and IO; the seed encoded 1 "
                         "image for MIR, 2 for a PM pair and K for IO per sample. The encoder "
                         "dominates, so the speedup is bounded by (1+2+K)/K = 7/4 at K = 4, less "
                         "what the fused step's MIR decoder costs on K times as many frames.")
    bs.add_argument("--arch", default="resnet18",
                    help="encoder: tiny | resnet18 | resnet34 | resnet50 (default resnet18)")
    bs.add_argument("--image-size", type=int, default=224, help="frame side in pixels (default 224)")
    bs.add_argument("--batch", type=int, default=8, help="clips per step, B (default 8)")
    bs.add_argument("--clip-len", type=int, default=4, help="frames per clip, K (default 4)")
    bs.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    bs.add_argument("--steps", type=int, default=5, help="timed steps of each; the median is reported (default 5)")
    bs.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bt = bsub.add_parser("train", help="pretraining images/s: real shards vs a batch already on the device",
                         description="End-to-end pretraining throughput of a run config on one "
                         "device (the GPU when present): the loader streaming real shards against "
                         "the same model stepping one batch kept on the device, and images/s at "
                         "fp32 vs bf16. Goal on a GPU: real / synthetic >= 0.9.")
    bt.add_argument("--data", required=True, help="dataset folder or URL")
    bt.add_argument("--config", help="run config YAML (default: built-in defaults)")
    bt.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value (repeatable); train.batch_size is the one device's batch")
    bt.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default 20)")
    bt.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    bt.add_argument("--precisions", default="no,bf16", help="synthetic precisions (default no,bf16)")
    bt.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bv = bsub.add_parser("video", help="segment-video on unseen synthetic sweeps: speed, smoothing, best frame",
                         description="Segment synthetic head sweeps of patients 1000, 1001, ... (unseen by "
                         "any cohort of fewer patients) with a segmenter.pt and report: model frames/s "
                         "at batch 1 and --batch side by side, HC error and error jitter of the "
                         "per-frame fits against the smoothed track, and the best frame's distance "
                         "to the labelled standard plane against the naive largest-area frame.")
    bv.add_argument("--checkpoint", required=True, help="segmenter.pt written by `sonostream finetune`")
    bv.add_argument("--sweeps", type=int, default=8, help="sweeps, one patient each (default 8)")
    bv.add_argument("--frames", type=int, default=48, help="frames per sweep (default 48)")
    bv.add_argument("--size", type=int, default=256, help="frame side in pixels (default 256)")
    bv.add_argument("--batch", type=int, default=16, help="frames per forward pass (default 16)")
    bv.add_argument("--device", help="cpu, cuda ... (default: cuda when present)")
    bv.add_argument("--json", metavar="FILE", help="write the results as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as e:  # our errors say what to fix
        print(f"error: {e}", file=sys.stderr)
        return 2


def cmd_synth(args) -> int:
    from .synth import make_cohort, save_preview
    csv_path = make_cohort(args.out, patients=args.patients, videos_per_patient=args.videos_per_patient,
                           frames_per_video=args.frames_per_video, size=args.size, seed=args.seed,
                           workers=args.workers)
    n = args.patients * args.videos_per_patient * args.frames_per_video
    print(f"wrote {n} frames of {args.patients} patients; frames CSV: {csv_path}")
    if args.preview:
        print(f"preview: {save_preview(args.preview, seed=args.seed, size=args.size)}")
    return 0


def cmd_build(args) -> int:
    from .build import BuildOptions, build
    opts = BuildOptions(image_size=args.image_size, codec=args.codec, jpeg_quality=args.jpeg_quality,
                        shard_size_mb=args.shard_size_mb, val_fraction=args.val_fraction,
                        test_fraction=args.test_fraction, seed=args.seed,
                        min_video_frames=args.min_video_frames)
    r = build(args.csv, args.out, opts, workers=max(1, args.workers), overwrite=args.overwrite,
              progress=not args.quiet)
    if r.up_to_date:
        print(f"{args.out} is already built from this CSV with these options; nothing to do "
              "(--overwrite rebuilds)")
    else:
        rate = r.rows / r.seconds if r.seconds else 0.0
        resumed = f", {r.reused_shards} kept from an interrupted run" if r.reused_shards else ""
        print(f"built {args.out}: {r.shards} shards{resumed} in {r.seconds:.1f}s ({rate:.0f} rows/s)")
    print(f"{r.rows} CSV rows: {r.frames} frames in the index, {r.rejects} rejected"
          + (f" (see {os.path.join(args.out, 'rejects.csv')})" if r.rejects else ""))
    for split, c in r.splits.items():
        print(f"  {split:<5} {c['patients']:>6} patients {c['videos']:>7} videos {c['frames']:>9} frames")
    for split, c in r.splits.items():
        if c["frames"] == 0 and r.frames:
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
    from .importers.cli import run
    return run(args)


def cmd_loader(args) -> int:
    import time

    import torch

    from pipeline.data import ClipLoader, LoaderConfig
    cfg = LoaderConfig(batch_size=args.batch_size, clip_len=args.clip_len, stride=args.stride,
                       splits=tuple(args.split.split(",")), num_workers=args.workers,
                       decode_threads=args.threads, loader=args.loader)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = ClipLoader(args.data, cfg, seed=args.seed, device=device, cache_dir=args.cache_dir,
                        shard_url=args.shard_url, cache_limit_gb=args.cache_limit_gb)
    print(json.dumps(loader.describe()))
    steps = frames = 0
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        for b in loader:
            steps += 1
            frames += b.frames.shape[0] * b.frames.shape[1]
            if args.max_steps and steps >= args.max_steps:
                break
        if args.max_steps and steps >= args.max_steps:
            break
    dt = time.perf_counter() - t0
    print(f"{steps} batches, {frames} frames in {dt:.1f}s ({frames / dt if dt else 0:.0f} frames/s, "
          f"{args.loader} -> {loader.kind} on {device}); {len(loader.faults)} corrupt member(s) skipped")
    for epoch, shard, key, reason in loader.faults[:20]:
        print(f"  epoch {epoch}: {shard} {key}: {reason}")
    print("state: " + json.dumps(loader.state_dict()))
    return 0


def cmd_bench(args) -> int:
    if args.bench == "loader":
        from pipeline.bench_loader import bench_loader
        sizes = tuple(int(x) for x in args.sizes.split(","))
        result = bench_loader(workdir=args.workdir, sizes=sizes, seconds=args.seconds,
                              workers=args.workers, batch_size=args.batch_size,
                              clip_len=args.clip_len)
    elif args.bench == "train":
        from pipeline.bench_train import bench_train
        result = bench_train(args.data, args.config, args.set, steps=args.steps, warmup=args.warmup,
                             precisions=tuple(args.precisions.split(",")))
    elif args.bench == "video":
        from pipeline.bench_video import bench_video
        result = bench_video(args.checkpoint, sweeps=args.sweeps, frames=args.frames,
                             size=args.size, batch=args.batch, device=args.device)
    elif args.bench == "step":
        from pipeline.bench_step import bench_step
        from pipeline.models.encoder import ARCHS   # checked here: the parser stays torch-free
        if args.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {args.arch!r}")
        result = bench_step(arch=args.arch, image_size=args.image_size, batch=args.batch,
                            clip_len=args.clip_len, threads=args.threads, steps=args.steps)
    else:
        from .bench import bench_build
        result = bench_build(frames=args.frames, repeats=args.repeats, workdir=args.workdir)
    text = json.dumps(result, indent=2)
    if args.json:   # before printing: a closed stdout (| head) must not lose the result
        from .atomic import write_text
        write_text(args.json, text + "\n")
    print(text)
    return 0


def cmd_pretrain(args) -> int:
    from pipeline.pretrain import run
    return run(args)


def _segment_commands() -> dict:
    from pipeline.segment_cli import COMMANDS as SEGMENT
    return SEGMENT


COMMANDS = {"synth": cmd_synth, "build": cmd_build, "verify": cmd_verify, "inspect": cmd_inspect,
            "import": cmd_import, "loader": cmd_loader, "pretrain": cmd_pretrain, "bench": cmd_bench,
            **_segment_commands()}

if __name__ == "__main__":
    sys.exit(main())
