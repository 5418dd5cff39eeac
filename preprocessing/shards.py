"""Writes shard tars deterministically, one at a time, and records each finished shard.

``ShardWriter`` appends samples (a few members under one key) to ``{split}-NNNNNN.tar`` and
starts the next shard when the current one would pass ``max_bytes``. A sample is never split,
so a video crosses into the next shard only when it does not fit. Tar headers carry no time,
owner or mode that could differ between runs, so the same samples give the same bytes.

When a shard is finished it becomes visible in four atomic steps: the tar is renamed into
``shards/``, its DALI index (``format.interop``) goes beside it, its index rows go to
``.work/parts/NAME.parquet``, and ``.work/parts/NAME.json`` (its size, sha256 and the rejects
found since the previous shard) is written last: that file marks the shard as done, so an
interrupted build resumes after the last shard with one.

A part of a partitioned build (``preprocessing.partition``) passes ``part`` and its own
``marker_dir``: its shards are named ``{split}-pPPP-NNNNNN.tar`` and its resume looks at (and
cleans up) only its own names, so parts writing one ``shards/`` folder at once never touch each
other's files.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from . import atomic
from . import format as fmt

PARTS = "parts"


class _HashingFile(io.RawIOBase):
    """A write-only file that keeps a running sha256 and byte count of what passes through.

    ``write_slice`` takes ``blob[start:end]`` without copying it, and joins slices that continue
    each other in one blob (the samples of one encoded segment) into one write and one hash
    update; ``size`` counts them at once."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._run: tuple | None = None   # (blob, start, end) not yet written

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._flush_run()
        self._f.write(b)
        self.sha256.update(b)
        self.size += len(b)
        return len(b)

    def write_slice(self, blob, start: int, end: int) -> None:
        run = self._run
        if run is not None and run[0] is blob and run[2] == start:
            self._run = (blob, run[1], end)
        else:
            self._flush_run()
            self._run = (blob, start, end)
        self.size += end - start

    def _flush_run(self) -> None:
        if self._run is not None:
            blob, start, end = self._run
            self._run = None
            view = memoryview(blob)[start:end]
            self._f.write(view)
            self.sha256.update(view)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self._f.closed:
            self._flush_run()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        super().close()


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte ustar header tarfile writes for a regular file with no time or owner.

    Built with one struct.pack (tarfile's TarInfo.tobuf costs ~50 us, a quarter of a frame's
    budget); names over 100 bytes fall back to tarfile, which adds a pax header.
    """
    raw = name.encode("utf-8")
    if len(raw) > 100 or not raw.isascii():
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(_HEADER.pack(raw, b"0000644", b"0000000", b"0000000", b"%011o" % size,
                                    b"00000000000", b" " * 8, b"0", b"", b"ustar", b"00", b"", b"",
                                    b"", b"", b"", b""))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


# name, mode, uid, gid, size, mtime, chksum, type, linkname, magic, version, uname, gname,
# devmajor, devminor, prefix, padding; "s" fields are NUL-padded, as in tarfile
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12s")


class Packed(NamedTuple):
    """One sample laid out as its shard holds it: ``blob[start:start + size]`` is, per member, the
    header, the data and the zero padding to 512 bytes (what ``tarfile.addfile`` writes).

    ``members``: (name, data offset from ``start``, size) in tar order; ``budget``: the bytes
    the shard boundary is decided by (``ShardWriter.sample_bytes``); ``row``: the index row,
    with its sizes and CRC-32s, and ``image_offset`` / ``mask_offset`` counted from ``start``
    until ``ShardWriter.append`` makes them offsets in the shard and fills in ``shard``."""
    start: int
    size: int
    budget: int
    members: tuple
    row: dict


def pack(key: str, members: list[tuple[str, bytes]], row: dict) -> tuple[bytes, Packed]:
    """The bytes of one sample (``members``: (extension, data)) and its ``Packed`` at 0.

    Pure, so an encode worker runs it and the main process only appends (``ShardWriter.append``);
    the one place the layout of a sample's members is written down."""
    fmt.check_key(key)
    parts, names, pos = [], [], 0
    for ext, data in members:
        name = f"{key}.{ext}"
        header = tar_header(name, len(data))
        offset = pos + len(header)
        names.append((name, offset, len(data)))
        pad = bytes(-len(data) % tarfile.BLOCKSIZE)
        parts += (header, data, pad)
        pos = offset + len(data) + len(pad)
        if ext == fmt.MASK_EXT:
            row["mask_offset"], row["mask_size"] = offset, len(data)
            row["mask_crc32"] = fmt.member_crc32(data)
        elif ext in fmt.IMAGE_EXT.values():
            row["image_offset"], row["image_size"] = offset, len(data)
            row["image_crc32"] = fmt.member_crc32(data)
    row.setdefault("mask_offset", None)
    return b"".join(parts), Packed(0, pos, ShardWriter.sample_bytes(members), tuple(names), row)


def parts_dir(out_dir: Path) -> Path:
    return out_dir / fmt.WORK_DIR / PARTS


class ShardWriter:
    """Context manager: ``start_video()``, ``write()`` its frames, ..., then ``close()``."""

    def __init__(self, out_dir: str | os.PathLike, max_bytes: int, schema: pa.Schema,
                 next_numbers: dict[str, int] | None = None, part: int | None = None,
                 marker_dir: str | os.PathLike | None = None):
        self.out_dir = Path(out_dir)
        self.shard_dir = self.out_dir / fmt.SHARDS_DIR
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.part = part
        self.marker_dir = Path(marker_dir) if marker_dir is not None else parts_dir(self.out_dir)
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.schema = schema
        self.next_numbers = dict.fromkeys(fmt.SPLITS, 0) | (next_numbers or {})
        self.pending_rejects: list[dict] = []
        self.finished: list[dict] = []  # shard records of this run
        self._split: str | None = None
        self._file: _HashingFile | None = None
        self._rows: list[dict] = []
        self._members: list[tuple[str, int, int]] = []  # (name, data offset, size), tar order

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # a failed build keeps its finished shards and drops the open one
            self._abort()

    # -- writing ----------------------------------------------------------------------------
    @staticmethod
    def sample_bytes(members: list[tuple[str, bytes]]) -> int:
        """Bytes a sample takes in a tar: a 512-byte header per member, data padded to 512."""
        return sum(512 + (len(data) + 511) // 512 * 512 for _, data in members)

    def start_video(self, split: str, nbytes: int) -> None:
        """Announce a video of ``nbytes``: it starts a new shard unless it fits in this one.

        That keeps each video inside one shard; only a video larger than a whole shard runs on
        into the next one (``write`` starts it when the current one is full).
        """
        if self._split != split or (self._rows and self._file.size + nbytes + 1024 > self.max_bytes):
            self._finish_shard()
        self._split = split

    def write(self, key: str, members: list[tuple[str, bytes]], row: dict) -> None:
        """Append one sample of the current video. ``members`` are (extension, bytes); ``row``
        is the sample's index row (``pack`` and ``append`` fill in the shard, offsets, sizes and
        CRC-32s)."""
        self.append(*pack(key, members, row))

    def append(self, blob, sample: "Packed") -> None:
        """Append one sample packed beforehand (``pack``, in an encode worker): its bytes are
        ``blob[sample.start:sample.start + sample.size]``. What is left here per sample is the
        shard boundary, the offsets of its members in this shard, and the write."""
        if self._rows and self._file.size + sample.budget + 1024 > self.max_bytes:
            self._finish_shard()
        if self._file is None:
            self._open(self._split)
        base, row = self._file.size, sample.row
        row["shard"] = self._name
        row["image_offset"] += base
        if row["mask_offset"] is not None:
            row["mask_offset"] += base
        self._members.extend((name, base + offset, size) for name, offset, size in sample.members)
        self._file.write_slice(blob, sample.start, sample.start + sample.size)
        self._rows.append(row)

    def reject(self, record: dict) -> None:
        self.pending_rejects.append(record)

    def close(self) -> list[dict]:
        """Finish the open shard; returns the rejects not yet stored with any shard."""
        self._finish_shard()
        rest, self.pending_rejects = self.pending_rejects, []
        return rest

    # -- shard life cycle -------------------------------------------------------------------
    def _open(self, split: str) -> None:
        self._split = split
        self._name = fmt.shard_name(split, self.next_numbers[split], self.part)
        self._tmp = self.shard_dir / f".{self._name}.tmp-{os.getpid()}"
        self._file = _HashingFile(self._tmp)

    def _close_tar(self) -> None:
        """End-of-archive: two zero blocks, then zeros up to a whole record (as tarfile does)."""
        self._file.write(bytes(2 * tarfile.BLOCKSIZE))
        self._file.write(bytes(-self._file.size % tarfile.RECORDSIZE))
        self._file.close()

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        self._close_tar()
        name = self._name
        os.replace(self._tmp, self.shard_dir / name)
        idx = fmt.dali_index_text(self._members).encode()
        atomic.write_bytes(self.shard_dir / fmt.dali_index_name(name), idx)
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        with atomic.atomic_open(self.marker_dir / f"{name}.parquet") as f:
            pq.write_table(table, f)
        record = {"name": name, "split": self._split, "bytes": self._file.size,
                  "sha256": self._file.sha256.hexdigest(), "frames": len(self._rows),
                  "first_key": self._rows[0]["key"], "last_key": self._rows[-1]["key"],
                  "dali_index": {"name": fmt.dali_index_name(name), "bytes": len(idx),
                                 "sha256": hashlib.sha256(idx).hexdigest()}}
        atomic.write_json(self.marker_dir / f"{name}.json",
                          {"shard": record, "rejects": self.pending_rejects})
        self.finished.append(record)
        self.next_numbers[self._split] += 1
        self.pending_rejects, self._rows, self._members = [], [], []
        self._file = None

    def _abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            self._file = None
            self._members = []


def load_finished(out_dir: str | os.PathLike, part: int | None = None,
                  marker_dir: str | os.PathLike | None = None
                  ) -> tuple[list[dict], list[pa.Table], list[dict]]:
    """Shard records, index tables and rejects of the shards an earlier run finished.

    A shard counts as finished only with its marker JSON, its parquet part, a tar and a DALI
    index of the recorded sizes; leftovers of an unfinished shard are deleted. With ``part``,
    only that part's shards (``{split}-pPPP-``) are looked at or deleted.
    """
    out_dir = Path(out_dir)
    sdir = out_dir / fmt.SHARDS_DIR
    pdir = Path(marker_dir) if marker_dir is not None else parts_dir(out_dir)
    mine = tuple(fmt.shard_prefix(s, part) for s in fmt.SPLITS)
    records, tables, rejects = [], [], []
    done = set()
    for marker in sorted(pdir.glob("*.json")) if pdir.is_dir() else []:
        info = json.loads(marker.read_text())
        rec = info["shard"]
        tar, part = sdir / rec["name"], pdir / f"{rec['name']}.parquet"
        idx = sdir / rec["dali_index"]["name"]
        if not (part.is_file() and tar.is_file() and tar.stat().st_size == rec["bytes"]
                and idx.is_file() and idx.stat().st_size == rec["dali_index"]["bytes"]):
            marker.unlink()
            continue
        done.add(rec["name"])
        records.append(rec)
        tables.append(pq.read_table(part))
        rejects.extend(info["rejects"])
    for folder, suffix in ((sdir, ""), (pdir, ".parquet")):
        if not folder.is_dir():
            continue
        for p in folder.glob(".*.tmp-*"):   # temp files of a killed writer of these shards
            if p.name[1:].startswith(mine):
                p.unlink(missing_ok=True)
        if folder == pdir:
            atomic.remove_leftovers(folder)
        for p in folder.glob(f"*.tar{suffix}"):
            if p.name.startswith(mine) and p.name.removesuffix(suffix) not in done:
                p.unlink()
    done_idx = {fmt.dali_index_name(n) for n in done}
    for p in sdir.glob("*.idx") if sdir.is_dir() else []:
        if p.name.startswith(mine) and p.name not in done_idx:
            p.unlink()
    order = {s: i for i, s in enumerate(fmt.SPLITS)}
    idx = sorted(range(len(records)), key=lambda i: (order[records[i]["split"]], records[i]["name"]))
    return [records[i] for i in idx], [tables[i] for i in idx], rejects
