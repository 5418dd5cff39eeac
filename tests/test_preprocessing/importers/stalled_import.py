"""A real `sonostream import` that stalls part-way, for tests of kill -9 and concurrent writers.

    python stalled_import.py N SIGNALS -- IMPORT ARGS...

The import (``pipeline.cli`` with ``import ARGS``) runs normally until the main process is about
to journal its N-th input, whose files are already moved into place; then it writes
``SIGNALS/ready`` (its pid and those of its descendants: forkserver, resource tracker, workers)
and waits until ``SIGNALS/go`` exists, then finishes. The test kills it, or lets it go.
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stalled_build import descendants  # noqa: E402

from preprocessing.importers.journal import ImportState  # noqa: E402


def main(n: int, signals: str, argv: list[str]) -> int:
    signals_dir = Path(signals)
    real, calls = ImportState.append, []

    def append(self, record):
        calls.append(record["item"])
        if len(calls) == n:
            pids = [os.getpid(), *descendants(os.getpid())]
            (signals_dir / "ready.tmp").write_text(" ".join(map(str, pids)))
            os.replace(signals_dir / "ready.tmp", signals_dir / "ready")
            while not (signals_dir / "go").exists():
                time.sleep(0.05)
        return real(self, record)

    ImportState.append = append
    from pipeline.cli import main as cli
    return cli(["import", *argv])


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[4:]))
