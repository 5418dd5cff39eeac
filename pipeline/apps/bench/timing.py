"""Fixed-duration timing for the loader benchmarks: every arm runs for the seconds it is asked.

An arm's epoch can be shorter than the run (20k frames are one epoch of ~3 s at 7k frames/s),
so :func:`timed` starts a new epoch whenever one ends, until ``seconds`` have passed after the
untimed warm-up, and counts the frames delivered in that time. Epoch restarts (a new clip plan,
worker start-up where a loader restarts its workers) fall inside the timed window: a training
run pays them too.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

from preprocessing.format import SonostreamError


class Timing(float):
    """Frames per second (the float value) with what it was computed from: ``frames`` delivered
    in ``seconds`` of timed run, over ``epochs`` epochs started (1 = the run ended inside the
    first). A float so that callers that only want frames/s keep working."""

    frames: int
    seconds: float
    epochs: int

    def __new__(cls, frames: int, seconds: float, epochs: int = 1):
        self = super().__new__(cls, frames / seconds if seconds > 0 else 0.0)
        self.frames, self.seconds, self.epochs = int(frames), float(seconds), int(epochs)
        return self

    @property
    def fps(self) -> float:
        return float(self)

    def record(self) -> dict:
        return {"frames": self.frames, "seconds": round(self.seconds, 3), "epochs": self.epochs}


def timed(epoch: Callable[[], Iterable], frames_of: Callable[[object], int], seconds: float,
          warmup: int = 2, name: str = "arm") -> Timing:
    """Iterate ``epoch()`` (a fresh iterable per call), one epoch after another, for ``seconds``.

    The first ``warmup`` items are not timed; the clock starts when item ``warmup`` arrives (that
    item is not counted: it was produced before the clock started) and stops at the first item
    that arrives once ``seconds`` have passed (counted), so the timed seconds are >= ``seconds``."""
    if seconds <= 0:
        raise SonostreamError(f"{name}: seconds must be > 0 (got {seconds}); pass e.g. --seconds 8")
    i, n, epochs, t0 = 0, 0, 0, None
    while True:
        epochs += 1
        it = iter(epoch())
        got = False
        try:
            for item in it:
                got = True
                if t0 is None:
                    if i == warmup:
                        t0 = time.perf_counter()
                    i += 1
                    continue
                n += frames_of(item)
                elapsed = time.perf_counter() - t0
                if elapsed >= seconds:
                    return Timing(n, elapsed, epochs)
        finally:
            close = getattr(it, "close", None)
            if close is not None:   # a generator left mid-epoch: stop its threads now
                close()
        if not got:
            raise SonostreamError(f"{name}: an epoch delivered nothing; the dataset holds no "
                                  "complete batch for these settings (use a larger --sizes or a "
                                  "smaller --batch-size / --clip-len)")
