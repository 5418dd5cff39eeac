"""Reads and checks a frames CSV, and turns it into the ordered list of videos to build.

Structural problems (no such file, empty CSV, missing or reserved columns) stop the build with
a ``CsvError`` that names the file, the column and the fix. Row problems (empty ids, bad label
values, duplicate frames) do not: the row goes to rejects with its reason. No image is opened
here; that happens in the build workers.

The ``split`` column states the cohort's design, so its problems are the CSV's, not a row's: a
value other than train/val/test, or a patient given two splits, stops the build (rejecting such
rows would silently shrink a held-out set, and guessing their split could leak a held-out
patient into train). A patient's split is the one its rows give; a patient whose cells are all
empty gets the hash split (``format.split_of``); the empty cells of a patient with a given split
follow it, so a patient never spans two splits.
"""
from __future__ import annotations

import csv
import difflib
import hashlib
import os
from dataclasses import dataclass, field

import pandas as pd

from . import format as fmt
from .format import SonostreamError


class CsvError(SonostreamError):
    """The CSV as a whole cannot be built; the message says how to fix it."""


@dataclass
class FrameRow:
    csv_line: int  # line number in the CSV file (the header is line 1)
    frame_path: str  # as written in the CSV
    path: str  # resolved against the CSV's folder
    mask_path: str | None
    frame_id: str
    labels: dict  # LABEL_COLUMNS -> typed value or None
    extras: dict  # extra CSV columns -> string or None


@dataclass
class Video:
    patient_id: str
    video_name: str
    key: str
    split: str
    frames: list[FrameRow] = field(default_factory=list)  # in temporal order


@dataclass
class Plan:
    csv_path: str
    num_rows: int
    videos: list[Video]  # split order (train, val, test), then a seeded shuffle
    rejects: list[dict]  # rows rejected before any image is read
    extra_columns: list[str]
    warnings: list[str] = field(default_factory=list)  # e.g. a misspelled optional column


def reject(row_line: int, frame_path: str, patient_id: str, video_name: str, frame_id: str,
           reason: str) -> dict:
    return dict(zip(fmt.REJECT_COLUMNS,
                    (row_line, frame_path, patient_id, video_name, frame_id, reason)))


def read_frames_csv(csv_path: str) -> pd.DataFrame:
    """The CSV as strings (``007`` stays ``007``; empty cells are empty strings)."""
    if not os.path.isfile(csv_path):
        raise CsvError(f"{csv_path}: no such file; pass the frames CSV with --csv")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False,
                         skipinitialspace=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise CsvError(f"{csv_path}: the file is empty; it needs a header row "
                       f"({', '.join(fmt.REQUIRED_COLUMNS)}) and one row per frame") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CsvError(f"{csv_path}: not a readable CSV ({e}); save it as UTF-8 CSV") from None
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        header = [c.strip() for c in next(csv.reader(f), [])]  # pandas renames duplicates
    df.columns = [str(c).strip() for c in df.columns]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise CsvError(f"{csv_path}: column(s) {dupes} appear more than once; keep one of each")
    missing = [c for c in fmt.REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CsvError(
            f"{csv_path}: missing column(s) {', '.join(repr(c) for c in missing)}; a frames CSV "
            f"needs {', '.join(fmt.REQUIRED_COLUMNS)} (optional: {', '.join(fmt.OPTIONAL_COLUMNS)})"
            f"; found {list(df.columns)}")
    reserved = sorted(set(df.columns) & fmt.RESERVED_COLUMNS)
    if reserved:
        raise CsvError(f"{csv_path}: column(s) {reserved} are reserved for the index; rename them")
    if len(df) == 0:
        raise CsvError(f"{csv_path}: has a header but no rows; add one row per frame")
    return df


def _parse_float(text: str, name: str, positive: bool) -> float | None:
    value = fmt.parse_number(text, name)  # strict: no 1_0, nan or inf (float() takes them)
    if value is not None and positive and value <= 0:
        raise SonostreamError(f"{name} {text!r} must be a positive number")
    return value


_TRUE, _FALSE = {"true", "1", "yes", "y", "t"}, {"false", "0", "no", "n", "f"}


def parse_labels(cells: dict) -> dict:
    """Typed label values from their CSV text; ValueError names the bad cell."""
    out: dict = {}
    plane = cells.get("plane", "").strip().lower()
    if plane and plane not in fmt.PLANES:
        raise SonostreamError(f"plane {cells['plane']!r} is not one of {', '.join(fmt.PLANES)}")
    out["plane"] = plane or None
    out["pixel_size_mm"] = _parse_float(cells.get("pixel_size_mm", ""), "pixel_size_mm", True)
    out["hc_mm"] = _parse_float(cells.get("hc_mm", ""), "hc_mm", True)
    for name in fmt.ELLIPSE_COLUMNS:
        out[name] = _parse_float(cells.get(name, ""), name, name in ("ellipse_a", "ellipse_b"))
    given = [n for n in fmt.ELLIPSE_COLUMNS if out[n] is not None]
    if given and len(given) != len(fmt.ELLIPSE_COLUMNS):
        raise SonostreamError(f"ellipse is incomplete: give all of "
                              f"{', '.join(fmt.ELLIPSE_COLUMNS)} "
                              f"or none (found {', '.join(given)})")
    flag = cells.get("is_standard_plane", "").strip().lower()
    if flag and flag not in _TRUE | _FALSE:
        raise SonostreamError(f"is_standard_plane {cells['is_standard_plane']!r} is not true/false")
    out["is_standard_plane"] = (flag in _TRUE) if flag else None
    return out


def video_order_key(seed: int, key: str) -> str:
    """Seeded shuffle of videos within a split (independent of CSV row order)."""
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def _csv_splits(csv_path: str, records: list[dict], videos: dict) -> dict[str, str]:
    """patient id -> the split its rows in the plan give (patients without one are absent).
    CsvError for a value that is not a split (any row) or a patient given two (kept rows)."""
    bad = []
    for i, cells in enumerate(records):
        try:
            fmt.parse_split(cells[fmt.SPLIT_COLUMN])
        except ValueError:
            bad.append(f"line {i + 2}: {cells[fmt.SPLIT_COLUMN]!r}")
    if bad:
        raise CsvError(f"{csv_path}: column {fmt.SPLIT_COLUMN!r} holds {len(bad)} value(s) that "
                       f"are not a split ({'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''})"
                       f"; write {', '.join(fmt.SPLITS)} or leave the cell empty for the hash "
                       "split")
    given: dict[str, dict[str, int]] = {}  # patient -> split -> first line giving it
    for video in videos.values():
        for row in video.frames:
            split = fmt.parse_split(records[row.csv_line - 2][fmt.SPLIT_COLUMN])
            if split:
                lines = given.setdefault(video.patient_id, {})
                lines[split] = min(lines.get(split, row.csv_line), row.csv_line)
    clashes = {p: s for p, s in given.items() if len(s) > 1}
    if clashes:
        shown = "; ".join(f"patient {p!r}: " + ", ".join(f"{s} (line {n})" for s, n in
                                                         sorted(at.items(), key=lambda x: x[1]))
                          for p, at in sorted(clashes.items())[:5])
        raise CsvError(f"{csv_path}: {len(clashes)} patient(s) are given more than one split "
                       f"({shown}); all frames of a patient must be in one split: give every row "
                       f"of the patient the same {fmt.SPLIT_COLUMN!r} (or leave it empty)")
    return {p: next(iter(s)) for p, s in given.items()}


def check_pseudonym_keys(csv_path: str, records: list[dict]) -> None:
    """CsvError when the rows were pseudonymised with more than one key (their ids do not link:
    one patient would have two ids, and could land in two splits)."""
    lines: dict[str, list[int]] = {}  # key fingerprint -> its lines
    for i, cells in enumerate(records):
        key = cells[fmt.PSEUDONYM_COLUMN].strip()
        if key:
            lines.setdefault(key, []).append(i + 2)
    if len(lines) > 1:
        shown = "; ".join(f"{key} on {len(at)} row(s), first line {at[0]}"
                          + (f", last line {at[-1]}" if len(at) > 1 else "")
                          for key, at in sorted(lines.items(), key=lambda x: x[1][0]))
        raise CsvError(f"{csv_path}: column {fmt.PSEUDONYM_COLUMN!r} names {len(lines)} different "
                       f"pseudonym keys ({shown}): these rows' ids were made with different key "
                       "files, so one patient can appear under two ids. Re-import the sources "
                       "with one key (`sonostream import ... --key-file KEY`) and build their "
                       "CSVs together, or build them as separate datasets")


def plan_build(csv_path: str, val_fraction: float | None, test_fraction: float | None,
               seed: int) -> Plan:
    """None fractions: see ``fmt.resolve_fractions`` (0 for a split the CSV names)."""
    fmt.resolve_fractions(val_fraction, test_fraction)
    df = read_frames_csv(csv_path)
    base = os.path.dirname(os.path.abspath(csv_path))
    label_cols = [c for c in fmt.LABEL_COLUMNS if c in df.columns]
    extra_cols = [c for c in df.columns if c not in fmt.REQUIRED_COLUMNS
                  and c not in fmt.OPTIONAL_COLUMNS]
    has_mask_col = fmt.MASK_COLUMN in df.columns
    rejects: list[dict] = []
    videos: dict[tuple[str, str], Video] = {}
    seen: dict[tuple, tuple[int, str]] = {}  # (patient, video, frame identity) -> (line, id)
    columns = list(df.columns)
    records = [dict(zip(columns, values)) for values in zip(*(df[c].tolist() for c in columns))]
    if fmt.PSEUDONYM_COLUMN in df.columns:
        check_pseudonym_keys(csv_path, records)
    for i, cells in enumerate(records):
        line = i + 2
        fp, pid, vid, fid = (cells[c] for c in fmt.REQUIRED_COLUMNS)
        empty = [c for c in fmt.REQUIRED_COLUMNS if cells[c].strip() == ""]
        if empty:
            rejects.append(reject(line, fp, pid, vid, fid, f"empty {', '.join(empty)}"))
            continue
        ident = (pid, vid, fmt.frame_identity(fid))  # 1, 01 and " 1" are one frame
        if ident in seen:
            first, first_id = seen[ident]
            same = "" if first_id == fid else f" ({first_id!r} and {fid!r} are the same frame id)"
            rejects.append(reject(line, fp, pid, vid, fid,
                                  f"duplicate frame: same patient_id, video_name and frame_id "
                                  f"as line {first}{same}"))
            continue
        seen[ident] = (line, fid)
        fid = fid.strip()  # the stored frame_id: the CSV's text without surrounding spaces
        try:
            labels = parse_labels({c: cells[c] for c in label_cols})
        except ValueError as e:
            rejects.append(reject(line, fp, pid, vid, fid, str(e)))
            continue
        mask = cells[fmt.MASK_COLUMN].strip() if has_mask_col else ""
        row = FrameRow(line, fp, os.path.join(base, fp), os.path.join(base, mask) if mask else None,
                       fid, labels, {c: (cells[c] if cells[c] != "" else None) for c in extra_cols})
        video = videos.get((pid, vid))
        if video is None:
            video = videos[(pid, vid)] = Video(pid, vid, fmt.video_key(pid, vid), "")
        video.frames.append(row)
    chosen = _csv_splits(csv_path, records, videos) if fmt.SPLIT_COLUMN in df.columns else {}
    val_fraction, test_fraction = fmt.resolve_fractions(val_fraction, test_fraction,
                                                        set(chosen.values()))
    for video in videos.values():
        video.split = chosen.get(video.patient_id) or fmt.split_of(
            video.patient_id, val_fraction, test_fraction, seed)
    keys: dict[str, tuple[str, str]] = {}
    for ident, video in videos.items():
        if video.key in keys:
            raise CsvError(f"{csv_path}: videos {keys[video.key]} and {ident} map to the same key "
                           f"{video.key!r}; rename one of them")
        keys[video.key] = ident
        order = fmt.frame_order([f.frame_id for f in video.frames])
        video.frames = [video.frames[j] for j in order]
    ordered = sorted(videos.values(), key=lambda v: (fmt.SPLITS.index(v.split),
                                                     video_order_key(seed, v.key)))
    return Plan(csv_path, len(records), ordered, rejects, extra_cols,
                column_warnings(csv_path, extra_cols))


def column_warnings(csv_path: str, extra_cols: list[str]) -> list[str]:
    """A warning per extra column whose name looks like a misspelled known one (``pixel_size``,
    ``mask``, ``Plane``): it is still carried as text, but the label it meant is missing."""
    known = [*fmt.REQUIRED_COLUMNS, *fmt.OPTIONAL_COLUMNS]
    out = []
    for col in extra_cols:
        name = col.strip().lower()
        match = [k for k in known if k == name or k.startswith(name + "_")]
        match = match or difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if match:
            out.append(f"{csv_path}: column {col!r} is not a known column; did you mean "
                       f"{match[0]!r}? It is carried as text, so the dataset has no "
                       f"{match[0]}; rename the column if that was meant")
    return out
