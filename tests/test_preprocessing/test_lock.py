"""One writer per dataset folder, and nothing left behind by a killed build (real processes)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factories import process_running, write_frames
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from preprocessing.lock import LOCK_FILE, FolderLocked, folder_lock
from preprocessing.verify import verify

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc, flock")

STALLED = Path(__file__).with_name("stalled_build.py")
# The options stalled_build.py builds with.
OPTS = BuildOptions(image_size=64, shard_size_mb=0.01, val_fraction=0.0, test_fraction=0.0)
CLI = [sys.executable, "-m", "pipeline.cli", "build", "--image-size", "64", "--shard-size-mb",
       "0.01", "--val-fraction", "0", "--test-fraction", "0", "--quiet"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the stalled build exited early ({proc.returncode})"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _stalled(tmp_path, csv, out, workers):
    signals = tmp_path / "signals"
    signals.mkdir()
    proc = subprocess.Popen([sys.executable, str(STALLED), str(csv), str(out), str(workers),
                             str(signals)])
    _wait_for(signals / "ready", proc)
    pids = [int(p) for p in (signals / "ready").read_text().split()]
    return proc, signals, pids


def test_second_build_is_refused_while_the_first_runs(tmp_path):
    csv = write_frames(tmp_path / "src", patients=4, videos=2, frames=6)
    out = tmp_path / "ds"
    first, signals, pids = _stalled(tmp_path, csv, out, workers=1)
    try:
        for extra in ([], ["--overwrite"]):
            second = subprocess.run(CLI + ["--csv", str(csv), "--out", str(out)] + extra,
                                    capture_output=True, text=True)
            assert second.returncode == 2, second.stderr
            assert str(out) in second.stderr
            assert "another sonostream build or import" in second.stderr
            assert f"pid {pids[0]}" in second.stderr and "another --out" in second.stderr
        (signals / "go").touch()
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
        first.wait()
    assert verify(str(out)) == []
    assert pq.read_metadata(out / fmt.INDEX_FILE).num_rows == 4 * 2 * 6
    assert not (out / LOCK_FILE).exists()


def test_kill9_of_a_build_leaves_no_process_and_no_lock(tmp_path):
    csv = write_frames(tmp_path / "src", patients=4, videos=2, frames=6)
    out = tmp_path / "ds"
    proc, _, pids = _stalled(tmp_path, csv, out, workers=2)
    assert len(pids) >= 4, f"expected build, forkserver, tracker and workers: {pids}"
    os.kill(pids[0], signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while any(map(process_running, pids[1:])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids[1:] if process_running(p)], "processes of the killed build still run"
    # The kernel dropped the lock with the process; the temp file of a write the kill cut short
    # is removed by the next build (which resumes).
    leftover = out / f".{fmt.INDEX_FILE}.tmp-abc123"
    leftover.write_bytes(b"half an index")
    result = build(str(csv), str(out), OPTS, workers=1, progress=False)
    assert result.frames == 4 * 2 * 6 and not leftover.exists()
    assert verify(str(out)) == []


def test_leftovers_go_even_when_the_dataset_is_finished(tmp_path):
    csv = write_frames(tmp_path / "src", patients=2, videos=1, frames=3)
    build(str(csv), str(tmp_path / "ds"), OPTS, workers=1, progress=False)
    leftover = tmp_path / "ds" / f".{fmt.INDEX_FILE}.tmp-abc123"
    leftover.write_bytes(b"half an index")
    assert build(str(csv), str(tmp_path / "ds"), OPTS, workers=1, progress=False).up_to_date
    assert not leftover.exists()


def test_an_import_is_refused_while_a_build_holds_the_folder(tmp_path):
    from preprocessing.importers.hc18 import import_hc18
    from test_preprocessing.importers.importer_helpers import make_hc18
    root = make_hc18(tmp_path / "hc18")
    out = tmp_path / "imp"
    with folder_lock(out, "build"):
        refused = rf"{out}.*\(build, pid {os.getpid()}\).*another --out"
        with pytest.raises(FolderLocked, match=refused):
            import_hc18(str(root), str(out), progress=False)
        assert not (out / "frames.csv").exists()
    import_hc18(str(root), str(out), progress=False)
    assert (out / "frames.csv").exists() and not (out / LOCK_FILE).exists()
