"""``sonostream experiment``, ``demo`` and ``bench``: the applications on top of the pipeline."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .common import log_level_chosen, setup_logging, write_json_result

EXPERIMENT_EPILOG = """\
example (the small CPU setting `make demo` runs):
  sonostream experiment label-efficiency --data runs/demo/shards --out runs/demo/label_efficiency \\
      --encoder runs/demo/pretrain/encoder.pt --config launch/configs/debug/finetune.yaml \\
      --patients 1,2 --seeds 3 --modes supervised

a pretext-task ablation (one arm per encoder; "scratch" is the no-encoder arm):
  sonostream experiment label-efficiency --data D --out E --config launch/configs/debug/finetune.yaml \\
      --encoders mir=runs/mir/encoder.pt,mir_pm=runs/mir_pm/encoder.pt,all=runs/all/encoder.pt \\
      --patients 1,2,4,8 --seeds 3 --modes supervised

Every (init, mode, amount, seed) run is trained with the same config, then evaluated on --split.
Seed s (the config's train.seed, +1, ...) sets both the initial weights and which patients are
labelled, so arms are compared on the same labelled patients; results.md gives mean +- 95 % CI
over the seeds per arm, each encoder - scratch and each mode - supervised (same encoder) paired
by seed. The tables are rewritten after every run; re-running skips finished runs and resumes
unfinished ones.
"""


DEMO_EPILOG = """\
stages: synth, build, verify, inspect, pretrain, probe, finetune (supervised, semi, multitask), evaluate,
label_efficiency, sweep, video_sweep, video_dicom, report. A finished stage leaves
D/.demo/<stage>.json and is skipped on a re-run; training resumes from its last checkpoint.
--size smoke runs every stage at toy size (the test suite's setting; README gives both times).
Exit status: 0 done, 2 bad input, 1 a stage failed (its log is named).
"""


def add_parsers(sub) -> None:
    from pipeline.apps.demo import SIZES
    x = sub.add_parser("experiment", help="experiments that train and evaluate many runs")
    xsub = x.add_subparsers(dest="experiment", required=True, metavar="WHICH")
    le = xsub.add_parser("label-efficiency", help="encoder inits x modes x labelled patients (or "
                         "fractions) x seeds, with 95 % CIs",
                         description="Train and evaluate every (encoder init, mode, label amount, "
                         "seed) and write E/results.md (mean +- 95 % CI per arm, paired "
                         "differences against scratch and against supervised), E/results.csv "
                         "(one row per run) and "
                         "E/label_efficiency.png (error bars).",
                         epilog=EXPERIMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    le.add_argument("--data", required=True, help="dataset folder written by `sonostream build`")
    le.add_argument("--out", required=True, help="experiment folder")
    le.add_argument("--encoder", help="pretrained encoder.pt: the arm named 'pretrained'")
    le.add_argument("--encoders", metavar="NAME=PATH,...",
                    help="more encoder arms, one per encoder.pt, named in the init column (e.g. "
                    "mir=a/encoder.pt,mir_pm=b/encoder.pt); scratch is the arm without one")
    le.add_argument("--config", help="fine-tuning config YAML shared by every run "
                    "(default: built-in defaults; launch/configs/debug/finetune.yaml for CPUs)")
    le.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value in every run (repeatable)")
    amount = le.add_mutually_exclusive_group()
    amount.add_argument("--patients", metavar="N,...",
                        help="numbers of labelled patients, e.g. 1,2,4,8 (data.label_patients)")
    amount.add_argument("--fractions", metavar="F,...", help="label fractions of the patients "
                        "(default, without --patients: 0.05,0.1,0.25,1)")
    le.add_argument("--seeds", type=int, default=1, metavar="N",
                    help="runs per arm: seed s sets the init and the labelled patients (default 1: "
                    "no confidence intervals)")
    le.add_argument("--modes", default="supervised,semi,multitask", help="modes (default: all three)")
    le.add_argument("--inits", help="arms to run: scratch and names of encoders (default: scratch "
                    "and every encoder given; scratch,pretrained without encoders)")
    le.add_argument("--split", default="test", help="split scored (default test)")
    le.add_argument("--max-steps", type=int, help="steps per run (overrides train.steps)")
    le.add_argument("--verbose", action="store_true", help="progress bars and metrics of every run")

    d = sub.add_parser("demo", help="the whole pipeline on the synthetic cohort, ending in report.md",
                       description="Run synth -> build -> verify -> pretrain -> probe -> finetune (three "
                       "modes) -> evaluate -> label-efficiency -> segment-video (a synthetic sweep "
                       "and a real 2-frame DICOM) and write D/report.md with the figures.",
                       epilog=DEMO_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    d.add_argument("--size", default="default", choices=sorted(SIZES),
                   help="default: what `make demo` runs; smoke: every stage at toy size")
    d.add_argument("--verbose", action="store_true", help="progress bars and logs of every stage")

    bench = sub.add_parser("bench", help="benchmarks (results go to BENCHMARKS.md)")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    bb = bsub.add_parser("build", help="build frames/s at 1 and 2 workers (and 2 parts at once vs 1) on a synthetic cohort",
                         description="Build the same synthetic cohort (256x256, JPEG) with 1 and "
                         "2 workers side by side and report frames/s and the scaling; then from "
                         "the same frames as gray JPEG files (stored as they are) beside "
                         "MosaicML's MDSWriter on those files, when mosaicml-streaming imports.")
    bb.add_argument("--frames", type=int, default=4096, help="frames in the cohort (default 4096)")
    bb.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported (default 3)")
    bb.add_argument("--workdir", help="keep the cohort here (default: a temporary folder)")
    bb.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bi = bsub.add_parser("import", help="import frames/s per source at 1 and 2 workers, and "
                         "DICOM archive -> shards end to end",
                         description="Import a real ultrasound loop (pydicom-data's 120-frame "
                         "JPEG DICOM) as JPEG DICOM, uncompressed DICOM and mp4 copies, at 1 and 2 "
                         "workers side by side, then import + build the JPEG DICOM to shards; "
                         "reports frames/s and a per-frame breakdown of the steps.")
    bi.add_argument("--frames", type=int, default=2400, help="frames per source (default 2400)")
    bi.add_argument("--loop-frames", type=int, help="cut the loop to this many frames (default: all 120)")
    bi.add_argument("--repeats", type=int, default=3, help="runs per arm; the median is reported (default 3)")
    bi.add_argument("--sources", default="dicom_jpeg,dicom_raw,video",
                    help="sources to time (default dicom_jpeg,dicom_raw,video)")
    bi.add_argument("--no-end-to-end", action="store_true", help="skip the import + build arm")
    bi.add_argument("--workdir", help="keep the sources and outputs here (default: a temporary folder)")
    bi.add_argument("--json", metavar="FILE", help="write the results as JSON")
    bl = bsub.add_parser("loader", help="clip loader vs seed-style loader, peers and raw decode, frames/s",
                         description="Side by side on the same shards and CPU budget: our clip "
                         "loader, a seed-style loader (one file per image, DataFrame scans per "
                         "pair and sequence) and raw decode, at 20k and 200k indexed frames; "
                         "beside them, on the smallest size's frames, upstream webdataset reading "
                         "our shards and, when installed (pip install sonostream[bench]), "
                         "MosaicML Streaming and LitData from the same JPEG bytes.")
    bl.add_argument("--seconds", type=float, default=8.0,
                    help="timed seconds per run, epochs repeated as needed (default 8)")
    bl.add_argument("--peers", default="webdataset,mosaic_streaming,litdata",
                    help="peers to run beside ours, or 'none' (default webdataset,mosaic_streaming,"
                         "litdata; those that do not import are reported as skipped)")
    bl.add_argument("--workers", type=int, default=2, help="decode threads/processes each (default 2)")
    bl.add_argument("--batch-size", type=int, default=32, help="clips per batch (default 32)")
    bl.add_argument("--clip-len", type=int, default=4, help="frames per clip (default 4)")
    bl.add_argument("--sizes", default="20000,200000", help="indexed frames (default 20000,200000)")
    bl.add_argument("--config", help="a pretraining config (e.g. launch/configs/pretrain.yaml): "
                    "ours also runs at its loader settings (size, threads, prefetch, resize)")
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
    bg = bsub.add_parser("gpu", help="the prepared check for a borrowed GPU machine: one JSON of figures",
                         description="Environment, the gpu-marked tests, DALI vs CPU loader and "
                         "torchvision GPU decode frames/s, pretraining images/s fp32 vs bf16 with "
                         "peak memory, and 3-step pretraining runs under torchrun (NCCL) and "
                         "DeepSpeed ZeRO-2. Each step is guarded and timed; the JSON is rewritten "
                         "after each. --dry-run: the same on CPU, GPU-only steps skipped.")
    bg.add_argument("--json", metavar="FILE", required=True, help="write the results here (after every step)")
    bg.add_argument("--log", metavar="FILE", help="also append progress and the subprocesses' output here")
    bg.add_argument("--dry-run", action="store_true", help="on CPU: skip GPU-only steps, the rest tiny")
    bg.add_argument("--seconds", type=float, default=10.0, help="timed seconds per loader/decode run (default 10)")
    bg.add_argument("--workdir", help="keep the dataset and runs here (default: a temporary folder)")
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


def cmd_experiment(args) -> int:
    from pipeline.apps.experiment import ExperimentStopped, label_efficiency, parse_encoders
    from preprocessing.format import SonostreamError
    setup_logging()
    if not args.verbose and not log_level_chosen():   # one line per run, not every run's metrics
        logging.getLogger("sonostream.train").setLevel(logging.WARNING)
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    def numbers(flag, text, kind):
        try:
            return None if text is None else [kind(v) for v in split(text)]
        except ValueError:
            raise SonostreamError(f"{flag} {text!r}: give {kind.__name__} values separated by "
                                  "commas") from None
    try:
        label_efficiency(args.data, args.out, encoder=args.encoder,
                         encoders=parse_encoders(args.encoders), config=args.config,
                         overrides=args.set, fractions=numbers("--fractions", args.fractions, float),
                         patients=numbers("--patients", args.patients, int), seeds=args.seeds,
                         modes=split(args.modes), inits=split(args.inits) if args.inits else None,
                         split=args.split, max_steps=args.max_steps, quiet=not args.verbose)
    except ExperimentStopped as e:
        print(f"{e}; {args.out}/results.md has the runs finished before it", flush=True)
        return 130 if e.signal == "SIGINT" else 0   # as pretrain/finetune: Ctrl-C gives 130
    print(f"wrote {args.out}/results.md, results.csv, label_efficiency.png")
    return 0


def cmd_demo(args) -> int:
    from pipeline.apps.demo import Demo
    # Unless verbose, the stages' INFO lines would break the one-line-per-stage view.
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    demo = Demo(args.out, args.size, quiet=not args.verbose)
    print(f"sonostream demo ({args.size}) in {args.out}", flush=True)
    total = demo.run()
    print(f"demo finished in {total:.1f}s ({total / 60:.1f} min); report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_bench(args) -> int:
    if args.bench == "loader":
        from pipeline.apps.bench.loader import bench_loader
        sizes = tuple(int(x) for x in args.sizes.split(","))
        peers = () if args.peers.strip() in ("", "none") else tuple(
            p.strip() for p in args.peers.split(",") if p.strip())
        result = bench_loader(workdir=args.workdir, sizes=sizes, seconds=args.seconds,
                              workers=args.workers, batch_size=args.batch_size,
                              clip_len=args.clip_len, peers=peers, config=args.config)
    elif args.bench == "train":
        from pipeline.apps.bench.train import bench_train
        result = bench_train(args.data, args.config, args.set, steps=args.steps, warmup=args.warmup,
                             precisions=tuple(args.precisions.split(",")))
    elif args.bench == "video":
        from pipeline.apps.bench.video import bench_video
        result = bench_video(args.checkpoint, sweeps=args.sweeps, frames=args.frames,
                             size=args.size, batch=args.batch, device=args.device)
    elif args.bench == "gpu":
        from pipeline.apps.bench.gpu import bench_gpu
        result = bench_gpu(args.json, args.log, dry_run=args.dry_run, seconds=args.seconds,
                           workdir=args.workdir)
        failed = result["failed"]
        print(f"wrote {args.json}: {len(result['steps'])} steps, "
              f"{'failed: ' + ', '.join(failed) if failed else 'none failed'}")
        return 0
    elif args.bench == "step":
        from pipeline.apps.bench.step import bench_step
        result = bench_step(arch=args.arch, image_size=args.image_size, batch=args.batch,
                            clip_len=args.clip_len, threads=args.threads, steps=args.steps)
    elif args.bench == "import":
        from pipeline.apps.bench.importing import bench_import
        result = bench_import(frames=args.frames, repeats=args.repeats, workdir=args.workdir,
                              loop_frames=args.loop_frames, end_to_end=not args.no_end_to_end,
                              sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()))
    else:
        from pipeline.apps.bench.build import bench_build
        result = bench_build(frames=args.frames, repeats=args.repeats, workdir=args.workdir)
    write_json_result(result, args.json)
    return 0


COMMANDS = {"experiment": cmd_experiment, "demo": cmd_demo, "bench": cmd_bench}
