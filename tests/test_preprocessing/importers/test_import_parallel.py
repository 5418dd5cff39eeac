"""Importers in worker processes (--workers: the same bytes for any number), resumed after a crash
(kill -9 of a real import included), refused while another import writes the folder."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from factories import process_running
from importer_helpers import dicom_file, fan_loop, make_hc18, read_rejects, write_video
from preprocessing import cpus
from preprocessing.format import SonostreamError
from preprocessing.importers import parallel
from preprocessing.importers.common import ImportProblem, ImportWriter
from preprocessing.importers.dicom import import_dicom
from preprocessing.importers.hc18 import import_hc18
from preprocessing.importers.journal import STATE_DIR, ImportState
from preprocessing.importers.video import import_video
from preprocessing.lock import LOCK_FILE

STALLED = Path(__file__).with_name("stalled_import.py")


def files(out) -> dict:
    """Every file under ``out`` (its relative path -> its bytes)."""
    out = Path(out)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# --- how many workers by default -------------------------------------------------------------
def test_default_workers_are_the_cpus_this_job_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert cpus.default_workers() == 6               # the affinity mask, not the machine
    for slurm, want in (("2", 2), ("16", 6), (" 3 ", 3), ("0", 6), ("abc", 6), ("", 6)):
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
        assert cpus.default_workers() == want, slurm  # Slurm's share, where it is smaller
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(40)))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert cpus.default_workers() == cpus.MAX_DEFAULT_WORKERS
    monkeypatch.delattr(os, "sched_getaffinity")     # not Linux: the CPU count, and Slurm's
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert cpus.default_workers() == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert cpus.default_workers() == 2


# --- the same bytes for any number of workers ------------------------------------------------
DICOM = ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm", "OBXXXX1A_rle_2frame.dcm", "US1_UNCR.dcm",
         "gdcm-US-ALOKA-16.dcm", "emri_small.dcm")  # the RLE copies claim the first's video


def _dicom_inputs(src) -> list[str]:
    if not src.exists():
        src.mkdir()
        (src / "broken.dcm").write_bytes(b"not a DICOM file")
    return [dicom_file(n) for n in DICOM] + [str(src), str(src / "missing.dcm")]


def _dicom(src, out, workers):
    return import_dicom(_dicom_inputs(src), out, progress=False, workers=workers)


def _video(src, out, workers):
    if not src.exists():
        frames, _ = fan_loop(9, h=60, w=80, seed=2)
        for rel, n in (("x/a.mp4", 9), ("y/a.mp4", 5), ("b.mp4", 6)):  # y/a: a second 'a'
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            write_video(src / rel, frames[:n])
        (src / "bad.mp4").write_bytes(b"not a video")
    return import_video([str(src)], out, progress=False, workers=workers)


def _hc18(src, out, workers):
    if not src.exists():
        make_hc18(src, shape=(90, 120))
    return import_hc18(str(src), out, crop_sector=True, progress=False, workers=workers)


@pytest.mark.parametrize("run", [_dicom, _video, _hc18], ids=["dicom", "video", "hc18"])
def test_one_and_two_workers_write_the_same_bytes(tmp_path, run):
    one = run(tmp_path / "src", tmp_path / "w1", 1)
    two = run(tmp_path / "src", tmp_path / "w2", 2)
    assert one.frames > 0 and one.rejects
    assert files(tmp_path / "w1") == files(tmp_path / "w2")   # PNGs, frames.csv, rejects
    tops = {name.split("/")[0] for name in files(tmp_path / "w2")}   # no staging, no journal
    assert tops - {"masks", "pseudonyms.json"} == {"frames", "frames.csv", "import_rejects.csv"}
    assert (one.inputs, one.frames, one.videos, one.patients, one.crop_methods) == \
        (two.inputs, two.frames, two.videos, two.patients, two.crop_methods)
    assert not (tmp_path / "w2" / STATE_DIR).exists() and not (tmp_path / "w2" / LOCK_FILE).exists()


def fake_file(writer, item, patient, video, frames, fail=None, twice=False, mask=False,
              truncate=False, flaky=None):
    """A stand-in for an importer's per-file function (module level: workers import it)."""
    if flaky and Path(flaky).exists():
        raise ImportProblem(f"{item}: unreadable today")
    if flaky and Path(f"{flaky}.kill").exists():
        os.kill(os.getpid(), signal.SIGKILL)   # the OOM killer takes the worker reading it
    writer.start_video(patient, video, item)
    if twice:
        writer.start_video(patient, video, item)
    for f in range(frames):
        image = np.full((6, 8), (40 * f + ord(item[-1])) % 256, np.uint8)
        writer.add_frame(patient, video, f, image, (image > 50).astype(np.uint8) * 255 if mask
                         else None, note=item, score=0.1 * f, ok=f % 2 == 0, empty=None)
    if truncate:
        writer.flag_truncated(item, f"{item}: cut off")
    if fail == "problem":
        raise ImportProblem(f"{item}: broken after its frames")
    if fail == "bug":
        raise RuntimeError("boom")


SPECS = [("in-a", "p", "v1", 2, {"fail": "problem"}),  # fails after claiming: the claim is void
         ("in-b", "p", "v1", 3, {}),                   # so b keeps p/v1
         ("in-c", "p", "v1", 1, {}),                   # and c is a copy of b
         ("in-d", "p", "v2", 1, {"twice": True}),
         ("in-e", "q", "v", 2, {"fail": "bug"}),
         ("in-f", "q", "v", 2, {"mask": True, "truncate": True}),
         ("in-g", "r", "v", 4, {})]


def fake_import(out, workers=1, specs=SPECS, progress=False, overwrite=False):
    fingerprint = {"source": "fake", "specs": json.loads(json.dumps(specs))}
    with ImportWriter(str(out), "fake", overwrite, fingerprint) as writer:
        writer.reject("in-z", "in-z: no such file or directory")
        tasks = [(item, _fake_file_kw, ((item, p, v, n), kw)) for item, p, v, n, kw in specs]
        parallel.run_items(writer, tasks, workers, progress)
        return writer.finish()


def _fake_file_kw(writer, args, kw):
    fake_file(writer, *args, **kw)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_an_earlier_input_wins_a_claim_whatever_finishes_first(tmp_path, workers):
    result = fake_import(tmp_path / "o", workers)
    reasons = {r["item"]: r["reason"] for r in read_rejects(tmp_path / "o")}
    assert reasons == {
        "in-z": "in-z: no such file or directory", "in-a": "in-a: broken after its frames",
        "in-c": "in-c: patient 'p' video 'v1' was already imported from in-b (a copy of the same "
                "recording?)",
        "in-d": "in-d: patient 'p' video 'v2' was already imported from in-d (a copy of the same "
                "recording?)",
        "in-e": "in-e: unexpected error (RuntimeError: boom)"}
    assert (result.inputs, result.frames, result.videos, result.patients) == (7, 9, 3, 3)
    assert [t["item"] for t in result.truncated] == ["in-f"]
    first = cv2.imread(str(tmp_path / "o/frames/p__v1/000000.png"), cv2.IMREAD_UNCHANGED)
    assert (first == ord("b")).all()                 # in-b's frame, not in-a's or in-c's
    if workers > 1:
        assert files(tmp_path / "o") == files(fake_import(tmp_path / "one", 1).out_dir)
    csv_text = (tmp_path / "o" / "frames.csv").read_text()
    assert csv_text.splitlines()[0] == ("frame_path,patient_id,video_name,frame_id,mask_path,note,"
                                        "score,ok,empty,truncated")
    assert "frames/q__v/000001.png,q,v,1,masks/q__v/000001.png,in-f,0.1,false,,true" in csv_text


# --- resuming after a crash ------------------------------------------------------------------
class Crash(BaseException):
    """Stands for the process dying (nothing catches it)."""


def crash_at(monkeypatch, n: int, where: str) -> None:
    """The import dies at its n-th journal line: before writing it (the input's files already in
    place), half-way through it, or just after it."""
    real, calls = ImportState.append, []

    def append(self, record):
        calls.append(record["item"])
        if len(calls) == n:
            if where == "torn":
                self._file.write(json.dumps(record).encode()[:30])
                self._file.flush()
            if where == "after":
                real(self, record)
            raise Crash()
        real(self, record)
    monkeypatch.setattr(ImportState, "append", append)


@pytest.mark.parametrize("n,where,workers", [(6, "before", 1), (6, "torn", 1), (2, "after", 1),
                                             (6, "before", 2), (1, "before", 2)])
def test_an_interrupted_import_resumes_to_the_same_bytes(tmp_path, monkeypatch, n, where, workers):
    whole = files(fake_import(tmp_path / "whole").out_dir)
    out = tmp_path / "o"
    with monkeypatch.context() as m:
        crash_at(m, n, where)
        with pytest.raises(Crash):
            fake_import(out, workers)
    assert not (out / "frames.csv").exists() and (out / STATE_DIR / "journal.jsonl").exists()
    if where == "before":    # f's frames are in place, not journaled: they must go on resume
        assert n != 6 or (out / "frames/q__v/000000.png").exists()
    read = []
    real = parallel.run_item
    monkeypatch.setattr(parallel, "run_item", lambda stage, src, fn, args:
                        read.append(args[0][0]) or real(stage, src, fn, args))
    result = fake_import(out, 1)
    committed = n if where == "after" else n - 1
    assert read == [s[0] for s in SPECS[committed:]]   # only what was not committed is read
    assert files(out) == whole and result.frames == 9
    assert result.resumed == committed
    assert ("kept from an interrupted run" in result.summary()) == (committed > 0)


def test_the_files_of_an_input_cut_off_mid_commit_are_removed(tmp_path, monkeypatch):
    """The rerun rejects that input this time (a file unreadable on a second read): none of the
    files it had moved into place may stay."""
    flaky = tmp_path / "unreadable"
    specs = [*SPECS[:5], (*SPECS[5][:4], {"mask": True, "flaky": str(flaky)}), SPECS[6]]
    out = tmp_path / "o"
    with monkeypatch.context() as m:
        crash_at(m, 6, "before")
        with pytest.raises(Crash):
            fake_import(out, specs=specs)
    assert (out / "frames/q__v/000001.png").exists() and (out / "masks/q__v/000001.png").exists()
    flaky.touch()
    fake_import(out, specs=specs)
    assert files(out) == files(fake_import(tmp_path / "whole", specs=specs).out_dir)
    assert "in-f: unreadable today" in (out / "import_rejects.csv").read_text()


def test_a_killed_worker_names_the_inputs_and_the_rerun_continues(tmp_path):
    flaky = tmp_path / "unreadable"
    specs = [*SPECS[:5], (*SPECS[5][:4], {"flaky": str(flaky)}), SPECS[6]]
    Path(f"{flaky}.kill").touch()
    with pytest.raises(SonostreamError, match=r"an import worker process died, most likely killed "
                       r"by the kernel's out-of-memory killer .* while reading one of: .*in-f.*"
                       r"The inputs committed so far \(\d\) are kept: rerun the same command with "
                       r"fewer --workers \(now 2\)"):
        fake_import(tmp_path / "o", 2, specs=specs)
    Path(f"{flaky}.kill").unlink()
    fake_import(tmp_path / "o", 1, specs=specs)
    assert files(tmp_path / "o") == files(fake_import(tmp_path / "whole", specs=specs).out_dir)


def test_a_rerun_with_other_inputs_is_refused_until_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "o"
    with monkeypatch.context() as m:
        crash_at(m, 3, "after")
        with pytest.raises(Crash):
            fake_import(out)
    before = files(out)
    with pytest.raises(SonostreamError, match=rf"{out} holds an unfinished import of other inputs "
                       r"or options; rerun it with the same inputs and options to continue it, "
                       r"or pass --overwrite"):
        fake_import(out, specs=SPECS[:-1])
    assert files(out) == before and not (out / LOCK_FILE).exists()
    fake_import(out, specs=SPECS[:-1], overwrite=True)
    assert files(out) == files(fake_import(tmp_path / "fresh", specs=SPECS[:-1]).out_dir)
    with pytest.raises(SonostreamError, match="already holds frames.csv, frames, masks"):
        fake_import(out, specs=SPECS[:-1])   # finished: a rerun still needs --overwrite


def test_a_real_importer_resumes_and_checks_its_options(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "o"
    whole = files(_video(src, tmp_path / "whole", 1).out_dir)
    with monkeypatch.context() as m:
        crash_at(m, 2, "before")
        with pytest.raises(Crash):
            _video(src, out, 2)
    with pytest.raises(SonostreamError, match="unfinished import of other inputs or options"):
        import_video([str(src)], out, stride=2, progress=False)
    st = os.stat(src / "b.mp4")
    os.utime(src / "b.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the same path, changed
    with pytest.raises(SonostreamError, match="unfinished import of other inputs or options"):
        import_video([str(src)], out, progress=False)
    os.utime(src / "b.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files(_video(src, out, 2).out_dir) == whole


def test_progress_counts_frames(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SONOSTREAM_PROGRESS", "lines")
    with caplog.at_level(logging.INFO, logger="sonostream.fake"):
        result = fake_import(tmp_path / "o", progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "sonostream.fake"]
    assert lines and all(" frames (" in line for line in lines)
    assert lines[-1].startswith(f"{result.frames}/{result.frames} frames (100 %)")
    assert lines[-1].endswith("inputs 7/7")


def test_workers_must_be_a_positive_integer(tmp_path):
    with pytest.raises(SonostreamError, match="--workers must be an integer >= 1"):
        import_hc18(str(tmp_path), tmp_path / "o", workers=0)


# --- kill -9 of a real import, and a second import while one runs ----------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc, flock")
def test_kill9_mid_import_then_the_rerun_resumes_to_the_same_bytes(tmp_path):
    src = tmp_path / "src"
    _dicom(src, tmp_path / "whole", 1)
    args = ["dicom", "--input", *_dicom_inputs(src), "--quiet"]
    out, signals = tmp_path / "o", tmp_path / "signals"
    signals.mkdir()
    proc = subprocess.Popen([sys.executable, str(STALLED), "4", str(signals), "--", *args,
                             "--out", str(out), "--workers", "2"])
    try:
        deadline = time.monotonic() + 120
        while not (signals / "ready").exists():
            assert proc.poll() is None, f"the stalled import exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "the stalled import never got ready"
            time.sleep(0.05)
        pids = [int(p) for p in (signals / "ready").read_text().split()]
        cli = [sys.executable, "-m", "pipeline.cli", "import", *args, "--out", str(out)]
        # A second import into the folder is refused, --overwrite or not, touching nothing.
        second = subprocess.run(cli + ["--overwrite"], capture_output=True, text=True)
        assert second.returncode == 2, second.stderr
        assert f"{out} is being written by another sonostream build or import (import dicom, " \
               f"pid {pids[0]})" in second.stderr and "another --out" in second.stderr
        # The 4th input's frame is in place, not journaled; kill -9 the import there.
        assert len(list((out / "frames").rglob("*.png"))) == 2
        os.kill(pids[0], signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while any(map(process_running, pids[1:])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids[1:] if process_running(p)], "workers of the killed import still run"
    assert not (out / "frames.csv").exists()
    rerun = subprocess.run(cli + ["--workers", "2"], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert files(out) == files(tmp_path / "whole")
