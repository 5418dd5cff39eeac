"""The one factory of test data: frames CSVs, synthetic cohorts and built datasets.

A plain module (not a conftest): tests and ``conftest.py`` import it by name. Every dataset a
test uses is made by :func:`make_dataset` (from a frames CSV of random frames, or from the
synthetic cohort); ``conftest.py`` turns the shared ones into session fixtures.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "launch" / "configs" / "debug"
PRETRAIN_CONFIG = CONFIGS / "pretrain.yaml"
FINETUNE_CONFIG = CONFIGS / "finetune.yaml"
# The debug pretraining config made smaller still: 32x32 frames, 8 clips per step, every step logged.
PRETRAIN_FAST = ["loader.image_size=32", "train.batch_size=8", "train.log_every=1",
                 "train.figure_every=4", "train.checkpoint_every=4", "train.trackers=[]",
                 "train.eval_every=0"]   # held-out validation: its own tests turn it on
# The debug fine-tuning config at 32x32 with every step logged and checkpointed every 3 steps.
FINETUNE_FAST = ["data.image_size=32", "train.batch_size=8", "train.log_every=1",
                 "train.checkpoint_every=3", "train.trackers=[]", "semi.rampup_steps=2",
                 "data.prefetch=0"]


def write_frames(root: Path, patients=3, videos=2, frames=5, shape=(48, 64), masks=True,
                 seed=0, name="frames.csv", extra_rows=(), labels=True) -> Path:
    """A frames CSV with PNG frames (and masks) under ``root``; rows in shuffled order.

    ``extra_rows`` are appended as given (dicts), for tests of bad input.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        for v in range(videos):
            for f in range(frames):
                rel = f"img/p{p:03d}/v{v}/{f}.png"
                img = rng.integers(0, 256, shape, dtype=np.uint8)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / rel), img)
                row = {"frame_path": rel, "patient_id": f"{p:03d}", "video_name": f"v{v}",
                       "frame_id": str(f)}
                if masks:
                    m = np.zeros(shape, np.uint8)
                    cv2.ellipse(m, (shape[1] // 2, shape[0] // 2), (10 + f, 8), 0, 0, 360, 255, -1)
                    mrel = f"mask/p{p:03d}/v{v}/{f}.png"
                    (root / mrel).parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / mrel), m)
                    row["mask_path"] = mrel
                if labels:
                    row.update(plane="head", pixel_size_mm="0.5", hc_mm="",
                               ellipse_cx="", ellipse_cy="", ellipse_a="", ellipse_b="",
                               ellipse_angle="", is_standard_plane="false", note=f"n{f}")
                rows.append(row)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order] + list(extra_rows)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    path = root / name
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def synth_csv(root: Path, patients: int, videos: int, frames: int, size: int = 64, seed: int = 0) -> Path:
    """A synthetic cohort's frames CSV (head/abdomen/femur sweeps with masks and HC)."""
    from preprocessing.synth import make_cohort
    return make_cohort(root, patients=patients, videos_per_patient=videos, frames_per_video=frames,
                       size=size, seed=seed, workers=1, progress=False)


def make_dataset(out: Path, csv_path: Path, image_size: int = 64, val: float = 0.0,
                 test: float = 0.0, seed: int = 0, shard_kb: float | None = None) -> Path:
    """``sonostream build`` of ``csv_path`` into ``out`` (one worker, no progress bar)."""
    from preprocessing.build import BuildOptions, build
    opts = BuildOptions(image_size=image_size, val_fraction=val, test_fraction=test, seed=seed,
                        **({"shard_size_mb": shard_kb / 1024} if shard_kb else {}))
    build(csv_path, out, opts, workers=1, progress=False)
    return out


def as_format_2(ds: Path) -> Path:
    """Rewrite the built dataset ``ds`` in place as format 2 wrote it: the same shards, an
    index without the checksum columns (version 2 in its metadata), a manifest of version 2."""
    import json

    import pyarrow.parquet as pq

    from preprocessing import format as fmt
    index = pq.read_table(ds / fmt.INDEX_FILE).drop_columns(list(fmt.CHECKSUM_COLUMNS))
    pq.write_table(index.replace_schema_metadata({fmt.FORMAT_VERSION_KEY: "2"}),
                   ds / fmt.INDEX_FILE)
    manifest = json.loads((ds / fmt.MANIFEST_FILE).read_text())
    manifest["format_version"] = manifest["fingerprint"]["format_version"] = 2
    (ds / fmt.MANIFEST_FILE).write_text(json.dumps(manifest))
    return ds


def scramble_member(ds: Path, row, what: str = "image") -> bytes:
    """Scramble the middle bytes of one member of index row ``row`` (a pandas row) in place,
    keeping its size: silent corruption. In a JPEG only the middle of the entropy-coded scan
    changes, with no 0xFF bytes, so headers, SOI and EOI stay and it still decodes, to garbage;
    elsewhere the middle half. Returns the member's original bytes."""
    path = ds / "shards" / row.shard
    off, size = int(getattr(row, f"{what}_offset")), int(getattr(row, f"{what}_size"))
    data = bytearray(path.read_bytes())
    original = bytes(data[off:off + size])
    start, end = 0, size
    if original[:2] == b"\xff\xd8":
        sos = original.index(b"\xff\xda")
        start, end = sos + 2 + int.from_bytes(original[sos + 2:sos + 4], "big"), size - 2
    lo, hi = start + (end - start) // 4, end - (end - start) // 4
    noise = np.random.default_rng(size).integers(0, 255, hi - lo, np.uint8).tobytes()
    data[off + lo:off + hi] = noise
    path.write_bytes(bytes(data))
    return original


def rewrite_csv(src: Path, dst: Path, drop=(), blank=()) -> Path:
    """A copy of a frames CSV without some columns, or with some columns emptied."""
    with open(src, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in rows[0] if c not in drop]
    with open(dst, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, **{b: "" for b in blank}})
    return dst


def corrupt_members(dataset: Path, rows) -> list[tuple[str, str]]:
    """Zero the image bytes of index ``rows`` in the dataset's shards (sizes unchanged), as a
    bad disk would; returns their (shard, key)."""
    import pyarrow.parquet as pq
    index = pq.read_table(Path(dataset) / "index.parquet").to_pandas()
    hit = []
    for r in index.iloc[[int(r) for r in rows]].itertuples():
        path = Path(dataset) / "shards" / r.shard
        data = bytearray(path.read_bytes())
        data[r.image_offset:r.image_offset + r.image_size] = b"\x00" * r.image_size
        path.write_bytes(bytes(data))
        hit.append((r.shard, r.key))
    return hit


def process_running(pid: int) -> bool:
    """Whether process ``pid`` is alive (Linux /proc; a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")
