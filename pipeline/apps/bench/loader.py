"""`sonostream bench loader`: our clip loader vs a seed-style loader, the peers and raw decode.

All three run in one process tree, on the same JPEG bytes and the same CPU budget
(``workers`` processes each), measured alternately so they see the same machine load:

* **ours**: ``ClipLoader`` (CPU path as configured by default: ``workers`` decode processes
  writing into the shared ring of batch slots), batches of B clips x K frames with IO/PM labels
  and MIR masks; frames/s = frames delivered to the training loop. **ours, crc off**: the same
  with the per-member CRC-32 check off (what the check costs). **ours, threads**: ``workers``
  decode threads in the loop's process (the default before the ring); **ours, dataloader**:
  ``workers`` DataLoader worker processes (a shared-memory segment per batch).
* **seed-style**: what the seed encoder's loader does: one image file per sample, and for every
  sample a DataFrame scan for its patient (a PM pair: 2 more images) and for its video (an IO
  sequence: K more images). frames/s counts every image it decodes (generous to it).
* **raw decode**: ``workers`` processes that only ``pread`` + ``cv2.imdecode`` the frames of the
  shards in order: the limit for any loader of these shards.

The 20k and 200k-frame datasets are made from one small synthetic build by repeating its
shards (hard links, so 200k frames cost the disk of ~1k) under new patient and video ids: the
index really has 200k rows and the loaders really do their look-ups in it, while the bytes
decoded are the same. Steady state: the first batches of each run (worker start-up) are not
timed. Every arm then runs for the ``seconds`` asked, starting the next epoch whenever one ends
(``timing.timed``; a 20k-frame epoch is ~3 s of ours), and ``timed`` in the JSON says how many
frames, seconds and epochs each figure counts.

* **peers** (``peers.py``): upstream webdataset reading our shards, MosaicML Streaming and
  LitData from the same JPEG bytes (``pip install sonostream[bench]``; skipped, with the reason,
  where they do not import), on the smallest size's frames; their write frames/s apart.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from preprocessing import format as fmt
from preprocessing.format import SonostreamError

from .peers import PEERS, bench_peers
from .timing import Timing, timed

# frames_per_s keys of the peers (webdataset's says how it decodes: OpenCV, as every peer does)
_PEER_KEY = {"webdataset": "webdataset_opencv", "mosaic_streaming": "mosaic_streaming",
             "litdata": "litdata"}


def _base_dataset(root: Path, seed: int = 0) -> Path:
    from preprocessing.build import BuildOptions, build
    from preprocessing.synth import make_cohort
    ds = root / "base"
    if (ds / fmt.INDEX_FILE).exists():
        return ds
    csv = make_cohort(root / "cohort", patients=16, videos_per_patient=2, frames_per_video=32,
                      size=256, seed=seed, workers=2, progress=False)
    build(str(csv), str(ds), BuildOptions(image_size=256, val_fraction=0.0, test_fraction=0.0,
                                          shard_size_mb=8, seed=seed), workers=2, progress=False)
    return ds


def scaled_dataset(base: Path, out: Path, frames: int) -> Path:
    """A dataset of >= ``frames`` frames: the base shards repeated (hard-linked) under new ids."""
    if (out / fmt.INDEX_FILE).exists():
        return out
    index = pq.read_table(base / fmt.INDEX_FILE)
    manifest = json.loads((base / fmt.MANIFEST_FILE).read_text())
    reps = -(-frames // index.num_rows)
    (out / fmt.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    tables, shards, n = [], [], 0
    for r in range(reps):
        rename = {}
        for s in manifest["shards"]:
            new = fmt.shard_name("train", n)
            n += 1
            rename[s["name"]] = new
            dst = out / fmt.SHARDS_DIR / new
            if not dst.exists():
                os.link(base / fmt.SHARDS_DIR / s["name"], dst)
            shards.append({**s, "name": new})
        t = index
        for col in ("patient_id", "video_key", "key"):
            vals = [f"r{r}x{v}" for v in t.column(col).to_pylist()]
            t = t.set_column(t.schema.get_field_index(col), col, pa.array(vals))
        shard_col = pa.array([rename[s] for s in t.column("shard").to_pylist()])
        tables.append(t.set_column(t.schema.get_field_index("shard"), "shard", shard_col))
    pq.write_table(pa.concat_tables(tables), out / fmt.INDEX_FILE)
    (out / fmt.MANIFEST_FILE).write_text(json.dumps({**manifest, "shards": shards}))
    return out


# --- raw decode ------------------------------------------------------------------------------
def _raw_worker(args):
    paths, offsets, sizes, seconds = args
    fds = {p: os.open(p, os.O_RDONLY) for p in set(paths)}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for p, o, s in zip(paths, offsets, sizes):
            cv2.imdecode(np.frombuffer(os.pread(fds[p], s, o), np.uint8), cv2.IMREAD_GRAYSCALE)
            n += 1
    return n, time.perf_counter() - t0


def raw_decode(ds: Path, workers: int, seconds: float) -> Timing:
    """Frames/s of ``workers`` processes decoding the shards' members in order, each for
    ``seconds`` (whole passes over its part): all frames over the longest worker's seconds."""
    t = pq.read_table(ds / fmt.INDEX_FILE).to_pandas()
    paths = [str(ds / fmt.SHARDS_DIR / s) for s in t["shard"]]
    with mp.get_context("fork").Pool(workers) as pool:
        offsets, sizes = t["image_offset"].tolist(), t["image_size"].tolist()
        parts = [(paths[w::workers], offsets[w::workers], sizes[w::workers], seconds)
                 for w in range(workers)]
        done = pool.map(_raw_worker, parts)
    return Timing(sum(n for n, _ in done), max(s for _, s in done))


# --- ours ------------------------------------------------------------------------------------
MODES = {   # how ours spreads decoding over ``workers`` cores: LoaderConfig fields
    "default": lambda w: {"decode_threads": w},                      # forked workers + ring
    "threads": lambda w: {"num_workers": 0, "decode_threads": w},    # the default before
    "dataloader": lambda w: {"num_workers": w, "transport": "dataloader", "decode_threads": 1},
}


def ours(ds: Path, workers: int, seconds: float, batch: int, k: int, warmup: int = 2,
         mode: str = "default", checksums: bool = True, settings: dict | None = None) -> Timing:
    """Ours as configured by default (``workers`` decode processes writing into the shared
    ring), ``mode="threads"`` (``workers`` decode threads in this process) or ``"dataloader"``
    (``workers`` DataLoader processes); ``checksums=False`` skips the per-member CRC-32 check
    (only to measure its cost); ``settings``: LoaderConfig fields that replace these (a
    config's loader section)."""
    from pipeline.data import ClipLoader, LoaderConfig
    cfg = LoaderConfig(**{"batch_size": batch, "clip_len": k, "prefetch": 4, **MODES[mode](workers),
                          **(settings or {}), "loader": "cpu"})
    loader = ClipLoader(ds, cfg, seed=0)
    loader.decoder.checksums = checksums and loader.view.has_checksums
    # each pass over the loader is the next epoch (a new clip plan): cycled for ``seconds``
    return timed(lambda: loader, lambda b: b.frames.shape[0] * b.frames.shape[1], seconds,
                 warmup, name="ours")


# --- seed style ------------------------------------------------------------------------------
class SeedStyle:
    """One file per image; per sample a PM pair and an IO sequence found by DataFrame scans."""

    def __init__(self, frames_df, k: int):
        self.df, self.k = frames_df, k

    def __len__(self):
        return len(self.df)

    def _load(self, path):
        return cv2.imread(path, cv2.IMREAD_GRAYSCALE)

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        row = self.df.iloc[i]
        img = self._load(row.frame_path)                                   # MIR
        same = self.df[self.df.patient_id == row.patient_id]               # PM: scans the frame
        other = self.df[self.df.patient_id != row.patient_id]
        pair_img = self._load(same.iloc[rng.integers(len(same))].frame_path) if len(same) else None
        neg_img = self._load(other.iloc[rng.integers(len(other))].frame_path) if len(other) else None
        seq = self.df[(self.df.patient_id == row.patient_id) & (self.df.video == row.video)]
        seq = seq.sort_values("frame")                                     # IO: scans again
        start = rng.integers(0, max(1, len(seq) - self.k + 1))
        imgs = [self._load(p) for p in seq.frame_path.iloc[start:start + self.k]]
        return 3 + len(imgs) - (pair_img is None) - (neg_img is None), img.shape


def seed_style_files(base: Path, out: Path) -> Path:
    """The base frames as one JPEG file each (the same bytes the shards hold)."""
    files = out / "files"
    if files.exists():
        return files
    tmp = out / "files.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t = pq.read_table(base / fmt.INDEX_FILE).to_pandas()
    for i, r in enumerate(t.itertuples()):
        with open(base / fmt.SHARDS_DIR / r.shard, "rb") as f:
            f.seek(r.image_offset)
            (tmp / f"{i}.jpg").write_bytes(f.read(r.image_size))
    tmp.rename(files)
    return files


def seed_style(ds: Path, files: Path, workers: int, seconds: float, k: int, warmup: int = 8) -> Timing:
    import pandas as pd
    import torch
    t = pq.read_table(ds / fmt.INDEX_FILE, columns=["patient_id", "video_key", "frame_index"]).to_pandas()
    n_files = len(list(files.iterdir()))
    df = pd.DataFrame({"frame_path": [str(files / f"{i % n_files}.jpg") for i in range(len(t))],
                       "patient_id": t.patient_id, "video": t.video_key, "frame": t.frame_index})
    order = np.random.default_rng(0).permutation(len(df))
    loader = torch.utils.data.DataLoader(SeedStyle(df, k), batch_size=None, num_workers=workers,
                                         sampler=order.tolist(), prefetch_factor=4,
                                         persistent_workers=workers > 0)
    return timed(lambda: loader, lambda item: int(item[0]), seconds, warmup, name="seed-style")


def config_settings(path: str) -> dict:
    """The loader settings of a pretraining config that the bench varies: size, clip length,
    decode threads, prefetch, resize (the CPU path's; batch size stays the bench's)."""
    from pipeline.train.pretraining import load_pretrain_config
    c = load_pretrain_config(path).loader
    return {"image_size": c.image_size, "clip_len": c.clip_len, "decode_threads": c.decode_threads,
            "prefetch": c.prefetch, "num_workers": c.num_workers, "resize": c.resize}


def config_arms(ds: Path, settings: dict, workers: int, seconds: float, batch: int) -> dict:
    """Ours at a config's settings: as configured (``resize: auto`` is ``frame`` on the CPU),
    with each resize, and at the stored size (what the host does when the batch resize runs on
    a GPU), one after the other."""
    arms = {"ours_config": settings,
            "ours_config_resize_batch": {**settings, "resize": "batch"},
            "ours_config_resize_frame": {**settings, "resize": "frame"},
            "ours_config_stored_size": {**settings, "image_size": None}}
    return {name: ours(ds, workers, seconds, batch, settings["clip_len"], settings=s)
            for name, s in arms.items()}


def bench_loader(workdir: str | None = None, sizes=(20_000, 200_000), seconds: float = 8.0,
                 workers: int = 2, batch_size: int = 32, clip_len: int = 4,
                 peers=PEERS, config: str | None = None) -> dict:
    """Every arm for ``seconds`` (epochs cycled). ``peers``: the peers to run beside ours on the
    smallest size's frames (those that do not import are reported under ``peers_skipped``).
    ``config``: a pretraining config; ours also runs at its loader settings (``config_arms``)."""
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SonostreamError(f"unknown peer(s) {', '.join(unknown)}; choose from "
                              f"{', '.join(PEERS)} (or none)")
    settings = config_settings(config) if config else None
    tmp = None
    if workdir is None:
        tmp = workdir = tempfile.mkdtemp(prefix="sonostream-bench-loader-")
    root = Path(workdir)
    try:
        base = _base_dataset(root)
        files = seed_style_files(base, root)
        sets = {n: scaled_dataset(base, root / f"ds_{n}", n) for n in sizes}
        small, large = min(sizes), max(sizes)
        tag = lambda n: f"{n // 1000}k"  # noqa: E731
        runs = {"raw_decode": raw_decode(base, workers, seconds)}
        for n in sizes:
            runs[f"ours_{tag(n)}"] = ours(sets[n], workers, seconds, batch_size, clip_len)
            runs[f"ours_crc_off_{tag(n)}"] = ours(sets[n], workers, seconds, batch_size, clip_len,
                                                  checksums=False)
            runs[f"ours_threads_{tag(n)}"] = ours(sets[n], workers, seconds, batch_size, clip_len,
                                                  mode="threads")
            runs[f"ours_dataloader_{tag(n)}"] = ours(sets[n], workers, seconds, batch_size,
                                                     clip_len, mode="dataloader")
            runs[f"seed_style_{tag(n)}"] = seed_style(sets[n], files, workers, seconds, clip_len)
        if settings:
            runs.update({f"{k}_{tag(small)}": t for k, t in
                         config_arms(sets[small], settings, workers, seconds, batch_size).items()})
        peer = bench_peers(sets[small], root, workers, seconds, batch_size * clip_len, peers)
        runs.update({f"{_PEER_KEY[p]}_{tag(small)}": t for p, t in peer["read"].items()})
        fps = {k: round(v, 1) for k, v in runs.items()}
        ratios = {"ours_vs_raw": fps[f"ours_{tag(large)}"] / fps["raw_decode"],
                  f"ours_vs_seed_style_{tag(large)}": fps[f"ours_{tag(large)}"] / fps[f"seed_style_{tag(large)}"],
                  f"ours_{tag(large)}_vs_{tag(small)}": fps[f"ours_{tag(large)}"] / fps[f"ours_{tag(small)}"],
                  f"ours_crc_on_vs_off_{tag(large)}": fps[f"ours_{tag(large)}"] / fps[f"ours_crc_off_{tag(large)}"],
                  f"ours_vs_threads_{tag(large)}": fps[f"ours_{tag(large)}"] / fps[f"ours_threads_{tag(large)}"]}
        return {"frames_per_s": fps, "ratios": {k: round(v, 3) for k, v in ratios.items()},
                "vs_raw_decode": {k: round(v / fps["raw_decode"], 3) for k, v in fps.items()},
                "timed": {k: v.record() for k, v in runs.items()},
                "write_frames_per_s": {f"{_PEER_KEY[p]}_{tag(small)}": round(t, 1)
                                       for p, t in peer["write"].items()},
                "peers_skipped": peer["skipped"],
                "setup": {"workers": workers, "batch_size": batch_size, "clip_len": clip_len,
                          "seconds_per_run": seconds, "frame": "256x256 JPEG q95",
                          "cpu_count": os.cpu_count(),
                          "peer_frames": tag(small), "peer_batch_frames": batch_size * clip_len,
                          "config": config, "config_loader": settings,
                          "index_rows": {tag(n): pq.read_metadata(sets[n] / fmt.INDEX_FILE).num_rows
                                         for n in sizes}}}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
