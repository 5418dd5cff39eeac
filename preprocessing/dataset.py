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


def open_dataset(root: str | Path) -> Dataset:
    """The dataset at ``root``; a SonostreamError naming the fix if it is unfinished or of
    another format version."""
    root = check_dataset_dir(root)
    manifest = json.loads((root / fmt.MANIFEST_FILE).read_text())
    fmt.check_format_version(manifest.get("format_version"), str(root))
    return Dataset(root, pq.read_table(root / fmt.INDEX_FILE), manifest)
