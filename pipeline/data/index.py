"""IndexView: the one numpy view of ``index.parquet`` that every reader projects.

Built once per dataset, with no per-row Python work (Arrow encodes the string columns): per-row
arrays for reading members (shard id, byte offsets, sizes, checksums), identity (patient, video,
frame index) and, on first use, keys, splits, labels (plane, pixel size, HC) and geometry. Clips
(``clips.video_table``), segmentation frames (``segloader``), evaluation and cine loops all
read rows through it, so no reader ever scans a DataFrame per sample and no two readers decode
the index differently.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from preprocessing import format as fmt
from preprocessing.format import Letterbox, SonostreamError


class IndexView:
    """Row r of the index is entry r of every per-row array."""

    def __init__(self, index: pa.Table):
        version = (index.schema.metadata or {}).get(fmt.FORMAT_VERSION_KEY.encode())
        if version is not None:  # an index sonostream built (local or remote): its format
            fmt.check_format_version(version.decode(), f"this {fmt.INDEX_FILE}")
        self.table = index
        #: whether the index holds member checksums (format 3 on; format 2 is read unchecked)
        self.has_checksums = all(c in index.column_names for c in fmt.CHECKSUM_COLUMNS)
        shards, self.shard_id = self._codes("shard")
        self.shards: list[str] = [str(s) for s in shards]      # shard id -> file name
        self.offset = self._col("image_offset").astype(np.int64)   # image member
        self.size = self._col("image_size").astype(np.int64)
        self.image_crc = self._crc("image_crc32")                   # -1: not checked
        self.frame_index = self._col("frame_index").astype(np.int64)
        self.video_keys, self.video = self._codes("video_key")      # [N] code into video_keys
        self.patient_ids, self.patient = self._codes("patient_id")  # [N] code into patient_ids

    def __len__(self) -> int:
        return self.table.num_rows

    def _codes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique values [U] object, code of each row [N] int64) of a string column:
        exactly what ``np.unique(..., return_inverse=True)`` gives (the codes fix the shard
        shuffle, so they must not change), without sorting a million Python strings: Arrow's
        dictionary encoding, then only its small dictionary sorted (UTF-8 byte order is code
        point order)."""
        enc = pc.dictionary_encode(self.table.column(name)).combine_chunks()
        order = pc.sort_indices(enc.dictionary).to_numpy()
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        values = enc.dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False)
        return values, rank[enc.indices.to_numpy(zero_copy_only=False)]

    def _col(self, name: str, fill=None) -> np.ndarray:
        c = self.table.column(name)
        if fill is not None:
            c = c.fill_null(fill)
        return c.to_numpy(zero_copy_only=False)

    def _crc(self, name: str) -> np.ndarray:
        """[N] int64 checksums of a member column; -1 where there is none (no mask, format 2)."""
        if not self.has_checksums:
            return np.full(len(self), -1, np.int64)
        return self._col(name, -1).astype(np.int64)

    def column(self, name: str) -> np.ndarray | None:
        """Any other column (e.g. ``is_standard_plane``, ``frame_time_ms``), or None if absent."""
        return self._col(name) if name in self.table.column_names else None

    # -- read on first use: keys and splits (messages, evaluation), labels, geometry -------------
    @cached_property
    def keys(self) -> np.ndarray:
        return self._col("key")                                # [N] object

    @cached_property
    def split(self) -> np.ndarray:
        return self._col("split")                              # [N] object

    @cached_property
    def mask_offset(self) -> np.ndarray:
        return self._col("mask_offset", -1).astype(np.int64)   # -1: no mask

    @cached_property
    def mask_size(self) -> np.ndarray:
        return self._col("mask_size", 0).astype(np.int64)

    @cached_property
    def mask_crc(self) -> np.ndarray:
        return self._crc("mask_crc32")                         # -1: no mask, or not checked

    @property
    def has_mask(self) -> np.ndarray:
        return self.mask_offset >= 0

    @cached_property
    def plane(self) -> np.ndarray:
        """[N] int64 index into ``fmt.PLANES``; -1 where unknown."""
        names = self._col("plane", "")
        plane = np.full(len(names), -1, np.int64)
        for i, name in enumerate(fmt.PLANES):
            plane[names == name] = i
        return plane

    @cached_property
    def pixel_size(self) -> np.ndarray:
        """[N] float64 mm per stored pixel; nan where unknown."""
        return self._col("pixel_size_mm", float("nan")).astype(np.float64)

    @cached_property
    def hc_mm(self) -> np.ndarray:
        """[N] float64 reference head circumference; nan where unknown."""
        return self._col("hc_mm", float("nan")).astype(np.float64)

    @cached_property
    def source_path(self) -> np.ndarray:
        return self._col("source_path")                        # frame_path as given in the CSV

    @cached_property
    def stored_size(self) -> np.ndarray:
        """[N, 4] int64: src_height, src_width, height, width."""
        return np.stack([self._col(c) for c in ("src_height", "src_width", "height", "width")],
                        axis=1).astype(np.int64)

    def letterbox(self, row: int) -> Letterbox:
        """How row ``row``'s stored frame was made from its source (``format.geometry``)."""
        return Letterbox.of_stored(*(int(v) for v in self.stored_size[row]))

    # -- selections --------------------------------------------------------------------------------
    def rows_of(self, splits) -> np.ndarray:
        """Index rows of one split or several, in index order."""
        splits = [splits] if isinstance(splits, str) else list(splits)
        unknown = set(splits) - set(fmt.SPLITS)
        if unknown:
            raise SonostreamError(f"unknown split(s) {sorted(unknown)}; use "
                                  f"{', '.join(fmt.SPLITS)}")
        chosen = pc.is_in(self.table.column("split"), value_set=pa.array(splits, pa.string()))
        return np.flatnonzero(chosen.to_numpy(zero_copy_only=False)).astype(np.int64)

    def video_rows(self, video_key: str) -> np.ndarray:
        """Index rows of one video in frame order; SonostreamError listing a few keys if absent."""
        code = int(np.searchsorted(self.video_keys, video_key))
        if code >= len(self.video_keys) or self.video_keys[code] != video_key:
            raise SonostreamError(
                f"video key {video_key!r} is not in the index ({len(self.video_keys)} videos, e.g. "
                f"{', '.join(map(str, self.video_keys[:4]))}); `sonostream inspect` lists them")
        rows = np.flatnonzero(self.video == code)
        return rows[np.argsort(self.frame_index[rows], kind="stable")].astype(np.int64)
