"""The on-disk contract: the frames CSV, sample keys, splits, shard names and the index schema.

This (with ``geometry``, the stored <-> source pixel mapping) is the one place that states the
contract. Writers (``preprocessing.build``), readers
(``pipeline.data``) and validators (``preprocessing.verify``) import these names; nothing else
re-states them. It is torch-free and cheap to import.

A built dataset directory holds::

    shards/{split}-NNNNNN.tar   frames of one video together, in temporal order
    shards/{split}-NNNNNN.idx   its DALI index (``interop``: what DALI's wds2idx writes)
                                (a build split into parts names them {split}-pPPP-NNNNNN.tar/.idx)
    {split}.wids.json           the split's shard list for ``wids.ShardListDataset`` (``interop``)
    index.parquet               one row per frame (INDEX_SCHEMA); written last
    manifest.json               options, counts, and sha256 + size of every shard and .idx
    rejects.csv                 every input row that did not make it, with its reason

Sample keys are ``{video_key}/{frame_index:06d}``; tar members are ``{key}.jpg|png`` (the frame,
8-bit grayscale), ``{key}.json`` (its metadata) and optionally ``{key}.mask.png`` (0/255).
"""
from __future__ import annotations

import csv
import decimal
import hashlib
import io
import math
import re
import zlib
from typing import Iterable, Sequence

import pyarrow as pa

from .errors import SonostreamError

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSION_KEY",
    "READABLE_VERSIONS",
    "CHECKSUMS_SINCE",
    "check_format_version",
    "CHECKSUM_COLUMNS",
    "member_crc32",
    "REQUIRED_COLUMNS",
    "LABEL_COLUMNS",
    "MASK_COLUMN",
    "SPLIT_COLUMN",
    "OPTIONAL_COLUMNS",
    "PSEUDONYM_COLUMN",
    "PLANES",
    "ELLIPSE_COLUMNS",
    "csv_cell",
    "csv_text",
    "ellipse_perimeter",
    "SPLITS",
    "split_of",
    "parse_split",
    "check_fractions",
    "resolve_fractions",
    "DEFAULT_FRACTION",
    "is_number",
    "parse_number",
    "frame_identity",
    "DEFAULT_MAX_PIXELS",
    "natural_key",
    "frame_order",
    "IMAGE_EXT",
    "MASK_EXT",
    "META_EXT",
    "video_key",
    "sample_key",
    "check_key",
    "split_key",
    "SHARDS_DIR",
    "INDEX_FILE",
    "MANIFEST_FILE",
    "REJECTS_FILE",
    "WORK_DIR",
    "REJECT_COLUMNS",
    "shard_name",
    "shard_prefix",
    "CORE_FIELDS",
    "RESERVED_COLUMNS",
    "index_schema",
    "check_index_schema",
]

#: 2: the image member's byte offset and size are ``image_offset``, ``image_size`` (were
#: ``offset``, ``size``: ``offset`` is a reserved word in SQL); shards have DALI ``.idx`` files
#: and splits ``{split}.wids.json``.
#: 3: ``image_crc32`` / ``mask_crc32``: a CRC-32 of each image and mask member's bytes, which
#: readers check, so a member corrupted in place (same size, still decodes) is caught.
FORMAT_VERSION = 3
FORMAT_VERSION_KEY = "sonostream_format_version"  # in index.parquet's schema metadata
#: Versions readers open: a format-2 dataset is read without per-member checks (it has no
#: checksums); ``sonostream build`` writes only FORMAT_VERSION and never appends to another.
READABLE_VERSIONS = (2, 3)
CHECKSUMS_SINCE = 3


def check_format_version(found, where: str) -> int:
    """``found`` (a manifest's or index's version) as an int when readers open it
    (READABLE_VERSIONS); SonostreamError naming the fix otherwise."""
    try:
        version = int(found)
    except (TypeError, ValueError):
        version = None
    if version in READABLE_VERSIONS:
        return version
    if version is not None and version > FORMAT_VERSION:
        fix = "upgrade sonostream to read it"
    else:
        fix = ("rebuild it with this sonostream (`sonostream build --csv CSV --out DIR "
               "--overwrite`)")
    readable = " and ".join(map(str, READABLE_VERSIONS))
    raise SonostreamError(f"{where} is sonostream dataset format {found}, this sonostream reads "
                          f"formats {readable}; {fix}")

# ---------------------------------------------------------------------------------------------
# The frames CSV (what every source importer writes and `sonostream build` reads)
# ---------------------------------------------------------------------------------------------
REQUIRED_COLUMNS = ("frame_path", "patient_id", "video_name", "frame_id")

#: Optional label columns and their types. Geometry (ellipse_*) is in pixels of the source frame,
#: with (0, 0) the centre of the top-left pixel; semi-axes a >= b; angle in radians.
LABEL_COLUMNS: dict[str, pa.DataType] = {
    "plane": pa.string(),
    "pixel_size_mm": pa.float64(),
    "hc_mm": pa.float64(),
    "ellipse_cx": pa.float64(),
    "ellipse_cy": pa.float64(),
    "ellipse_a": pa.float64(),
    "ellipse_b": pa.float64(),
    "ellipse_angle": pa.float64(),
    "is_standard_plane": pa.bool_(),
}
MASK_COLUMN = "mask_path"
#: train | val | test (any case, spaces ignored) puts the row's patient in that split; empty: the
#: hash of the patient id decides (:func:`split_of`).
SPLIT_COLUMN = "split"
OPTIONAL_COLUMNS = (MASK_COLUMN, SPLIT_COLUMN, *LABEL_COLUMNS)
#: The fingerprint of the key that pseudonymised a row's ids (``k-`` + 16 hex digits;
#: ``preprocessing.importers.pseudonym``). Carried like any extra column (index, shard
#: metadata); a build refuses a CSV whose rows carry two different ones (their ids do not link).
PSEUDONYM_COLUMN = "pseudonym_key"
#: Build rejects a frame or mask whose header says more pixels (generous for ultrasound, whose
#: frames are under 2 Mpx; it stops decompression bombs before a byte is decoded).
DEFAULT_MAX_PIXELS = 50_000_000
PLANES = ("head", "abdomen", "femur")
ELLIPSE_COLUMNS = ("ellipse_cx", "ellipse_cy", "ellipse_a", "ellipse_b", "ellipse_angle")

def csv_cell(value) -> str:
    """How a frames CSV writes one value: empty for missing, true/false for booleans, shortest
    float repr, else str. Every writer of frames CSVs (synth, importers) uses it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(float(value)) if isinstance(value, float) else str(value)


def csv_text(columns: Sequence[str], rows: Iterable[dict]) -> str:
    """A CSV document (header + one line per row, cells by :func:`csv_cell`, ``\\n`` line ends):
    how every CSV the project writes is written (frames.csv, rejects.csv, per_image.csv, ...)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([csv_cell(row.get(c)) for c in columns] for row in rows)
    return buf.getvalue()


def ellipse_perimeter(a: float, b: float) -> float:
    """Perimeter of an ellipse with semi-axes a, b (Ramanujan's first approximation): the
    definition of ``hc_mm`` (in mm when a, b are) for every writer and evaluator."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------
SPLITS = ("train", "val", "test")


def split_of(patient_id: str, val_fraction: float, test_fraction: float, seed: int = 0) -> str:
    """The split of a patient the CSV does not place: a pure function of (id, seed, fractions).

    A patient's position u in [0, 1) comes from a hash of its id, so its split never depends on
    which other patients are in the CSV: growing a cohort and rebuilding never moves a test
    patient into train (a leak across dataset versions that rank-based splitting would allow).
    u < test_fraction -> test; u < test_fraction + val_fraction -> val; else train.
    """
    check_fractions(val_fraction, test_fraction)
    digest = hashlib.sha256(f"{seed}\x00{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


DEFAULT_FRACTION = 0.1   # of val and of test, for a split the CSV does not name


def resolve_fractions(val_fraction: float | None, test_fraction: float | None,
                      named: set[str] = frozenset()) -> tuple[float, float]:
    """(val, test) fractions of the hash split. A fraction left as None is DEFAULT_FRACTION, or
    0 when the CSV's split column names that split: a CSV that says which rows are the test set
    (HC18's official one, a hospital's held-out patients) gets no hashed patients added to it."""
    val, test = (f if f is not None else 0.0 if name in named else DEFAULT_FRACTION
                 for name, f in (("val", val_fraction), ("test", test_fraction)))
    check_fractions(val, test)
    return val, test


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Each fraction in [0, 1] and together at most 1; test fraction 1 (every patient the CSV
    does not place goes to test) leaves none for val, whatever the val fraction."""
    for name, f in (("val fraction", val_fraction), ("test fraction", test_fraction)):
        if not 0.0 <= f <= 1.0:
            raise SonostreamError(f"{name} must be in [0, 1], got {f}")
    if test_fraction < 1.0 and val_fraction + test_fraction > 1.0:
        raise SonostreamError(
            f"val fraction + test fraction must be <= 1 (got {val_fraction} + {test_fraction}); "
            "lower one of them (--test-fraction 1 alone puts every patient in test)")


def parse_split(text: str) -> str | None:
    """A ``split`` cell: ``train``/``val``/``test`` (any case, spaces ignored), None if empty;
    SonostreamError otherwise."""
    value = text.strip().lower()
    if value and value not in SPLITS:
        raise SonostreamError(f"split {text!r} is not one of {', '.join(SPLITS)} (or empty)")
    return value or None


# ---------------------------------------------------------------------------------------------
# Frame order within a video
# ---------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_CHUNKS = re.compile(r"(\d+)")


def is_number(text: str) -> bool:
    """A plain decimal number (``7``, ``007``, ``-0.5``, ``1e2``), surrounding spaces allowed.
    Stricter than ``float``: no ``1_0``, ``nan``, ``inf``, ``0x10`` or non-ASCII digits."""
    return _NUMBER.fullmatch(text.strip()) is not None


def parse_number(text: str, name: str) -> float | None:
    """A numeric CSV cell: None when empty, its finite value when :func:`is_number`, else a
    SonostreamError naming the column."""
    if text.strip() == "":
        return None
    if not is_number(text):
        raise SonostreamError(f"{name} {text!r} is not a number; write a plain decimal such as "
                              "0.14 or 1e-1 (no nan, inf or underscores), or leave it empty")
    value = float(text)
    if not math.isfinite(value):
        raise SonostreamError(f"{name} {text!r} is out of range; write a finite number")
    return value


def frame_identity(frame_id: str) -> tuple:
    """What makes two frame ids of a video the same frame: the same text once surrounding spaces
    are stripped, or, for numbers, the same value (``1``, ``01``, `` 1``, ``1.0`` are one frame)."""
    text = frame_id.strip()
    if is_number(text):
        try:
            return (0, decimal.Decimal(text).normalize())
        except decimal.DecimalException:  # an exponent beyond any frame count: compare as text
            pass
    return (1, text)


def natural_key(text: str) -> tuple:
    """Sort key that puts ``frame_2`` before ``frame_10`` (digits compare as numbers)."""
    parts = _CHUNKS.split(text)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts)


def frame_order(frame_ids: Sequence[str]) -> list[int]:
    """Positions of ``frame_ids`` in temporal order.

    Numeric when every id of the video is a number (``007`` -> 7, ``1e2`` -> 100, compared
    exactly, not as floats), otherwise natural order of the stripped ids. Ids of distinct
    :func:`frame_identity` never tie, so the order does not depend on the input order.
    """
    if frame_ids and all(is_number(f) for f in frame_ids):
        key = [decimal.Decimal(f.strip()) for f in frame_ids]
        return sorted(range(len(frame_ids)), key=key.__getitem__)
    keys = [natural_key(f.strip()) for f in frame_ids]
    return sorted(range(len(frame_ids)), key=keys.__getitem__)


# ---------------------------------------------------------------------------------------------
# Keys and member names
# ---------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KEY = re.compile(r"^[A-Za-z0-9_-]+/\d{6,}$")
IMAGE_EXT = {"jpeg": "jpg", "png": "png"}
MASK_EXT = "mask.png"
META_EXT = "json"


def video_key(patient_id: str, video_name: str) -> str:
    """A dot-free, slash-free key naming one video of one patient, unique per (patient, video).

    Readable when the ids are plain (``p007__sweep_01``); when an id needs escaping (dots,
    spaces, slashes, non-ASCII) a short hash of the exact ids is appended so that two ids which
    escape to the same text still get different keys.
    """
    safe_p, safe_v = _UNSAFE.sub("-", patient_id), _UNSAFE.sub("-", video_name)
    key = f"{safe_p}__{safe_v}"
    # Plain ids map to "<patient>__<video>", which splits back uniquely as long as the patient
    # id has no "__" and does not end in "_" and the video name has no "__" and does not start
    # with "_"; anything else gets the hash.
    ambiguous = ("__" in patient_id or "__" in video_name or patient_id.endswith("_")
                 or video_name.startswith("_"))
    if safe_p != patient_id or safe_v != video_name or ambiguous:
        digest = hashlib.sha256(f"{patient_id}\x00{video_name}".encode()).hexdigest()[:8]
        key = f"{key}-{digest}"
    return key


def sample_key(vkey: str, frame_index: int) -> str:
    return f"{vkey}/{frame_index:06d}"


def check_key(key: str) -> str:
    if not _KEY.match(key):
        raise SonostreamError(f"invalid sample key {key!r}: expected '<video_key>/<6+ digits>', no "
                              f"dots")
    return key


def split_key(member_name: str) -> tuple[str, str]:
    """``'v/000001.mask.png'`` -> ``('v/000001', 'mask.png')`` (the WebDataset convention)."""
    head, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        raise SonostreamError(f"tar member {member_name!r} has no extension")
    return (f"{head}/{stem}" if head else stem), ext


# ---------------------------------------------------------------------------------------------
# Shards, manifest, rejects
# ---------------------------------------------------------------------------------------------
SHARDS_DIR = "shards"
INDEX_FILE = "index.parquet"
MANIFEST_FILE = "manifest.json"
REJECTS_FILE = "rejects.csv"
WORK_DIR = ".work"  # resumable state of an unfinished build; removed when the build finishes
REJECT_COLUMNS = ("csv_line", "frame_path", "patient_id", "video_name", "frame_id", "reason")


def shard_prefix(split: str, part: int | None = None) -> str:
    """What every shard name of ``split`` (and of build part ``part``) starts with: ``train-``,
    or ``train-p003-`` for part 3 of a partitioned build, so parts never share a name."""
    if split not in SPLITS:
        raise SonostreamError(f"unknown split {split!r}; expected one of {SPLITS}")
    return f"{split}-" if part is None else f"{split}-p{part:03d}-"


def shard_name(split: str, number: int, part: int | None = None) -> str:
    return f"{shard_prefix(split, part)}{number:06d}.tar"


# ---------------------------------------------------------------------------------------------
# index.parquet
# ---------------------------------------------------------------------------------------------
#: Columns every index has, in order. Labels (LABEL_COLUMNS) follow, then any extra CSV columns
#: as strings. Geometry: ``geometry.Letterbox.of_stored(src_height, src_width, height, width)``
#: maps stored <-> source pixels (``scale``, ``pad_x``, ``pad_y`` are that letterbox's); label
#: pixels and ``pixel_size_mm`` are in stored coordinates.
CORE_FIELDS = (
    pa.field("key", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("image_offset", pa.int64(), nullable=False),  # byte offset of the image member's data
    pa.field("image_size", pa.int64(), nullable=False),  # byte size of the image member
    pa.field("mask_offset", pa.int64()),  # null: no mask (as mask_size, mask_crc32)
    pa.field("mask_size", pa.int64()),
    pa.field("image_crc32", pa.int64(), nullable=False),  # zlib.crc32 of the image member's bytes
    pa.field("mask_crc32", pa.int64()),                   # ... of the mask member's
    pa.field("patient_id", pa.string(), nullable=False),
    pa.field("video_name", pa.string(), nullable=False),
    pa.field("video_key", pa.string(), nullable=False),
    pa.field("frame_id", pa.string(), nullable=False),
    pa.field("frame_index", pa.int32(), nullable=False),
    pa.field("num_frames", pa.int32(), nullable=False),  # frames of this video in the index
    pa.field("split", pa.string(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("src_height", pa.int32(), nullable=False),
    pa.field("src_width", pa.int32(), nullable=False),
    pa.field("scale", pa.float64(), nullable=False),
    pa.field("pad_x", pa.int32(), nullable=False),
    pa.field("pad_y", pa.int32(), nullable=False),
    pa.field("has_mask", pa.bool_(), nullable=False),
    pa.field("source_path", pa.string(), nullable=False),  # frame_path exactly as in the CSV
)
CHECKSUM_COLUMNS = ("image_crc32", "mask_crc32")   # since format 3 (CHECKSUMS_SINCE)
RESERVED_COLUMNS = frozenset(f.name for f in CORE_FIELDS) - {"patient_id", "video_name", "frame_id",
                                                             SPLIT_COLUMN}


def index_schema(extra_columns: Iterable[str] = ()) -> pa.Schema:
    fields = list(CORE_FIELDS)
    fields += [pa.field(name, typ) for name, typ in LABEL_COLUMNS.items()]
    fields += [pa.field(name, pa.string()) for name in extra_columns]
    return pa.schema(fields, metadata={FORMAT_VERSION_KEY: str(FORMAT_VERSION)})


def member_crc32(data) -> int:
    """The checksum ``image_crc32`` / ``mask_crc32`` hold: ``zlib.crc32`` of a member's bytes
    (unsigned, 0 .. 2**32-1). zlib releases the GIL on large buffers, so decode threads that
    check it stay parallel."""
    return zlib.crc32(data)


def check_index_schema(schema: pa.Schema, version: int = FORMAT_VERSION) -> list[str]:
    """Names the ways ``schema`` departs from the contract of format ``version`` (empty list:
    it conforms). Format 2 has no checksum columns."""
    problems = []
    for field in (*CORE_FIELDS, *(pa.field(n, t) for n, t in LABEL_COLUMNS.items())):
        if version < CHECKSUMS_SINCE and field.name in CHECKSUM_COLUMNS:
            continue
        if field.name not in schema.names:
            problems.append(f"column {field.name!r} is missing")
        elif not schema.field(field.name).type.equals(field.type):
            problems.append(
                f"column {field.name!r} is {schema.field(field.name).type}, expected {field.type}"
            )
    return problems
