"""The ClipLoader on a real built dataset: content, exact resume, faults, remote shards, DALI."""
import functools
import hashlib
import http.server
import logging
import shutil
import threading

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.dali import dali_available
from preprocessing.dataset import DatasetError


def cfg(**kw):
    base = dict(batch_size=3, clip_len=3, num_workers=0, shuffle_window=5, loader="cpu")
    return LoaderConfig(**{**base, **kw})


def fingerprint(batch):
    """Everything a training step would see, hashed (masks included)."""
    h = hashlib.sha256()
    for name in ("frames", "position", "io_perm", "io_label", "pm_a", "pm_b", "pm_label", "mir_mask"):
        h.update(getattr(batch, name).cpu().numpy().tobytes())
    return h.hexdigest()


def run(loader, epochs=1, steps=None):
    out = []
    for _ in range(epochs):
        for i, b in enumerate(loader):
            out.append((b.epoch, b.position.tolist(), fingerprint(b)))
            if steps is not None and len(out) >= steps:
                return out
    return out


def test_batches_hold_the_indexed_frames_in_order(dataset):
    loader = ClipLoader(dataset, cfg(), seed=0)
    index = pq.read_table(dataset / "index.parquet").to_pandas()
    seen = []
    for b in loader:
        assert b.frames.shape[1:] == (3, 1, 32, 32) and b.frames.dtype == torch.uint8
        for i in range(b.batch_size):
            v = loader.table.video_keys[int(b.video[i])]
            rows = index[index.video_key == v].set_index("frame_index")
            for j, fi in enumerate(b.frame_index[i].tolist()):
                r = rows.loc[fi]
                shard = (dataset / "shards" / r.shard).read_bytes()
                data = shard[r.image_offset:r.image_offset + r.image_size]
                img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
                assert np.array_equal(b.frames[i, j, 0].numpy(), img)
            assert (np.diff(b.frame_index[i].numpy()) == 1).all()
            assert loader.view.patient_ids[int(b.patient[i])] == rows.patient_id.iloc[0]
        seen += b.position.tolist()
    assert len(seen) == len(set(seen)) == (loader.clips_per_epoch(0) // 3) * 3
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0


def test_workers_and_threads_do_not_change_the_batches(dataset):
    a = run(ClipLoader(dataset, cfg(num_workers=0, decode_threads=1, prefetch=0), seed=4))
    assert run(ClipLoader(dataset, cfg(num_workers=2), seed=4)) == a
    assert run(ClipLoader(dataset, cfg(num_workers=0, decode_threads=3, prefetch=2), seed=4)) == a


def test_mir_masks_have_the_ratio_and_follow_the_seed(dataset):
    b = next(iter(ClipLoader(dataset, cfg(mask_grid=(4, 4), mask_ratio=0.5), seed=1)))
    assert b.mir_patches.shape == (3, 3, 4, 4) and (b.mir_patches.sum(dim=(2, 3)) == 8).all()
    assert b.mir_mask.shape == b.frames.shape and b.mir_mask.float().mean() == 0.5
    c = next(iter(ClipLoader(dataset, cfg(mask_grid=(4, 4), mask_ratio=0.5), seed=1)))
    assert torch.equal(b.mir_patches, c.mir_patches)


def test_resume_same_world_size_is_exact(dataset):
    full = run(ClipLoader(dataset, cfg(), seed=7), epochs=2)
    first = ClipLoader(dataset, cfg(), seed=7)
    head = run(first, steps=4)
    state = first.state_dict()
    resumed = ClipLoader(dataset, cfg(), seed=7)
    resumed.load_state_dict(state)
    tail = run(resumed, epochs=2)
    assert head + tail == full


def test_resume_other_world_size_continues_the_epoch(dataset):
    world = [ClipLoader(dataset, cfg(), seed=2, rank=r, world_size=2) for r in range(2)]
    done = []
    for loader in world:
        done += [p for _, pos, _ in run(loader, steps=2) for p in pos]
    state = world[0].state_dict()
    assert state["position"] == 2 * 2 * 3 and world[1].state_dict() == state
    rest = []
    steps = set()
    for r in range(3):
        loader = ClipLoader(dataset, cfg(batch_size=2), seed=2, rank=r, world_size=3)
        loader.load_state_dict(state)
        got = run(loader)
        steps.add(len(got))
        rest += [p for _, pos, _ in got for p in pos]
    both = done + rest
    n = ClipLoader(dataset, cfg(), seed=2).clips_per_epoch(0)
    assert len(both) == len(set(both)) and max(both) < n
    assert n - len(both) < 3 * 2 and len(steps) == 1


def test_resume_refuses_another_order(dataset):
    state = ClipLoader(dataset, cfg(), seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        ClipLoader(dataset, cfg(), seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="clip_len"):
        ClipLoader(dataset, cfg(clip_len=4), seed=1).load_state_dict(state)


def cross_video_share(loader):
    """Share of the epoch's clips whose PM positive is a clip of another video of the patient."""
    got = total = 0
    for b in loader:
        pos = b.pm_label == 1
        a, p = b.pm_a[pos, 0], b.pm_b[pos, 0]
        assert (b.patient[a] == b.patient[p]).all() and (b.video[a] != b.video[p]).all()
        got, total = got + len(a), total + b.batch_size
    return got / total


def test_patient_groups_give_most_clips_a_positive_from_another_video(dataset, caplog):
    # a window of the whole epoch (36 clips): the tiny default here would keep patients together
    grouped = cross_video_share(ClipLoader(dataset, cfg(batch_size=4, shuffle_window=36), seed=3))
    plain = cross_video_share(ClipLoader(dataset, cfg(batch_size=4, shuffle_window=36,
                                                      patient_groups=1), seed=3))
    assert grouped >= 0.75 and grouped > plain + 0.25
    caplog.set_level(logging.WARNING, logger="sonostream.loader")
    ClipLoader(dataset, cfg(batch_size=3), seed=3)
    assert "batch holds 3 clips" in caplog.text and "multiple of 2" in caplog.text


def test_resume_refuses_other_patient_groups(dataset):
    state = ClipLoader(dataset, cfg(), seed=1).state_dict()
    with pytest.raises(ValueError, match="patient_groups=2 \\(now 1\\)"):
        ClipLoader(dataset, cfg(patient_groups=1), seed=1).load_state_dict(state)
    del state["patient_groups"]        # a checkpoint from before patient groups: single clips
    ClipLoader(dataset, cfg(patient_groups=1), seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="patient_groups=1 \\(now 2\\)"):
        ClipLoader(dataset, cfg(), seed=1).load_state_dict(state)


@pytest.fixture
def corrupt(dataset, tmp_path):
    """A copy of the dataset with one member's JPEG bytes overwritten (size unchanged)."""
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    index = pq.read_table(ds / "index.parquet").to_pandas()
    r = index.iloc[len(index) // 2]
    path = ds / "shards" / r.shard
    data = bytearray(path.read_bytes())
    data[r.image_offset:r.image_offset + r.image_size] = b"\x00" * r.image_size
    path.write_bytes(bytes(data))
    return ds, r


@pytest.mark.parametrize("workers,kind", [(0, "cpu"), (2, "cpu"), (0, "dali")])
def test_a_corrupt_member_is_skipped_counted_and_reported(corrupt, caplog, workers, kind):
    if kind == "dali" and not dali_available():
        pytest.skip("nvidia-dali is not installed")
    ds, r = corrupt
    # 1 of 36 clips: over the default fault budget (1 %), so it is raised here to skip the clip
    loader = ClipLoader(ds, cfg(num_workers=workers, loader=kind, max_fault_share=0.05), seed=0)
    with caplog.at_level(logging.WARNING, logger="sonostream.loader"):
        batches = list(loader)
    assert len(batches) == len(ClipLoader(ds, cfg(), seed=0))    # training goes on, same steps
    assert [(s, k) for _, s, k, _ in loader.faults] == [(r.shard, r.key)]
    assert sum(b.batch_size for b in batches) == len(batches) * 3 - 1   # only its clip is left out
    for b in batches:
        for i in range(b.batch_size):
            if loader.table.video_keys[int(b.video[i])] == r.video_key:
                assert r.frame_index not in b.frame_index[i].tolist()
    assert "1 corrupt member(s) skipped" in caplog.text and f"{r.shard}:{r.key}" in caplog.text


def test_missing_dataset_and_bad_config_say_what_to_do(tmp_path, dataset):
    with pytest.raises(DatasetError, match="sonostream build"):
        ClipLoader(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="loader must be one of"):
        LoaderConfig(loader="gpu")
    with pytest.raises(ValueError, match="no frames in split"):
        ClipLoader(dataset, cfg(splits=("test",)))


@pytest.fixture
def http_root(dataset):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(dataset))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_http_shards_give_the_same_batches(dataset, http_root, tmp_path):
    local = run(ClipLoader(dataset, cfg(), seed=3))
    remote = ClipLoader(http_root, cfg(num_workers=2), seed=3, cache_dir=tmp_path / "cache")
    assert run(remote) == local
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.tar")) == \
        sorted(p.name for p in (dataset / "shards").glob("*.tar"))


def test_a_small_cache_evicts_old_shards_and_still_gives_the_same_batches(dataset, http_root, tmp_path):
    local = run(ClipLoader(dataset, cfg(), seed=3))
    shard_bytes = max(p.stat().st_size for p in (dataset / "shards").glob("*.tar"))
    limit = 3 * shard_bytes / 2**30
    remote = ClipLoader(http_root, cfg(), seed=3, cache_dir=tmp_path / "c", cache_limit_gb=limit)
    assert run(remote) == local
    cached = list((tmp_path / "c").glob("*.tar"))
    assert 1 <= len(cached) <= 3 and sum(p.stat().st_size for p in cached) <= 3 * shard_bytes


def test_pipe_shard_urls(dataset, tmp_path):
    local = run(ClipLoader(dataset, cfg(), seed=5))
    piped = ClipLoader(dataset, cfg(), seed=5, cache_dir=tmp_path / "c",
                       shard_url=f"pipe:cat {dataset}/shards/{{shard}}")
    assert run(piped) == local


def test_a_download_that_differs_from_the_manifest_is_refused(dataset, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    victim = sorted((bad / "shards").glob("*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:-512])
    loader = ClipLoader(dataset, cfg(), seed=0, cache_dir=tmp_path / "c",
                        shard_url=f"pipe:cat {bad}/shards/{{shard}}")
    with pytest.raises(DatasetError, match="manifest"):
        run(loader)


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
def test_dali_cpu_graph_gives_the_same_batches(dataset):
    cpu = list(ClipLoader(dataset, cfg(), seed=9))
    dali = list(ClipLoader(dataset, cfg(loader="dali", dali_threads=1), seed=9))
    assert len(cpu) == len(dali) > 0
    for a, b in zip(cpu, dali):
        assert a.structure() == b.structure()
        for name in ("position", "io_perm", "io_label", "pm_a", "pm_b", "pm_label", "mir_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.frames.shape == b.frames.shape and a.frames.dtype == b.frames.dtype
        diff = (a.frames.float() - b.frames.float()).abs()
        assert diff.mean() < 1.0 and diff.max() <= 16        # two JPEG decoders: rounding only


def test_loader_command_streams_and_reports(dataset, capsys):
    from pipeline.cli import main
    assert main(["loader", str(dataset), "--loader", "cpu", "--batch-size", "3", "--clip-len", "3",
                 "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "24 batches" in out and "0 corrupt member(s)" in out and '"epoch": 2' in out
