"""The loader benchmark's parts on a tiny dataset (figures are not asserted: machines are noisy;
what is asserted is what each figure counts: the seconds asked, the same frames)."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.apps.bench import loader as bench, peers, timing
from pipeline.apps.bench.loader import ours, raw_decode, scaled_dataset, seed_style, seed_style_files
from pipeline.cli import main


def test_bench_parts_run_and_scale_the_index(dataset, tmp_path):
    big = scaled_dataset(dataset, tmp_path / "big", 500)
    base_rows = pq.read_metadata(dataset / "index.parquet").num_rows
    rows = pq.read_table(big / "index.parquet")
    assert rows.num_rows >= 500 and rows.num_rows % base_rows == 0
    assert len(set(rows.column("video_key").to_pylist())) == rows.num_rows // 9   # new ids per copy
    files = seed_style_files(dataset, tmp_path)
    assert len(list(files.iterdir())) == base_rows
    # every arm runs for the seconds asked, though one epoch of 108 tiny frames is far shorter
    for t in (raw_decode(big, 1, 0.2), ours(dataset, 2, 0.2, 2, 3, warmup=1),
              ours(dataset, 1, 0.2, 2, 3, warmup=1, mode="dataloader"),
              ours(dataset, 2, 0.2, 2, 3, warmup=1, mode="threads"),
              ours(dataset, 2, 0.2, 2, 3, warmup=1, checksums=False),
              seed_style(dataset, files, 1, 0.2, 3, warmup=1),
              peers.webdataset_arm(dataset, 1, 0.2, 6, warmup=1)):
        assert t > 0 and t.frames > 0 and t.seconds >= 0.2
        assert t == pytest.approx(t.frames / t.seconds)


def test_timed_cycles_epochs_for_the_whole_duration(monkeypatch):
    clock = iter(np.arange(0, 100, 0.1))            # each reading of the clock: 0.1 s later
    monkeypatch.setattr(timing.time, "perf_counter", lambda: float(next(clock)))
    t = timing.timed(lambda: iter([5, 5, 5]), lambda item: item, seconds=1.0, warmup=1)
    assert t.seconds >= 1.0 and t.epochs > 1
    assert t.frames == 5 * round(t.seconds / 0.1)   # every item after the clock started, counted
    with pytest.raises(timing.SonostreamError, match="delivered nothing"):
        timing.timed(lambda: iter([]), len, seconds=1.0)


def _frames(batches):
    return sorted(f.tobytes() for b in batches for f in np.asarray(b))


def _ours_frames(ds):
    return sorted(peers.decode_gray(b).tobytes() for b in peers.frame_bytes(ds))


def test_webdataset_reads_the_same_frames_from_our_shards(dataset):
    rows = pq.read_metadata(dataset / "index.parquet").num_rows
    got = _frames(b[0] for b in peers.webdataset_loader(dataset, 2, 16))
    assert len(got) == rows and got == _ours_frames(dataset)


def test_mosaic_streaming_writes_and_reads_the_same_frames(dataset, tmp_path):
    pytest.importorskip("streaming")
    frames = peers.frame_bytes(dataset)
    peers.write_mds(frames, tmp_path / "mds")
    got = _frames(peers.mds_loader(tmp_path / "mds", 1, 16))
    assert len(got) == len(frames) and got == _ours_frames(dataset)


def test_litdata_writes_and_reads_the_same_frames(dataset, tmp_path):
    pytest.importorskip("litdata")
    frames = peers.frame_bytes(dataset)
    peers.write_litdata(frames, tmp_path / "lit", 1)
    got = _frames(peers.litdata_loader(tmp_path / "lit", 1, 16))
    assert len(got) == len(frames) and got == _ours_frames(dataset)


def test_bench_loader_json_keeps_its_keys_and_adds_the_peers(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_base_dataset", lambda root: dataset)
    monkeypatch.setattr(peers, "missing", lambda p: None if p == "webdataset" else f"{p}: no")
    out = tmp_path / "bench.json"
    assert main(["bench", "loader", "--sizes", "1000,2000", "--seconds", "0.2", "--workers", "1",
                 "--batch-size", "2", "--clip-len", "3", "--workdir", str(tmp_path / "w"),
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    old = {"raw_decode"} | {f"{a}_{n}" for a in ("ours", "ours_crc_off", "ours_threads",
                                                  "ours_dataloader", "seed_style") for n in ("1k", "2k")}
    assert set(r["frames_per_s"]) == old | {"webdataset_opencv_1k"}
    assert set(r["ratios"]) == {"ours_vs_raw", "ours_vs_seed_style_2k", "ours_2k_vs_1k",
                                "ours_crc_on_vs_off_2k", "ours_vs_threads_2k"}
    assert set(r["vs_raw_decode"]) == set(r["frames_per_s"]) == set(r["timed"])
    assert all(t["seconds"] >= 0.2 and t["frames"] > 0 for t in r["timed"].values())
    assert r["peers_skipped"] == {"mosaic_streaming": "mosaic_streaming: no", "litdata": "litdata: no"}
    assert r["write_frames_per_s"] == {} and r["setup"]["peer_frames"] == "1k"
    with pytest.raises(timing.SonostreamError, match="unknown peer"):
        bench.bench_loader(str(tmp_path / "w"), sizes=(1000,), peers=("nvidia",))


def test_bench_loader_runs_ours_at_a_configs_loader_settings(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "_base_dataset", lambda root: dataset)
    config = tmp_path / "pt.yaml"
    config.write_text("loader:\n  image_size: 24\n  clip_len: 3\n  decode_threads: 2\n  prefetch: 1\n")
    seen = []
    real = bench.ours
    monkeypatch.setattr(bench, "ours", lambda *a, **kw: seen.append(kw.get("settings")) or real(*a, **kw))
    r = bench.bench_loader(str(tmp_path / "w"), sizes=(1000,), seconds=0.2, workers=1,
                           batch_size=2, clip_len=3, peers=(), config=str(config))
    arms = {"ours_config_1k", "ours_config_resize_batch_1k", "ours_config_resize_frame_1k",
            "ours_config_stored_size_1k"}
    assert arms <= set(r["frames_per_s"]) and all(r["timed"][a]["frames"] > 0 for a in arms)
    assert r["setup"]["config_loader"] == {"image_size": 24, "clip_len": 3, "decode_threads": 2,
                                           "prefetch": 1, "num_workers": None, "resize": "auto"}
    configured = [s for s in seen if s]
    assert [(s["image_size"], s["resize"]) for s in configured] == [
        (24, "auto"), (24, "batch"), (24, "frame"), (None, "auto")]
