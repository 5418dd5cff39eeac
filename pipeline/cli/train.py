"""``sonostream pretrain`` / ``finetune`` and their ``python -m pipeline.pretrain|finetune`` twins
(what ``accelerate launch`` and Slurm run): one set of flags, described once per job."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .common import add_log_level, choose_log_level, guarded, setup_logging

PRETRAIN_EXAMPLES = """\
examples:
  sonostream pretrain --config launch/configs/debug/pretrain.yaml --data runs/demo/shards --out runs/pt
  accelerate launch --num_processes 8 -m pipeline.pretrain --config launch/configs/pretrain.yaml \\
      --data /data/shards --out runs/pt
  accelerate launch --config_file launch/accelerate/deepspeed_zero2.yaml -m pipeline.pretrain ...
  ... --resume latest                      # continue RUN from its newest checkpoint
  ... --set train.steps=2000 --set optim.lr_encoder=5e-4

The config (YAML) is the one source of hyperparameters: train.batch_size is the number of clips
per step over ALL processes (each takes batch_size / world size), train.precision sets bf16/fp16,
and DeepSpeed's "auto" values are filled from it. The run folder gets config.yaml (valid as
--config to repeat the run), provenance.json (code commit, package versions, argv, data and its
manifest sha256, devices), metrics.jsonl, sonostream/ (TensorBoard: train.tracker_project),
figures/, curves.png, checkpoints/step-N/ (+ latest) and encoder.pt. stderr gets one metrics
line per train.log_every steps (a progress bar too on a terminal, unless --quiet).
SIGTERM or SIGUSR1 (Slurm: #SBATCH --signal=USR1@120) saves a checkpoint and exits cleanly.
Exit status: 0 done, 2 bad input (before any training), 1 the run failed.
"""

FINETUNE_EXAMPLES = """\
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
gets config.yaml, provenance.json, metrics.jsonl, sonostream/ (TensorBoard), curves.png,
checkpoints/step-N/ (+ latest) and segmenter.pt, which `sonostream evaluate` takes. When the
run completes, its quality floor (below it a measurement is uncertain: no HC) is calibrated on
the val split and stored in segmenter.pt (see `sonostream calibrate-quality --help`).
Exit status: 0 done, 2 bad input (before any training), 1 the run failed.
"""


@dataclass(frozen=True)
class Job:
    """How one training job is described on the command line."""
    name: str
    help: str
    description: str
    module_description: str
    examples: str
    config_help: str
    out_help: str


JOBS = {
    "pretrain": Job(
        "pretrain", "pretrain the encoder (MIR + PM + IO) in one process; see accelerate launch",
        "Pretrain an ultrasound image encoder on masked image reconstruction, patient matching and "
        "image ordering at once. One process here; for several GPUs or nodes run `accelerate "
        "launch ... -m pipeline.pretrain` with the same flags.",
        "Pretrain an ultrasound image encoder on masked image reconstruction, patient matching and "
        "image ordering at once, with Accelerate (DDP, multi-node) or DeepSpeed.",
        PRETRAIN_EXAMPLES, "run config YAML (launch/configs/pretrain.yaml; default: built-in defaults)",
        "run folder (checkpoints, metrics, figures, encoder.pt)"),
    "finetune": Job(
        "finetune", "fine-tune fetal head segmentation (supervised | semi | multitask)",
        "Fine-tune a UNet (segmentation-models-pytorch) whose encoder starts from a pretrained "
        "encoder.pt (or from scratch). One process here; for several GPUs or nodes run "
        "`accelerate launch ... -m pipeline.finetune` with the same flags.",
        "Fine-tune fetal head segmentation: a UNet (segmentation-models-pytorch) on the pretrained "
        "encoder, supervised, semi-supervised (mean teacher) or multi-task (+ plane).",
        FINETUNE_EXAMPLES, "run config YAML (launch/configs/finetune.yaml; default: built-in defaults)",
        "run folder (checkpoints, metrics, segmenter.pt)"),
}


def add_arguments(p: argparse.ArgumentParser, job: Job) -> argparse.ArgumentParser:
    p.add_argument("--config", help=job.config_help)
    p.add_argument("--data", required=True, help="dataset folder or URL written by `sonostream build`")
    p.add_argument("--out", required=True, help=job.out_help)
    p.add_argument("--max-steps", type=int, help="optimizer steps of the run (overrides train.steps, "
                   "and with it the LR schedule's length)")
    p.add_argument("--stop-after", type=int, metavar="N", help="end this invocation after step N with "
                   "a checkpoint, keeping the full run's schedule (for jobs in time-limited pieces)")
    p.add_argument("--resume", metavar="latest|RUN|CKPT", help="continue from the newest checkpoint "
                   "of --out ('latest'), of another RUN folder, or from a checkpoints/step-N folder")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set train.precision=no")
    p.add_argument("--cache-dir", help="cache for remote shards (default ~/.cache/sonostream)")
    p.add_argument("--shard-url", help="shard URL template with {shard}, e.g. "
                   "'pipe:aws s3 cp s3://b/ds/shards/{shard} -'")
    p.add_argument("--quiet", action="store_true", help="no progress bar; the metrics lines (one "
                   "per train.log_every steps: step, losses, lr, images/s, ETA) are still logged")
    add_log_level(p)
    if job.name == "finetune":
        p.add_argument("--mode", choices=["supervised", "semi", "multitask"],
                       help="training mode (overrides task.mode; default supervised)")
        p.add_argument("--init", metavar="ENCODER.pt|none", help="start the UNet's encoder from this "
                       "pretrained encoder.pt, or 'none' for random init (overrides task.init; "
                       "default none)")
        p.add_argument("--label-fraction", type=float, metavar="F", help="use the masks of this "
                       "share of the split's patients, 0 < F <= 1 (overrides data.label_fraction; "
                       "default 1)")
    return p


def add_parsers(sub) -> None:
    for job in JOBS.values():
        add_arguments(sub.add_parser(job.name, help=job.help, description=job.description,
                                     epilog=job.examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter), job)


def run(args) -> int:
    """Train the job ``args.command`` names (pretrain | finetune)."""
    setup_logging()
    common = dict(resume=args.resume, stop_after=args.stop_after, cache_dir=args.cache_dir,
                  shard_url=args.shard_url, quiet=args.quiet)
    if args.command == "pretrain":
        from pipeline.train.pretraining import load_pretrain_config, train
        summary = train(load_pretrain_config(args.config, args.set, args.max_steps), args.data,
                        args.out, **common)
    else:
        from pipeline.train.finetuning import load_finetune_config, train
        cfg = load_finetune_config(args.config, args.set, mode=args.mode, init=args.init,
                                   label_fraction=args.label_fraction, max_steps=args.max_steps)
        summary = train(cfg, args.data, args.out, **common)
        from pipeline.eval.quality import calibrate_finished_run, describe_calibration
        cal = calibrate_finished_run(summary, args.data, args.cache_dir, args.shard_url)
        if cal is not None:
            print(describe_calibration(cal), flush=True)
    return 130 if summary.get("signal") == "SIGINT" else 0   # Ctrl-C: checkpointed, then 130


def module_main(name: str, argv=None) -> int:
    """``python -m pipeline.<name>``: the same flags as ``sonostream <name>``."""
    job = JOBS[name]
    p = add_arguments(argparse.ArgumentParser(
        prog=f"python -m pipeline.{name}", description=job.module_description, epilog=job.examples,
        formatter_class=argparse.RawDescriptionHelpFormatter), job)
    args = p.parse_args(argv)
    args.command = name
    choose_log_level(getattr(args, "log_level", None))
    return guarded(run, args)


COMMANDS = {"pretrain": run, "finetune": run}
