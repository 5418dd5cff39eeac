"""`sonostream verify DIR`: checks a built dataset against its manifest and the contract.

Re-hashes every shard (sha256 and size from manifest.json), walks every tar and checks that
each index row points at a real member (right name, offset and size; mask and metadata
members where the row says so), that each shard's DALI ``.idx`` is the one its tar gives and
each split's wids shard list matches the manifest, and checks the contract's invariants:
unique dot-free keys, each video's frames numbered 0..n-1 in shard order, each patient in
exactly one split. Every image and mask member's bytes are checked against the index's
``image_crc32`` / ``mask_crc32`` (format 3; a format-2 dataset has none, which is logged), so
the members a corrupted shard breaks are named.
``decode=True`` also decodes every image and compares its size with the index.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections import defaultdict

from tqdm import tqdm

from . import format as fmt
from .dataset import Dataset, open_dataset
from .imaging import decode_gray
from .summary import read_rejects, single_frame_videos, split_counts

MAX_LISTED = 20
log = logging.getLogger("sonostream.verify")


def verify(root: str, decode: bool = False, progress: bool = True) -> list[str]:
    """Problems found (empty list: the dataset is sound)."""
    ds = open_dataset(root)
    problems = [f"index: {p}" for p in fmt.check_index_schema(ds.index.schema, ds.format_version)]
    if problems:
        return problems
    if not ds.has_checksums:
        log.warning("%s is dataset format %d, which has no per-member checksums: members are not "
                    "checked one by one (the shards' sha256 still is); rebuild it with `sonostream "
                    "build --overwrite` to get per-member checks", root, ds.format_version)
    problems += _check_manifest(ds)
    problems += _check_shards(ds, progress)
    problems += _check_rows(ds, decode, progress)
    return problems


def _check_manifest(ds: Dataset) -> list[str]:
    """Every manifest field that the index, the shards' records or rejects.csv can recompute:
    an edited manifest (say ``image_size``, which the loaders trust) is found, not served."""
    m, index = ds.manifest, ds.index
    problems = []
    fix = "(edited or from another build; rebuild with --overwrite)"
    options = m.get("fingerprint", {}).get("options", {})
    want = {"codec": options.get("codec"), "image_size": options.get("image_size"),
            "image_ext": fmt.IMAGE_EXT.get(options.get("codec")),
            "format_version": m.get("fingerprint", {}).get("format_version")}
    problems += [f"manifest {k} is {m.get(k)!r} but its build options say {v!r} {fix}"
                 for k, v in want.items() if m.get(k) != v]
    size = m.get("image_size")
    if isinstance(size, int) and size > 0 and index.num_rows:
        hw = set(zip(index["height"].to_pylist(), index["width"].to_pylist()))
        if hw != {(size, size)}:
            problems.append(f"manifest image_size is {size} but the index holds frames of "
                            f"{', '.join(f'{w}x{h}' for h, w in sorted(hw)[:3])} {fix}")
    if not (ds.root / fmt.REJECTS_FILE).is_file():
        problems.append(f"{fmt.REJECTS_FILE} is missing (every build writes it, empty or not: the "
                        "CSV rows that are not in the index; rebuild with --overwrite)")
        rejected = None
    else:
        rejected = len(read_rejects(ds.root))
    counts = m.get("counts", {})
    cols = index.select(["split", "patient_id", "video_key", "frame_index", "num_frames"]).to_pandas()
    if counts.get("splits") != split_counts(cols):
        problems.append(f"manifest counts.splits {counts.get('splits')} but the index gives "
                        f"{split_counts(cols)} {fix}")
    if rejected is not None and counts.get("rejects") != rejected:
        problems.append(f"manifest counts {counts.get('rejects')} rejects but {fmt.REJECTS_FILE} "
                        f"holds {rejected} rows {fix}")
    if rejected is not None and counts.get("rows") != index.num_rows + rejected:
        problems.append(f"manifest counts {counts.get('rows')} CSV rows but the index ({index.num_rows}) "
                        f"and {fmt.REJECTS_FILE} ({rejected}) hold {index.num_rows + rejected} {fix}")
    if counts.get("single_frame_videos") != single_frame_videos(cols):
        problems.append(f"manifest counts {counts.get('single_frame_videos')} single-frame videos "
                        f"but the index has {single_frame_videos(cols)} {fix}")
    extra = [c for c in index.schema.names if c not in fmt.index_schema([]).names]
    if list(m.get("extra_columns", [])) != extra:
        problems.append(f"manifest extra_columns {m.get('extra_columns')} but the index's are "
                        f"{extra} {fix}")
    per_shard = cols.assign(shard=index["shard"].to_pylist()).groupby("shard").size().to_dict()
    for rec in m.get("shards", []):
        name = rec.get("name", "?")
        if not name.startswith(f"{rec.get('split')}-"):
            problems.append(f"{name}: the manifest gives it split {rec.get('split')!r} {fix}")
        if rec.get("frames") != per_shard.get(name, 0):
            problems.append(f"{name}: the manifest counts {rec.get('frames')} frames, the index "
                            f"{per_shard.get(name, 0)} {fix}")
    return problems


def _check_shards(ds: Dataset, progress: bool) -> list[str]:
    problems = []
    listed = {rec["name"] for rec in ds.manifest["shards"]}
    on_disk = {p.name for p in (ds.root / fmt.SHARDS_DIR).glob("*.tar")}
    problems += [f"{name}: shard on disk but not in the manifest" for name in sorted(on_disk - listed)]
    idx_listed = {rec["dali_index"]["name"] for rec in ds.manifest["shards"] if "dali_index" in rec}
    idx_on_disk = {p.name for p in (ds.root / fmt.SHARDS_DIR).glob("*.idx")}
    problems += [f"{name}: DALI index on disk but not in the manifest"
                 for name in sorted(idx_on_disk - idx_listed)]
    problems += _check_wids(ds)
    for rec in tqdm(ds.manifest["shards"], desc="hash shards", unit="shard", disable=not progress):
        path = ds.shard_path(rec["name"])
        if not path.exists():
            problems.append(f"{rec['name']}: listed in the manifest but missing from {path.parent}")
            continue
        h, size = hashlib.sha256(), 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
                size += len(block)
        if size != rec["bytes"]:
            problems.append(f"{rec['name']}: {size} bytes, manifest says {rec['bytes']} (truncated "
                            "or replaced; rebuild this dataset)")
        elif h.hexdigest() != rec["sha256"]:
            problems.append(f"{rec['name']}: sha256 differs from the manifest (corrupted; rebuild)")
    return problems


def _check_wids(ds: Dataset) -> list[str]:
    """Each split with shards has its wids shard list, equal to the manifest's shards."""
    problems = []
    for split in sorted({rec["split"] for rec in ds.manifest["shards"]}):
        name = ds.manifest.get("wids", {}).get(split)
        path = ds.root / fmt.wids_name(split)
        if name != path.name or not path.is_file():
            problems.append(f"{path.name}: the wids shard list of split {split!r} is missing "
                            "(rebuild with --overwrite)")
        elif json.loads(path.read_text()) != fmt.wids_shardlist(split, ds.manifest["shards"]):
            problems.append(f"{path.name}: differs from the manifest's {split} shards (rebuild "
                            "with --overwrite)")
    return problems


def _members(path) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the tar's regular files, in tar order."""
    with tarfile.open(path, "r:") as tar:
        return [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]


def _check_dali_index(ds: Dataset, rec: dict, members: list) -> list[str]:
    idx = rec.get("dali_index")
    if idx is None:
        return [f"{rec['name']}: the manifest lists no DALI index (rebuild with --overwrite)"]
    path = ds.root / fmt.SHARDS_DIR / idx["name"]
    if not path.is_file():
        return [f"{idx['name']}: DALI index listed in the manifest but missing from {path.parent} "
                "(rebuild with --overwrite)"]
    if path.read_bytes() != fmt.dali_index_text(members).encode():
        return [f"{idx['name']}: DALI index does not match {rec['name']} (rebuild with "
                "--overwrite)"]
    return []


def _check_rows(ds: Dataset, decode: bool, progress: bool) -> list[str]:
    problems = []
    cols = ds.index.select(["key", "shard", "image_offset", "image_size", "mask_offset", "mask_size",
                            "has_mask", "video_key", "frame_index", "num_frames", "patient_id",
                            "split", "height", "width",
                            *(fmt.CHECKSUM_COLUMNS if ds.has_checksums else ())]).to_pylist()
    ext = ds.manifest["image_ext"]
    seen_keys, patient_splits = set(), defaultdict(set)
    last_index: dict[str, int] = {}
    by_shard = defaultdict(list)
    for row in cols:
        by_shard[row["shard"]].append(row)
    known = {rec["name"]: rec for rec in ds.manifest["shards"]}
    for shard, rows in tqdm(by_shard.items(), desc="check index", unit="shard",
                            disable=not progress):
        if shard not in known or not ds.shard_path(shard).exists():
            problems.append(f"{len(rows)} index rows point at shard {shard}, which does not exist")
            continue
        try:
            listing = _members(ds.shard_path(shard))
        except (tarfile.TarError, OSError) as e:
            problems.append(f"{shard}: not a readable tar ({e})")
            continue
        problems += _check_dali_index(ds, known[shard], listing)
        members = {name: (off, size) for name, off, size in listing}
        expected = set()
        with open(ds.shard_path(shard), "rb") as f:   # one descriptor per shard for its members
            read = lambda off, size, fd=f.fileno(): os.pread(fd, size, off)  # noqa: E731
            for row in rows:
                key = row["key"]
                problems += _check_row(row, members, ext, decode, read)
                expected.update({f"{key}.{ext}", f"{key}.{fmt.META_EXT}"}
                                | ({f"{key}.{fmt.MASK_EXT}"} if row["has_mask"] else set()))
                if key in seen_keys:
                    problems.append(f"{key}: key appears twice in the index")
                seen_keys.add(key)
                want = last_index.get(row["video_key"], -1) + 1
                if row["frame_index"] != want:
                    problems.append(f"{key}: frame_index {row['frame_index']} where {want} was "
                                    "expected (frames of a video must be contiguous and in order)")
                last_index[row["video_key"]] = row["frame_index"]
                patient_splits[row["patient_id"]].add(row["split"])
                if not shard.startswith(f"{row['split']}-"):
                    problems.append(f"{key}: split {row['split']!r} but stored in shard {shard}")
        extra = sorted(set(members) - expected)
        if extra:
            problems.append(f"{shard}: {len(extra)} members not in the index (e.g. {extra[0]})")
    counts = defaultdict(int)
    for row in cols:
        counts[row["video_key"]] += 1
    problems += [f"{row['key']}: num_frames {row['num_frames']} but the video has "
                 f"{counts[row['video_key']]} frames" for row in cols
                 if row["num_frames"] != counts[row["video_key"]]][:MAX_LISTED]
    problems += [f"patient {p!r} appears in several splits: {sorted(s)}"
                 for p, s in patient_splits.items() if len(s) > 1]
    listed = ds.manifest.get("counts", {}).get("frames")
    if listed != len(cols):
        problems.append(f"manifest counts {listed} frames but the index has {len(cols)} rows")
    return problems


def _check_row(row: dict, members: dict, ext: str, decode: bool, read) -> list[str]:
    """Problems of one index row: its members' names, places, checksums (and decoding)."""
    key, out = row["key"], []
    try:
        fmt.check_key(key)
    except ValueError as e:
        out.append(str(e))
    image = None
    for what, name in (("image", f"{key}.{ext}"), ("mask", f"{key}.{fmt.MASK_EXT}")):
        if what == "mask" and not row["has_mask"]:
            continue
        off, size = row[f"{what}_offset"], row[f"{what}_size"]
        if name not in members:
            out.append(f"{row['shard']}: member {name} is missing")
            continue
        if members[name] != (off, size):
            out.append(f"{row['shard']}: member {name} is at {members[name]}, index says "
                       f"(offset, size) = ({off}, {size})")
            continue
        want = row.get(f"{what}_crc32")
        if want is None and not decode:
            continue
        data = read(off, size)
        if what == "image":
            image = data
        if want is not None and fmt.member_crc32(data) != want:
            out.append(f"{row['shard']}: member {name} fails its checksum (crc32 "
                       f"{fmt.member_crc32(data):08x}, the index says {want:08x}): its bytes "
                       "changed on disk; rebuild the dataset")
    if f"{key}.{fmt.META_EXT}" not in members:
        out.append(f"{row['shard']}: member {key}.{fmt.META_EXT} is missing")
    if decode and not out:
        try:
            img = decode_gray(image)
            if img.shape != (row["height"], row["width"]):
                out.append(f"{key}: image is {img.shape[1]}x{img.shape[0]}, index says "
                           f"{row['width']}x{row['height']}")
        except ValueError as e:
            out.append(f"{key}: image does not decode ({e})")
    return out
