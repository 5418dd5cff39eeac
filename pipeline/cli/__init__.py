"""The ``sonostream`` console script: the top of the project (nothing imports it).

Each command parses its flags and calls one function of the layer that does the work:

    data       synth, build, verify, inspect, import     preprocessing.cli (torch-free)
    loader     stream clip batches, report frames/s      cli.loader -> pipeline.data
    training   pretrain, finetune                        cli.train -> pipeline.train
    results    evaluate, segment-video,                  cli.segment -> pipeline.eval
               calibrate-quality, probe
    apps       experiment, demo, bench                   cli.apps -> pipeline.apps

Parsing imports nothing heavy, so ``sonostream --help`` stays fast and torch-free; a command
imports what it needs when it runs. ``python -m pipeline.pretrain`` / ``-m pipeline.finetune``
(for ``accelerate launch``) take the same flags as ``sonostream pretrain`` / ``finetune``.
"""
from .console import main

__all__ = ["main"]
