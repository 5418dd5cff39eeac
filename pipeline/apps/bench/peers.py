"""The loaders a user would pick instead of ours, beside ours in `sonostream bench loader`.

Every peer reads the same JPEG frames (the bytes of the benchmark's shards, in index order) on
the same CPU budget (``workers`` DataLoader worker processes), decodes each frame with the same
``cv2.imdecode(..., IMREAD_GRAYSCALE)`` and delivers uint8 batches of ``batch_frames`` frames
[N, H, W], shuffled, the way each library's documentation shows it. They make no clips, labels
or masks (ours does), which flatters them.

* **webdataset** (a core dependency, always run): ``wds.WebDataset(our shard urls)`` with shard
  and sample shuffling, ``to_tuple("jpg")``, OpenCV decode, ``batched``, in a torch DataLoader;
  it reads OUR shards, so it writes nothing.
* **MosaicML Streaming** (``pip install sonostream[bench]``): ``MDSWriter`` writes the bytes as
  a ``bytes`` column once, then a ``StreamingDataset`` subclass decodes in ``__getitem__``, in
  a torch DataLoader.
* **LitData** (the same extra): ``litdata.optimize`` writes the bytes once (``workers``
  processes), then ``litdata.StreamingDataset(transform=decode)`` in a ``StreamingDataLoader``.

Writing is timed once and reported apart (write frames/s); it is not part of the loader
figures. A peer that does not import is reported as skipped, with the reason.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from preprocessing import format as fmt

from .timing import Timing, timed

PEERS = ("webdataset", "mosaic_streaming", "litdata")
_MODULE = {"webdataset": "webdataset", "mosaic_streaming": "streaming", "litdata": "litdata"}
_PIP = {"webdataset": "webdataset", "mosaic_streaming": "mosaicml-streaming", "litdata": "litdata"}


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here (None when it imports)."""
    try:
        __import__(_MODULE[peer])
    except Exception as e:  # noqa: BLE001 - any import failure is a reason to skip it
        return (f"{_MODULE[peer]} does not import ({type(e).__name__}: {e}); "
                f"`pip install sonostream[bench]` (or `pip install {_PIP[peer]}`) to run it")
    return None


def frame_bytes(ds: Path) -> list[bytes]:
    """The dataset's JPEG members, in index order (what every peer writes or reads)."""
    t = pq.read_table(ds / fmt.INDEX_FILE, columns=["shard", "image_offset", "image_size"])
    out, fds = [], {}
    try:
        for shard, off, size in zip(*(t.column(c).to_pylist() for c in t.column_names)):
            f = fds.get(shard) or fds.setdefault(shard, open(ds / fmt.SHARDS_DIR / shard, "rb"))
            f.seek(off)
            out.append(f.read(size))
    finally:
        for f in fds.values():
            f.close()
    return out


def decode_gray(data) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def _frames(batch) -> int:
    return int(batch.shape[0])


def _loader(dataset, workers: int, batch_size=None, **kw):
    import torch
    extra = {"prefetch_factor": 4, "persistent_workers": True} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       **extra, **kw)


# --- webdataset, reading our shards -------------------------------------------------------------
def webdataset_loader(ds: Path, workers: int, batch_frames: int, seed: int = 0):
    import webdataset as wds
    urls = sorted(str(p) for p in (Path(ds) / fmt.SHARDS_DIR).glob("*.tar"))
    pipe = (wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False)
            .shuffle(1000, seed=seed)
            .to_tuple("jpg")
            .map_tuple(decode_gray)
            .batched(batch_frames, partial=True))
    return _loader(pipe, workers)


def webdataset_arm(ds: Path, workers: int, seconds: float, batch_frames: int,
                   warmup: int = 2) -> Timing:
    loader = webdataset_loader(ds, workers, batch_frames)
    return timed(lambda: (b[0] for b in loader), _frames, seconds, warmup, name="webdataset")


# --- MosaicML Streaming -------------------------------------------------------------------------
def write_mds(frames: list[bytes], out: Path) -> None:
    from streaming import MDSWriter
    shutil.rmtree(out, ignore_errors=True)
    with MDSWriter(out=str(out), columns={"jpg": "bytes"}) as writer:
        for data in frames:
            writer.write({"jpg": data})


def _mds_dataset_class():
    """A StreamingDataset that decodes in ``__getitem__`` (the subclass the Streaming docs show);
    defined once streaming imports, at module level so worker processes can unpickle it."""
    if "MDSFrames" not in globals():
        from streaming import StreamingDataset

        class MDSFrames(StreamingDataset):
            def __getitem__(self, idx):
                return decode_gray(super().__getitem__(idx)["jpg"])

        MDSFrames.__qualname__ = "MDSFrames"
        globals()["MDSFrames"] = MDSFrames
    return globals()["MDSFrames"]


def mds_loader(out: Path, workers: int, batch_frames: int, seed: int = 0):
    from streaming.base.util import clean_stale_shared_memory
    clean_stale_shared_memory()
    ds = _mds_dataset_class()(local=str(out), shuffle=True, shuffle_seed=seed + 1,
                              batch_size=batch_frames)
    return _loader(ds, workers, batch_size=batch_frames)


def mds_arm(out: Path, workers: int, seconds: float, batch_frames: int, warmup: int = 2) -> Timing:
    loader = mds_loader(out, workers, batch_frames)   # one StreamingDataset for every epoch
    return timed(lambda: loader, _frames, seconds, warmup, name="mosaic_streaming")


# --- LitData -----------------------------------------------------------------------------------
class _LitItem:
    def __init__(self, frames: list[bytes]):
        self.frames = frames

    def __call__(self, i: int) -> dict:
        return {"jpg": self.frames[i]}


def _lit_decode(item: dict):
    return decode_gray(item["jpg"])


def write_litdata(frames: list[bytes], out: Path, workers: int) -> None:
    from litdata import optimize
    shutil.rmtree(out, ignore_errors=True)
    optimize(fn=_LitItem(frames), inputs=list(range(len(frames))), output_dir=str(out),
             chunk_bytes="64MB", num_workers=max(1, workers), verbose=False,
             start_method="fork")  # its default, spawn, is forced on the whole process


def litdata_loader(out: Path, workers: int, batch_frames: int, seed: int = 0):
    from litdata import StreamingDataLoader, StreamingDataset
    ds = StreamingDataset(input_dir=str(out), shuffle=True, seed=seed, transform=_lit_decode)
    return StreamingDataLoader(ds, batch_size=batch_frames, num_workers=workers)


def litdata_arm(out: Path, workers: int, seconds: float, batch_frames: int,
                warmup: int = 2) -> Timing:
    loader = litdata_loader(out, workers, batch_frames)
    return timed(lambda: loader, _frames, seconds, warmup, name="litdata")


# --- all of them ---------------------------------------------------------------------------------
def bench_peers(ds: Path, workdir: Path, workers: int, seconds: float, batch_frames: int,
                peers=PEERS) -> dict:
    """Each importable peer's loader Timing (and write seconds where it writes its own format)
    on the frames of ``ds``; the others under ``skipped`` with the reason."""
    import time
    fps, writes, skipped = {}, {}, {}
    frames = None
    for peer in peers:
        why = missing(peer)
        if why:
            skipped[peer] = why
            continue
        if peer == "webdataset":
            fps[peer] = webdataset_arm(ds, workers, seconds, batch_frames)
            continue
        frames = frames if frames is not None else frame_bytes(ds)
        out = Path(workdir) / f"peer_{peer}"
        t0 = time.perf_counter()
        if peer == "mosaic_streaming":
            write_mds(frames, out)
            writes[peer] = Timing(len(frames), time.perf_counter() - t0)
            fps[peer] = mds_arm(out, workers, seconds, batch_frames)
        else:
            write_litdata(frames, out, workers)
            writes[peer] = Timing(len(frames), time.perf_counter() - t0)
            fps[peer] = litdata_arm(out, workers, seconds, batch_frames)
    return {"read": fps, "write": writes, "skipped": skipped}
