"""A real `sonostream build` that stalls after its first video, for tests of concurrent writers.

    python stalled_build.py CSV OUT WORKERS SIGNALS

The build runs normally until the main process is about to write its first video; then it writes
``SIGNALS/ready`` (its pid and the pids of its descendants: forkserver, resource tracker, pool
workers) and waits until ``SIGNALS/go`` exists, then finishes. The test kills it, or lets it go.
"""
import os
import sys
import time
from pathlib import Path

from preprocessing import build as build_mod


def descendants(pid: int) -> list[int]:
    """Pids of every live process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def main(csv_path: str, out: str, workers: int, signals: str) -> None:
    signals_dir = Path(signals)
    real = build_mod._write_video
    stalled = []

    def write_video(*args, **kwargs):
        if not stalled:
            stalled.append(True)
            pids = [os.getpid(), *descendants(os.getpid())]
            (signals_dir / "ready.tmp").write_text(" ".join(map(str, pids)))
            os.replace(signals_dir / "ready.tmp", signals_dir / "ready")
            while not (signals_dir / "go").exists():
                time.sleep(0.05)
        return real(*args, **kwargs)

    build_mod._write_video = write_video
    opts = build_mod.BuildOptions(image_size=64, shard_size_mb=0.01, val_fraction=0.0,
                                  test_fraction=0.0)
    build_mod.build(csv_path, out, opts, workers=workers, progress=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
