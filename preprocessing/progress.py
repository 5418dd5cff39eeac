"""Progress of long commands: a tqdm bar on a terminal, plain log lines anywhere else.

A bar redraws itself with ``\\r``, which a terminal shows in place and a log file (Slurm's
``%x-%j.out``, ``> log 2>&1``, CI) keeps as one ever-growing line. So bars are drawn only when
stderr is a terminal; elsewhere :class:`LineProgress` logs one INFO line every ``LINES``-th of
the work. ``SONOSTREAM_PROGRESS=bar`` forces bars, ``=lines`` forces lines (``auto``: default).
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

ENV = "SONOSTREAM_PROGRESS"
LINES = 20   # a non-terminal gets about this many progress lines per command (every 5 %)


def bars_wanted(stream=None) -> bool:
    """True when progress should be a redrawn bar: ``SONOSTREAM_PROGRESS``, else stderr is a TTY."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode == "bar":
        return True
    if mode == "lines":
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):   # no isatty, or a closed stream
        return False


def eta_text(seconds: float | None) -> str:
    """``H:MM:SS`` (``?`` while unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LineProgress:
    """The part of tqdm's interface the commands use (``update``, ``close``, ``set_postfix``,
    ``write``), as INFO lines of logger ``sonostream.<desc>`` (``INFO sonostream.build: 500/10000
    frames (5 %), 812 frames/s, ETA 0:00:11``), every ``total / LINES`` units and at the end."""

    disable = False

    def __init__(self, total: int, desc: str, unit: str = "it", initial: int = 0,
                 lines: int = LINES):
        self.total, self.desc, self.unit, self.n = int(total), desc, unit, int(initial)
        self.lines = max(lines, 1)
        self.start, self.every = initial, max(1, math.ceil(self.total / self.lines))
        self.next = (self.n // self.every + 1) * self.every
        self.log = logging.getLogger(f"sonostream.{desc}")
        self.t0, self.logged_at, self.postfix = time.perf_counter(), None, ""

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self.next or self.n >= self.total:
            self._line()
            self.next = (self.n // self.every + 1) * self.every

    def set_total(self, total: int) -> None:
        """A new total (an estimate that improves as the work goes): lines stay about every
        ``1/lines`` of it."""
        self.total = int(total)
        self.every = max(1, math.ceil(self.total / self.lines))
        self.next = (self.n // self.every + 1) * self.every

    def set_postfix(self, **kw) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def write(self, text: str) -> None:
        self.log.info(text)

    def close(self) -> None:
        if self.logged_at != self.n and self.n > self.start:
            self._line()

    def _line(self) -> None:
        dt = time.perf_counter() - self.t0
        rate = (self.n - self.start) / dt if dt > 0 else None
        left = (self.total - self.n) / rate if rate else None
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        self.log.info("%d/%d %ss%s, %s %ss/s, ETA %s%s", self.n, self.total, self.unit, pct,
                      f"{rate:.0f}" if rate else "?", self.unit, eta_text(left),
                      f", {self.postfix}" if self.postfix else "")
        self.logged_at = self.n


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0):
    """A tqdm bar where bars belong (:func:`bars_wanted`), else :class:`LineProgress`; with
    ``enabled`` False (``--quiet``) a disabled bar: nothing at all."""
    if enabled and not bars_wanted():
        return LineProgress(total, desc, unit, initial)
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled,
                dynamic_ncols=True)
