"""Entry point: ``accelerate launch -m pipeline.pretrain --config FILE --data DIR --out RUN``.

Only parses, builds the config and calls :func:`pipeline.train.pretrain.train`.
``sonostream pretrain`` takes the same flags (one process).
"""
from __future__ import annotations

import argparse
import logging
import sys

EXAMPLES = """\
examples:
  sonostream pretrain --config launch/configs/debug/pretrain.yaml --data runs/demo/shards --out runs/pt
  accelerate launch --num_processes 8 -m pipeline.pretrain --config launch/configs/pretrain.yaml \\
      --data /data/shards --out runs/pt
  accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml -m pipeline.pretrain ...
  ... --resume latest                      # continue RUN from its newest checkpoint
  ... --set train.steps=2000 --set optim.lr_encoder=5e-4

The config (YAML) is the one source of hyperparameters: train.batch_size is the number of clips
per step over ALL processes (each takes batch_size / world size), train.precision sets bf16/fp16,
and DeepSpeed's "auto" values are filled from it. The run folder gets config.yaml, metrics.jsonl,
tb/ (TensorBoard), figures/, curves.png, checkpoints/step-N/ (+ latest) and encoder.pt.
SIGTERM or SIGUSR1 (Slurm: #SBATCH --signal=USR1@120) saves a checkpoint and exits cleanly.
"""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", help="run config YAML (launch/configs/pretrain.yaml; default: built-in defaults)")
    p.add_argument("--data", required=True, help="dataset folder or URL written by `sonostream build`")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics, figures, encoder.pt)")
    p.add_argument("--max-steps", type=int, help="optimizer steps of the run (overrides train.steps, "
                   "and with it the LR schedule's length)")
    p.add_argument("--stop-after", type=int, metavar="N", help="end this invocation after step N with "
                   "a checkpoint, keeping the full run's schedule (for jobs in time-limited pieces)")
    p.add_argument("--resume", metavar="latest|RUN|CKPT", help="continue from the newest checkpoint "
                   "of --out ('latest'), of another RUN folder, or from a checkpoints/step-N folder")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.precision=no")
    p.add_argument("--cache-dir", help="cache for remote shards (default ~/.cache/sonostream)")
    p.add_argument("--shard-url", help="shard URL template with {shard}, e.g. 'pipe:aws s3 cp s3://b/ds/shards/{shard} -'")
    p.add_argument("--quiet", action="store_true", help="no progress bar or console metrics")
    return p


def parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog="python -m pipeline.pretrain", epilog=EXAMPLES,
        description="Pretrain an ultrasound image encoder on masked image reconstruction, patient "
        "matching and image ordering at once, with Accelerate (DDP, multi-node) or DeepSpeed.",
        formatter_class=argparse.RawDescriptionHelpFormatter))


def quiet_logs() -> None:
    """Our INFO lines; only warnings from the libraries around us."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate", "DeepSpeed", "matplotlib", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args) -> int:
    from pipeline.train.pretrain import load_pretrain_config, train
    return run_job(lambda: train(load_pretrain_config(args.config, args.set, args.max_steps),
                                 args.data, args.out, resume=args.resume, stop_after=args.stop_after,
                                 cache_dir=args.cache_dir, shard_url=args.shard_url, quiet=args.quiet))


def run_job(job) -> int:
    """Run a training job: exit status 2 for bad input (ValueError), 1 when training fails."""
    from pipeline.train.loop import TrainingError
    quiet_logs()
    try:
        job()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
