"""Entry point: ``accelerate launch -m pipeline.finetune --config FILE --data DIR --out RUN --mode M``.

Only parses, builds the config and calls :func:`pipeline.train.finetune.train`.
``sonostream finetune`` takes the same flags (one process).
"""
from __future__ import annotations

import argparse
import sys

EXAMPLES = """\
examples:
  sonostream finetune --config launch/configs/debug/finetune.yaml --data runs/demo/shards \\
      --out runs/ft --mode semi --init runs/demo/pretrain/encoder.pt --label-fraction 0.1
  accelerate launch --num_processes 8 -m pipeline.finetune --config launch/configs/finetune.yaml \\
      --data /data/shards --out runs/ft --mode multitask --init runs/pt/encoder.pt
  ... --resume latest                      # continue RUN from its newest checkpoint
  ... --set train.steps=2000 --set semi.alpha=0.5

Modes: supervised (Dice + BCE on labelled frames), semi (+ alpha x mean-teacher consistency on
the split's other frames, alpha ramped up), multitask (+ beta x plane cross-entropy). The label
fraction is chosen per patient (nested: the 5% patients are among the 10% ones). The run folder
gets config.yaml, metrics.jsonl, tb/, curves.png, checkpoints/step-N/ (+ latest) and
segmenter.pt, which `sonostream evaluate` takes.
"""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from pipeline.pretrain import add_arguments as add_common
    add_common(p)
    for action in p._actions:   # same flags as pretraining, with the fine-tuning wording
        if action.dest == "config":
            action.help = "run config YAML (launch/configs/finetune.yaml; default: built-in defaults)"
        elif action.dest == "out":
            action.help = "run folder (checkpoints, metrics, segmenter.pt)"
    p.add_argument("--mode", choices=["supervised", "semi", "multitask"],
                   help="training mode (overrides task.mode; default supervised)")
    p.add_argument("--init", metavar="ENCODER.pt|none", help="start the UNet's encoder from this "
                   "pretrained encoder.pt, or 'none' for random init (overrides task.init; default none)")
    p.add_argument("--label-fraction", type=float, metavar="F", help="use the masks of this share "
                   "of the split's patients, 0 < F <= 1 (overrides data.label_fraction; default 1)")
    return p


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="python -m pipeline.finetune", epilog=EXAMPLES,
        description="Fine-tune fetal head segmentation: a UNet (segmentation-models-pytorch) on the "
        "pretrained encoder, supervised, semi-supervised (mean teacher) or multi-task (+ plane).",
        formatter_class=argparse.RawDescriptionHelpFormatter))


def run(args) -> int:
    from pipeline.pretrain import run_job
    from pipeline.train.finetune import load_finetune_config, train

    def job():
        cfg = load_finetune_config(args.config, args.set, mode=args.mode, init=args.init,
                                   label_fraction=args.label_fraction, max_steps=args.max_steps)
        train(cfg, args.data, args.out, resume=args.resume, stop_after=args.stop_after,
              cache_dir=args.cache_dir, shard_url=args.shard_url, quiet=args.quiet)
    return run_job(job)


def main(argv=None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
