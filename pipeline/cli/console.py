"""Assembles the ``sonostream`` parser from the command groups and runs one command."""
from __future__ import annotations

import argparse
import os
import sys

from preprocessing import cli as data_cli

from . import apps, export, loader, segment, train
from .common import add_log_level, choose_log_level, guarded, setup_logging

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
  sonostream probe --encoder runs/pt/encoder.pt --data data/shards   # what the encoder learnt
  sonostream segment-video --checkpoint runs/ft/segmenter.pt --input cine.dcm --out runs/sv
  sonostream export --checkpoint runs/ft/segmenter.pt --format onnx --out export/segmenter.onnx
  sonostream demo --out runs/demo                   # all of it on the synthetic cohort -> report.md

The frames CSV needs frame_path, patient_id, video_name, frame_id; optional columns are
mask_path, plane, pixel_size_mm, hc_mm, ellipse_cx/cy/a/b/angle, is_standard_plane; any other
column is carried into the index as text. Paths are relative to the CSV's folder.
Progress and metrics go to stderr through logging (--log-level): a bar on a terminal, plain
lines elsewhere (SONOSTREAM_PROGRESS=bar|lines overrides); --quiet hides bars, not metrics.
Exit status: 0 done, 2 bad input (the message says what to fix), 1 the work failed.
"""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("sonostream")
    except PackageNotFoundError:   # run from a source tree that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sonostream", description="Ultrasound frames to streaming shards, and what trains on them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"sonostream {version()}")
    add_log_level(p, default=None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.add_parsers(sub)
    loader.add_parsers(sub)
    train.add_parsers(sub)
    segment.add_parsers(sub)
    apps.add_parsers(sub)
    export.add_parsers(sub)
    return p


COMMANDS = {**{name: data_cli.run for name in data_cli.COMMANDS}, **loader.COMMANDS,
            **train.COMMANDS, **segment.COMMANDS, **apps.COMMANDS, **export.COMMANDS}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        choose_log_level(args.log_level)
        setup_logging()
        status = guarded(COMMANDS[args.command], args)
        sys.stdout.flush()   # a closed pipe shows here, not in a traceback at interpreter exit
        return status
    except BrokenPipeError:
        if _stdout_is_open():
            raise   # a broken pipe of something else (a socket, a child) is a real error
        # `sonostream ... | head`: the reader went away; stop quietly like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141   # 128 + SIGPIPE, what a shell reports for a command killed by it


def _stdout_is_open() -> bool:
    """False when stdout is a pipe whose reader has gone (poll reports POLLERR on its write end)."""
    try:
        import select
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return not any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):   # no poll (not POSIX) or no real stdout
        return True


if __name__ == "__main__":
    sys.exit(main())
