"""Progress of long commands: a bar on a terminal, plain log lines in a file, nothing if quiet."""
import io
import logging
import os
import re
import subprocess
import sys

import pytest
from tqdm import tqdm

from preprocessing.progress import ENV, LineProgress, bars_wanted, eta_text, progress_bar

from factories import ROOT, write_frames

LINE = re.compile(r"INFO sonostream\.build: (\d+)/(\d+) frames \(\d+ %\), \d+ frames/s, "
                  r"ETA \d+:\d\d:\d\d$")


class Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_bars_only_on_a_terminal_unless_forced(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert bars_wanted(Stream(True)) and not bars_wanted(Stream(False))
    monkeypatch.setenv(ENV, "lines")
    assert not bars_wanted(Stream(True))
    monkeypatch.setenv(ENV, "bar")
    assert bars_wanted(Stream(False))
    assert isinstance(progress_bar(10, "x"), tqdm)
    monkeypatch.setenv(ENV, "lines")
    assert isinstance(progress_bar(10, "x"), LineProgress)
    assert progress_bar(10, "x", enabled=False).disable              # --quiet: nothing
    assert eta_text(3725.4) == "1:02:05" and eta_text(None) == "?"


def test_line_progress_logs_every_twentieth_and_the_end(caplog):
    caplog.set_level(logging.INFO, logger="sonostream.work")
    p = LineProgress(103, "work", "item")
    for _ in range(103):
        p.update(1)
    p.close()
    done = [int(r.getMessage().split("/")[0]) for r in caplog.records]
    assert done == [6 * k for k in range(1, 18)] + [103]


def build(csv, out, before=(), after=()):
    """``sonostream [BEFORE] build ... [AFTER]`` with stderr going to a file; that file's text."""
    log = out.with_suffix(".log")
    with open(log, "w") as err:
        subprocess.run([sys.executable, "-m", "pipeline.cli", *before, "build", "--csv", str(csv),
                        "--out", str(out), "--workers", "1", "--image-size", "32", *after],
                       check=True, stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT,
                       env={**{k: v for k, v in os.environ.items() if k != ENV},
                            "PYTHONPATH": str(ROOT)})
    return log.read_bytes().decode()               # (read_text would turn each \r into \n)


@pytest.mark.parametrize("before, after, lines", [((), (), True),
                                                  (("--log-level", "WARNING"), (), False),
                                                  ((), ("--quiet",), False)])
def test_build_logs_plain_progress_lines_into_a_file(tmp_path, before, after, lines):
    csv = write_frames(tmp_path / "src", patients=4, videos=2, frames=3)
    text = build(csv, tmp_path / "ds", before, after)
    assert "\r" not in text                        # no bar redraws in a file
    found = [m.groups() for m in map(LINE.search, text.splitlines()) if m]
    if lines:
        assert found and found[-1] == ("24", "24") and len(found) <= 21
    else:
        assert found == []
