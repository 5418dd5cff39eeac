"""The CPU path's decode worker processes and their shared ring of batch slots (``ring.py``):
the same batches as the other transports, a held batch never overwritten, slots given back,
clean shutdown (no process or /dev/shm segment left), worker errors raised in the trainer."""
import hashlib
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.ring import HELD, ring_available
from preprocessing.format import SonostreamError

pytestmark = pytest.mark.skipif(not ring_available(), reason="the ring needs fork")


def cfg(**kw):
    base = dict(batch_size=3, clip_len=3, num_workers=2, prefetch=2, shuffle_window=5,
                loader="cpu")
    return LoaderConfig(**{**base, **kw})


def fingerprint(b):
    h = hashlib.sha256()
    for name in ("frames", "video", "position", "frame_index", "io_perm", "io_label", "pm_a",
                 "pm_b", "pm_label", "mir_patches"):
        h.update(getattr(b, name).numpy().tobytes())
    return b.epoch, h.hexdigest()


def run(loader, epochs=1, steps=None):
    out = []
    for _ in range(epochs):
        for b in loader:
            out.append(fingerprint(b))
            if steps is not None and len(out) >= steps:
                return out
    return out


def children():
    return {p.pid for p in mp.active_children()}


def named_shm():
    """Named shared-memory segments this process maps (other processes' are not ours)."""
    with open("/proc/self/maps") as f:
        return {line.split()[-1] for line in f if "/dev/shm/" in line}


def test_the_ring_gives_the_batches_of_threads_and_dataloader_workers(dataset):
    ring = run(ClipLoader(dataset, cfg(), seed=4), epochs=2)
    assert len(ring) > 2 * 8
    threads = run(ClipLoader(dataset, cfg(num_workers=0, decode_threads=1, prefetch=0), seed=4), 2)
    assert ring == threads
    assert run(ClipLoader(dataset, cfg(transport="dataloader"), seed=4), epochs=2) == threads
    assert run(ClipLoader(dataset, cfg(num_workers=3, prefetch=1), seed=4), epochs=2) == threads


def test_resume_through_the_ring_is_exact(dataset):
    full = run(ClipLoader(dataset, cfg(), seed=7), epochs=2)
    first = ClipLoader(dataset, cfg(), seed=7)
    head = run(first, steps=5)
    state = first.state_dict()
    again = ClipLoader(dataset, cfg(), seed=7)
    again.load_state_dict(state)
    assert head + run(again, epochs=2)[:len(full) - 5] == full


def test_held_batches_keep_their_frames_while_the_ring_is_reused(dataset):
    """Every batch of two epochs kept alive at once (many more than the slots): each one still
    holds the frames of the threads path; at most ``slots - depth`` slots are ever lent."""
    threads = ClipLoader(dataset, cfg(num_workers=0), seed=2)
    ref = [b.frames.clone() for _ in range(2) for b in threads]
    loader = ClipLoader(dataset, cfg(), seed=2)
    held, lent = [], []
    for _ in range(2):
        for b in loader:
            held.append(b)
            lent.append(len(loader._pool.ring.lent))
    ring = loader._pool.ring
    assert len(held) == len(ref) > 3 * ring.slots
    assert max(lent) <= ring.slots - 2 * 2
    for i, b in enumerate(held):
        assert np.array_equal(b.frames.numpy(), ref[i].numpy()), i


def test_a_dropped_batch_gives_its_slot_back(dataset):
    loader = ClipLoader(dataset, cfg(), seed=2)
    views = set()
    for b in loader:                      # the loop keeps one batch at a time
        views.add(b.frames.data_ptr())
        assert len(loader._pool.ring.lent) <= HELD
    del b
    ring = loader._pool.ring
    assert not ring.lent and sorted(ring.free) == list(range(ring.slots))
    assert len(views) <= ring.slots       # the frames came from the slots, zero-copy


def test_workers_live_as_long_as_the_loader_and_a_broken_loop_leaves_a_clean_ring(dataset):
    before_shm, before = named_shm(), children()
    loader = ClipLoader(dataset, cfg(), seed=1)
    first = run(loader, epochs=2)
    workers = children() - before
    assert len(workers) == 2                # forked once, kept across epochs
    it = iter(loader)
    next(it)
    next(it)
    it.close()                              # the loop broke mid-epoch: steps in flight drained
    ring = loader._pool.ring
    assert sorted(ring.free) == list(range(ring.slots))
    assert children() - before == workers
    assert named_shm() - before_shm == set()   # the ring has no name: nothing in /dev/shm
    again = ClipLoader(dataset, cfg(), seed=1)
    assert run(again, epochs=2) == first    # (a fresh loader, same batches)
    again.close()
    loader.close()
    assert children() == before
    assert len(run(loader, steps=1)) == 1 and len(children() - before) == 2   # started again
    del loader, it
    import gc
    gc.collect()
    assert children() == before             # a loader that is garbage-collected stops them


def test_workers_exit_when_the_training_process_is_killed(dataset, tmp_path):
    pids = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import multiprocessing as mp, os, signal
        from pipeline.data import ClipLoader, LoaderConfig
        loader = ClipLoader({str(dataset)!r}, LoaderConfig(batch_size=3, clip_len=3,
                            num_workers=2, shuffle_window=5, loader="cpu"), seed=0)
        it = iter(loader)
        next(it)
        open({str(pids)!r}, "w").write(" ".join(str(p.pid) for p in mp.active_children()))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    workers = [int(p) for p in pids.read_text().split()]
    assert len(workers) == 2

    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:   # a zombie (exited, not yet reaped by init) counts as gone
            return open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z"
        except OSError:
            return False
    deadline = time.monotonic() + 20
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "decode workers outlived the training process"


@pytest.fixture
def missing_shard(dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    index = pq.read_table(ds / "index.parquet").to_pandas()
    shard = sorted(index.shard.unique())[1]
    (ds / "shards" / shard).unlink()
    return ds, shard


def test_an_error_in_a_worker_is_raised_in_the_trainer_naming_the_file(missing_shard):
    ds, shard = missing_shard
    before = children()
    loader = ClipLoader(ds, cfg(), seed=0)
    with pytest.raises(SonostreamError) as e:
        for _ in loader:
            pass
    assert shard in str(e.value) and "decode worker" in str(e.value)
    assert children() == before             # the workers were stopped


def test_a_worker_that_dies_is_reported(dataset):
    before = children()
    loader = ClipLoader(dataset, cfg(), seed=0)
    it = iter(loader)
    next(it)
    for p in mp.active_children():
        if p.pid not in before:
            os.kill(p.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="exited with code -9"):
        for _ in it:
            pass
    assert children() == before


@pytest.mark.parametrize("resize", ["batch", "frame"])
def test_resized_batches_are_those_of_the_threads_path(dataset, resize):
    """Frames stored at 32 and asked at 24: resized in the workers exactly as in the threads."""
    ring = run(ClipLoader(dataset, cfg(image_size=24, resize=resize), seed=5))
    assert ring == run(ClipLoader(dataset, cfg(image_size=24, resize=resize, num_workers=0), seed=5))


def test_workers_ignore_the_stop_signals_the_trainer_handles(dataset):
    """Slurm's SIGTERM / SIGUSR1 and Ctrl-C reach every process of the job: the workers keep
    serving, so the trainer can finish its step and checkpoint."""
    before = children()
    ref = run(ClipLoader(dataset, cfg(num_workers=0), seed=0))
    loader = ClipLoader(dataset, cfg(), seed=0)
    it = iter(loader)
    got = [fingerprint(next(it))]
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        for pid in children() - before:
            os.kill(pid, sig)
    time.sleep(0.2)
    got += [fingerprint(b) for b in it]
    assert got == ref
    loader.close()
    assert children() == before



def test_a_worker_error_crosses_as_text_and_keeps_a_data_error_s_type(monkeypatch):
    """What a worker sends about its error is strings only (nothing for the trainer to
    unpickle), yet a SonostreamError subclass comes back as itself and anything else as a
    RuntimeError carrying the worker's traceback."""
    from pipeline.data import ring
    from preprocessing.dataset import DatasetError
    try:
        raise DatasetError("shard gone")
    except DatasetError as e:
        data_error = ring._error(e)
    try:
        raise KeyError("odd")
    except KeyError as e:
        other = ring._error(e)
    assert all(isinstance(x, str) for x in data_error) and other[0] is None
    monkeypatch.setattr(ring, "_shards_of", lambda plan, step: ["train-000001.tar"])
    plan = type("Plan", (), {"epoch": 3})()
    with pytest.raises(DatasetError, match=r"shard gone \(decode worker 1 .*epoch 3, step 7, "
                                           r"reading train-000001.tar"):
        ring._raise_worker_error(1, 123, plan, 7, data_error)
    with pytest.raises(RuntimeError, match="KeyError: 'odd'") as e:
        ring._raise_worker_error(1, 123, plan, 7, other)
    assert "worker traceback" in str(e.value)
