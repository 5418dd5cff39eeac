"""The segmentation commands of ``sonostream``: finetune, evaluate, experiment label-efficiency.

Argument parsing only (no torch at import, so ``sonostream --help`` stays fast).
"""
from __future__ import annotations

import argparse

EVALUATE_EPILOG = """\
writes E/metrics.json (dice, iou, hd95_mm, hc_mae_mm, plane_accuracy and counts), E/per_image.csv,
E/hc18.csv (filename,center_x_mm,center_y_mm,semi_axes_a_mm,semi_axes_b_mm,angle_rad; centre in
the source frame's mm, before any letterboxing) and E/overlays/{best,worst}.png.
Dice/IoU/HD95 average the frames whose true mask shows a head; frames without one are scored in
dice_all and empty_false_positive_rate. HC needs a pixel size: without one it is null, never 0.
"""

EXPERIMENT_EPILOG = """\
example (the small CPU setting `make demo` runs):
  sonostream experiment label-efficiency --data runs/demo/shards --out runs/demo/label_efficiency \\
      --encoder runs/demo/pretrain/encoder.pt --config launch/configs/debug/finetune.yaml

Every (init, mode, fraction) run is trained with the same config and seed, then evaluated on
--split. Re-running skips finished runs and resumes unfinished ones.
"""


def add_parsers(sub) -> None:
    from pipeline.finetune import EXAMPLES, add_arguments
    add_arguments(sub.add_parser(
        "finetune", help="fine-tune fetal head segmentation (supervised | semi | multitask)",
        description="Fine-tune a UNet (segmentation-models-pytorch) whose encoder starts from a "
        "pretrained encoder.pt (or from scratch). One process here; for several GPUs or nodes "
        "run `accelerate launch ... -m pipeline.finetune` with the same flags.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter))

    e = sub.add_parser("evaluate", help="score a segmenter on a split: Dice, IoU, HD95, HC error, HC18 CSV",
                       description="Segment every frame of a split with a segmenter.pt and score "
                       "it against the masks, HC and plane labels the dataset has.",
                       epilog=EVALUATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="segmenter.pt written by `sonostream finetune`")
    e.add_argument("--data", required=True, help="dataset folder or URL written by `sonostream build`")
    e.add_argument("--split", default="test", help="split to score: train | val | test (default test)")
    e.add_argument("--out", required=True, help="folder for metrics.json, per_image.csv, hc18.csv, overlays/")
    e.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (default 16)")
    e.add_argument("--overlays", type=int, default=8, help="best and worst frames drawn (default 8; 0: none)")
    e.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    x = sub.add_parser("experiment", help="experiments that train and evaluate many runs")
    xsub = x.add_subparsers(dest="experiment", required=True, metavar="WHICH")
    le = xsub.add_parser("label-efficiency", help="scratch vs pretrained x 3 modes x label fractions",
                         description="Train and evaluate every (encoder init, mode, label fraction) "
                         "and write E/results.md, E/results.csv and E/label_efficiency.png.",
                         epilog=EXPERIMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    le.add_argument("--data", required=True, help="dataset folder written by `sonostream build`")
    le.add_argument("--out", required=True, help="experiment folder")
    le.add_argument("--encoder", help="pretrained encoder.pt (needed by the pretrained arm)")
    le.add_argument("--config", help="fine-tuning config YAML shared by every run "
                    "(default: built-in defaults; launch/configs/debug/finetune.yaml for CPUs)")
    le.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override one config value in every run (repeatable)")
    le.add_argument("--fractions", default="0.05,0.1,0.25,1", help="label fractions (default 0.05,0.1,0.25,1)")
    le.add_argument("--modes", default="supervised,semi,multitask", help="modes (default: all three)")
    le.add_argument("--inits", default="scratch,pretrained", help="encoder inits (default scratch,pretrained)")
    le.add_argument("--split", default="test", help="split scored (default test)")
    le.add_argument("--max-steps", type=int, help="steps per run (overrides train.steps)")
    le.add_argument("--verbose", action="store_true", help="progress bars and metrics of every run")


def cmd_finetune(args) -> int:
    from pipeline.finetune import run
    return run(args)


def cmd_evaluate(args) -> int:
    from pipeline.eval.evaluate import evaluate
    m = evaluate(args.checkpoint, args.data, args.split, args.out, batch_size=args.batch_size,
                 overlays=args.overlays, device=args.device, quiet=args.quiet)
    show = lambda v, d=3: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"{args.split}: {m['frames']} frames ({m['head_frames']} with a head) | Dice "
          f"{show(m['dice'])} | IoU {show(m['iou'])} | HD95 {show(m['hd95_mm'], 2)} mm | HC MAE "
          f"{show(m['hc_mae_mm'], 2)} mm ({m['hc_missed']} missed) | plane accuracy "
          f"{show(m['plane_accuracy'])}\nwrote {args.out}/metrics.json, per_image.csv, hc18.csv, overlays/")
    return 0


def cmd_experiment(args) -> int:
    from pipeline.experiment import label_efficiency
    from pipeline.pretrain import quiet_logs
    quiet_logs()
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    label_efficiency(args.data, args.out, encoder=args.encoder, config=args.config,
                     overrides=args.set, fractions=[float(f) for f in split(args.fractions)],
                     modes=split(args.modes), inits=split(args.inits), split=args.split,
                     max_steps=args.max_steps, quiet=not args.verbose)
    print(f"wrote {args.out}/results.md, results.csv, label_efficiency.png")
    return 0


COMMANDS = {"finetune": cmd_finetune, "evaluate": cmd_evaluate, "experiment": cmd_experiment}
