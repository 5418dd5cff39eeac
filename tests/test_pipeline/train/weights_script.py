"""Run under `accelerate launch`: ``pipeline.pretrain`` with ARGS, and every rank prints a
checksum of its weights after training (``weights rank R: X``): DDP replicas must agree."""
import sys

import pipeline.train.job as job
from pipeline.pretrain import main

_fit = job.fit


def fit(acc, *args, **kwargs):
    end = _fit(acc, *args, **kwargs)
    total = sum(float(p.detach().double().sum()) for p in end["model"].parameters())
    # one write of the whole line: two ranks' print()s (text, then newline) can interleave
    sys.stdout.write(f"weights rank {acc.process_index}: {total!r}\n")
    sys.stdout.flush()
    return end


job.fit = fit
sys.exit(main(sys.argv[1:]))
