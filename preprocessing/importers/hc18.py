"""`sonostream import hc18`: the HC18 challenge layout -> frames CSV with masks, ellipses and HC.

Layout (van den Heuvel et al., 2018, https://hc18.grand-challenge.org)::

    ROOT/training_set/NNN_HC.png              image (NNN = examination number)
    ROOT/training_set/NNN_HC_Annotation.png   1-pixel ellipse outline of the skull
    ROOT/training_set/NNN_2HC.png             a second image of the same examination
    ROOT/training_set_pixel_size_and_HC.csv   filename,pixel size(mm),head circumference (mm)
    ROOT/test_set/NNN_HC.png                  no annotation, no HC
    ROOT/test_set_pixel_size.csv              filename,pixel size(mm)

The CSVs may also sit inside their set's folder. The outline is filled into a 0/255 mask (pixels
the outside cannot reach) and fitted with an ellipse (OpenCV's least-squares fit of the outline
pixels); the reference HC goes to ``hc_mm``, the fitted ellipse's perimeter (Ramanujan) times
the pixel size to ``hc_fit_mm``. The examination number is the patient id, so ``010_HC`` and
``010_2HC`` share a split; test-set examinations are numbered separately, so their patient ids
get a ``test-`` prefix.

The official split is kept: test-set rows get ``split=test``; training-set rows leave it empty,
so the build's hash splits them (``build --test-fraction 0`` keeps them all out of test, and
split test is then exactly the official test set, as an HC18 submission needs).

With ``pseudonyms`` (``--pseudonymise``) the examination number and image name become keyed
hashes (``p-``, ``v-``; ``preprocessing.importers.pseudonym``) and ``source_file`` is left out, so
``sonostream evaluate`` cannot name its ``hc18.csv`` rows as HC18 does (the file names are public
challenge names: a submission is made from an import without it).
"""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import cv2
import numpy as np

from preprocessing import format as fmt
from preprocessing.format import SonostreamError
from preprocessing.imaging import ImageError, decode_gray, read_bytes
from preprocessing.importers import pseudonym
from preprocessing.importers.common import (ImportProblem, ImportResult, ImportWriter, ItemWriter,
                                            crop_columns)
from preprocessing.importers.journal import describe, fingerprint
from preprocessing.importers.parallel import check_workers, run_items
from preprocessing.sector import Sector, SectorProbe

SETS = {  # folder -> (CSV name, has annotations and HC)
    "training_set": ("training_set_pixel_size_and_HC.csv", True),
    "test_set": ("test_set_pixel_size.csv", False),
}
NAME = re.compile(r"^(\d+)_(\d*)HC\.png$", re.IGNORECASE)
ANNOTATION_SUFFIX = "_Annotation.png"


def import_hc18(root: str, out_dir: str, crop_sector: bool = False, overwrite: bool = False,
                progress: bool = True, workers: int = 1, pseudonyms=None) -> ImportResult:
    """``pseudonyms``: a ``pseudonym.Pseudonymiser`` hashing the ids; None keeps them."""
    check_workers(workers)
    root_path = Path(root)
    found = [s for s in SETS if (root_path / s).is_dir()]
    if not found:
        raise SonostreamError(f"{root} holds neither training_set/ nor test_set/; pass the folder "
                              f"of the HC18 download with --root")
    sets, stamped = [], []   # the layout is checked before anything in --out is touched
    for set_name in found:
        folder = root_path / set_name
        csv_name, annotated = SETS[set_name]
        csv_path = _find_csv(root_path, folder, csv_name)
        names = sorted(os.listdir(folder))
        images = [n for n in names if n.lower().endswith(".png")
                  and not n.endswith(ANNOTATION_SUFFIX)]
        sets.append((folder, csv_name, annotated, read_table(csv_path, annotated), images))
        stamped += [csv_path, *(folder / n for n in names)]
    options = {"crop_sector": crop_sector, "pseudonyms": describe(pseudonyms)}
    pseudonym.check_folder(out_dir, pseudonyms, overwrite)
    with ImportWriter(out_dir, "hc18", overwrite,
                      fingerprint("hc18", options, stamped)) as writer:
        pseudonym.record_folder(out_dir, pseudonyms)
        for folder, csv_name, annotated, table, images in sets:
            for name in sorted(set(table) - set(images)):
                writer.reject(str(folder / name), f"{folder / name}: listed in {csv_name} but "
                              "there is no such image")
            tasks = [(str(folder / name), _import_image,
                      (folder, name, {name: table[name]} if name in table else {}, csv_name,
                       annotated, crop_sector, pseudonyms)) for name in images]
            run_items(writer, tasks, workers, progress, f"hc18 {folder.name}")
        return writer.finish()


def _find_csv(root: Path, folder: Path, name: str) -> Path:
    for path in (root / name, folder / name):
        if path.is_file():
            return path
    raise SonostreamError(f"{folder} has no {name} (looked in {root} and {folder}); the HC18 "
                          f"download ships it next to the image folders")


def read_table(path: Path, annotated: bool) -> dict[str, tuple[str, str]]:
    """filename -> (pixel size text, HC text) from an HC18 CSV (headers matched loosely)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in rows[0]] if rows else []

    def column(prefix: str) -> int:
        for i, h in enumerate(header):
            if h.startswith(prefix):
                return i
        raise SonostreamError(f"{path}: no column starting with {prefix!r} (header: {rows[:1]})")

    name_i, size_i = column("filename"), column("pixel size")
    hc_i = column("head circumference") if annotated else None
    table = {}
    for row in rows[1:]:
        if len(row) > name_i and row[name_i].strip():
            get = lambda i: row[i].strip() if i is not None and i < len(row) else ""
            table[row[name_i].strip()] = (get(size_i), get(hc_i))
    return table


def _number(text: str, what: str, name: str, csv_name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ImportProblem(f"{name}: {what} {text!r} in {csv_name} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ImportProblem(f"{name}: {what} {text!r} in {csv_name} must be positive")
    return value


def _import_image(writer: ItemWriter, folder: Path, name: str, table: dict, csv_name: str,
                  annotated: bool, crop_sector: bool, pseudonyms=None) -> None:
    match = NAME.match(name)
    if not match:
        raise ImportProblem(f"{folder / name}: not an HC18 image name (expected NNN_HC.png or "
                            "NNN_2HC.png)")
    if name not in table:
        raise ImportProblem(f"{folder / name}: missing from {csv_name}, so its pixel size is unknown")
    size_text, hc_text = table[name]
    pixel_size = _number(size_text, "pixel size", name, csv_name)
    image = _read(folder / name)
    columns = {"plane": "head", "pixel_size_mm": pixel_size, "is_standard_plane": True,
               "hc18_set": folder.name, "source_file": str(folder / name)}
    mask = None
    if not annotated:
        columns[fmt.SPLIT_COLUMN] = "test"   # the official test set (no annotations, no HC)
    else:
        columns["hc_mm"] = _number(hc_text, "head circumference", name, csv_name)
        ann_path = folder / (name[:-4] + ANNOTATION_SUFFIX)
        if not ann_path.is_file():
            raise ImportProblem(f"{folder / name}: no annotation {ann_path.name} next to it")
        outline = _read(ann_path) > 0
        if outline.shape != image.shape:
            raise ImportProblem(f"{ann_path}: annotation is {outline.shape[1]}x{outline.shape[0]} "
                                f"but the image is {image.shape[1]}x{image.shape[0]}")
        cx, cy, a, b, angle = fit_ellipse(outline)
        mask = fill_outline(outline, (cx, cy, a, b, angle))
        columns.update(ellipse_cx=cx, ellipse_cy=cy, ellipse_a=a, ellipse_b=b, ellipse_angle=angle,
                       hc_fit_mm=round(fmt.ellipse_perimeter(a, b) * pixel_size, 3))
    sector = Sector.whole(image.shape)
    if crop_sector:
        probe = SectorProbe()
        probe.add(image)
        sector = probe.find()
        x0, y0, x1, y1 = sector.box
        if mask is not None:
            mask = mask[y0:y1, x0:x1]
            columns["ellipse_cx"] -= x0
            columns["ellipse_cy"] -= y0
        columns.update(crop_columns(sector))
    exam = match.group(1)
    patient = exam if annotated else f"test-{exam}"
    video = name[:-4]
    if pseudonyms is not None:
        patient, video = pseudonyms.patient(patient), pseudonyms.video(video)
        del columns["source_file"]
        columns.update(pseudonyms.columns())
    writer.start_video(patient, video, str(folder / name))
    writer.add_frame(patient, video, 0, sector.apply(image), mask, **columns)


def _read(path: Path) -> np.ndarray:
    try:
        return decode_gray(read_bytes(str(path)))
    except ImageError as e:
        raise ImportProblem(f"{path}: {e}") from None


def fit_ellipse(outline: np.ndarray) -> tuple[float, float, float, float, float]:
    """(cx, cy, a, b, angle) of the ellipse through the outline's pixels: pixel units with (0, 0)
    the centre of the top-left pixel, semi-axes a >= b, angle of a from +x towards +y in
    radians, in (-pi/2, pi/2]."""
    ys, xs = np.nonzero(outline)
    if xs.size < 5:
        raise ImportProblem(f"annotation has {xs.size} outline pixels; an ellipse needs at least 5")
    (cx, cy), (w, h), theta = cv2.fitEllipse(np.column_stack([xs, ys]).astype(np.float32))
    a, b, deg = (w / 2, h / 2, theta) if w >= h else (h / 2, w / 2, theta + 90.0)
    deg = (deg + 90.0) % 180.0 - 90.0  # [-90, 90)
    angle = math.radians(deg if deg > -90.0 else 90.0)
    if not (b > 0 and math.isfinite(a) and math.isfinite(cx) and math.isfinite(cy)):
        raise ImportProblem("annotation is not an ellipse outline (the fit is degenerate)")
    return float(cx), float(cy), float(a), float(b), angle


def fill_outline(outline: np.ndarray, ellipse: tuple) -> np.ndarray:
    """0/255 mask: the outline and every pixel the image border cannot reach through 4-connected
    background. An outline with a gap lets the outside in; then the fitted ellipse is drawn."""
    h, w = outline.shape
    reach = np.zeros((h + 2, w + 2), np.uint8)
    reach[1:-1, 1:-1] = outline
    cv2.floodFill(reach, None, (0, 0), 2, flags=4)
    mask = np.where(reach[1:-1, 1:-1] == 2, 0, 255).astype(np.uint8)
    cx, cy, a, b, angle = ellipse
    if np.count_nonzero(mask) < 0.5 * math.pi * a * b:
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, ((cx, cy), (2 * a, 2 * b), math.degrees(angle)), 255, -1)
    return mask
