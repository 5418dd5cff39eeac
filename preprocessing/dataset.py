"""Opens a built dataset directory: its index, manifest and random access to shard members.

Readers use the index's byte offsets to fetch one member without parsing the tar, and check
its bytes against the index's ``image_crc32`` / ``mask_crc32`` (format 3; a format-2 dataset has
no checksums and is read unchecked).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import format as fmt
from .format import SonostreamError


class DatasetError(SonostreamError):
    """The folder is not a finished dataset; the message says what to do."""


@dataclass
class Dataset:
    root: Path
    index: pa.Table
    manifest: dict

    def shard_path(self, shard: str) -> Path:
        return self.root / fmt.SHARDS_DIR / shard

    @property
    def format_version(self) -> int:
        return int(self.manifest.get("format_version"))

    @property
    def has_checksums(self) -> bool:
        """Whether the index holds per-member checksums (format 3 on)."""
        return all(c in self.index.schema.names for c in fmt.CHECKSUM_COLUMNS)

    def member(self, row: dict, what: str = "image") -> bytes:
        """The bytes of an index row's ``image`` or ``mask`` member (``row`` as ``to_pylist``
        gives it), checked against its checksum; a DatasetError naming shard and key if they
        differ."""
        data = self.read(row["shard"], row[f"{what}_offset"], row[f"{what}_size"])
        want = row.get(f"{what}_crc32")
        if want is not None and fmt.member_crc32(data) != want:
            raise DatasetError(f"{self.shard_path(row['shard'])}: the {what} member of {row['key']} "
                               "fails its checksum (corrupted on disk); run `sonostream verify "
                               f"{self.root}` and rebuild the dataset")
        return data

    def read(self, shard: str, offset: int, size: int) -> bytes:
        with open(self.shard_path(shard), "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise DatasetError(f"{self.shard_path(shard)}: {size} bytes at {offset} run past the end")
        return data


def check_dataset_dir(root: str | Path) -> Path:
    """A finished dataset folder, or a DatasetError that says what to do (reads nothing big)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder; pass the --out folder of `sonostream build`")
    index = root / fmt.INDEX_FILE
    if not index.exists():
        hint = ("an interrupted build: rerun the same `sonostream build` to finish it"
                if (root / fmt.WORK_DIR).exists() else "run `sonostream build` into it first")
        raise DatasetError(f"{root}: no {fmt.INDEX_FILE}, so it is not a finished dataset ({hint})")
    manifest_path = root / fmt.MANIFEST_FILE
    if not manifest_path.exists():
        raise DatasetError(f"{root}: {fmt.MANIFEST_FILE} is missing; rebuild with --overwrite")
    return root


# What every reader of a manifest relies on (build writes more: fingerprint, wids, ...).
MANIFEST_KEYS = ("format_version", "codec", "image_ext", "image_size", "shards", "counts")
SHARD_KEYS = ("name", "split", "bytes", "sha256")
COUNT_KEYS = ("rows", "frames", "rejects", "splits")
REBUILD = ("rebuild the dataset (`sonostream build --csv CSV --out DIR --overwrite`; "
           "`sonostream verify DIR` then checks it against its manifest)")


def parse_manifest(data: str | bytes, where, fix: str = REBUILD) -> dict:
    """The manifest in ``data`` (the bytes of ``where``, a manifest.json path or URL), or a
    DatasetError naming it and ``fix`` when it is not JSON (cut short, overwritten), not an
    object, of another format version, or lacks keys readers rely on."""
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError is a ValueError
        raise DatasetError(f"{where} is not valid JSON ({e}): the manifest is damaged or was cut "
                           f"short; {fix}") from None
    if not isinstance(m, dict):
        raise DatasetError(f"{where} holds a JSON {type(m).__name__}, not the object a dataset "
                           f"manifest is (format_version, shards, counts, ...); {fix}")
    if "format_version" in m:
        fmt.check_format_version(m["format_version"], str(where))
    missing = [k for k in MANIFEST_KEYS if k not in m]
    shards, counts = m.get("shards", []), m.get("counts", {})
    if not missing and not isinstance(shards, list):
        missing = ["shards (a list)"]
    if not missing and not isinstance(counts, dict):
        missing = ["counts (an object)"]
    if not missing:
        missing = [f"counts.{k}" for k in COUNT_KEYS if k not in counts]
    if not missing:
        bad = next((i for i, r in enumerate(shards)
                    if not isinstance(r, dict) or any(k not in r for k in SHARD_KEYS)), None)
        if bad is not None:
            missing = [f"shards[{bad}].{k}" for k in SHARD_KEYS
                       if not isinstance(shards[bad], dict) or k not in shards[bad]]
    if missing:
        raise DatasetError(f"{where} lacks {', '.join(missing)}: it is not a complete manifest of "
                           f"`sonostream build`; {fix}")
    return m


def read_manifest(root: str | Path, fix: str = REBUILD) -> dict:
    """``root``/manifest.json, checked (:func:`parse_manifest`)."""
    path = Path(root) / fmt.MANIFEST_FILE
    return parse_manifest(path.read_bytes(), path, fix)


def open_dataset(root: str | Path) -> Dataset:
    """The dataset at ``root``; a SonostreamError naming the fix if it is unfinished, of
    another format version, or its manifest is damaged."""
    root = check_dataset_dir(root)
    return Dataset(root, pq.read_table(root / fmt.INDEX_FILE), read_manifest(root))
