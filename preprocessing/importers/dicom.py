"""`sonostream import dicom`: single- and multi-frame ultrasound DICOM -> frames CSV.

Every file with pixel data is one video (a single image is a one-frame video), frames in file
order. Pixels go through pydicom (with pylibjpeg for JPEG/JPEG-LS, Pillow for JPEG 2000, its own
RLE decoder): YBR is converted to RGB by the decoder, PALETTE COLOR through its lookup table,
MONOCHROME1 is inverted, and deeper than 8 bits is windowed (VOI window when present, else the
file's min..max) to 8 bits. Colour frames become luma plus a colour mask (see ``sector``).

patient_id = PatientID (else ``anon-<hash of the path>``), video_name = SOPInstanceUID (else the
file name), frame_id = 0-based frame number; pixel_size_mm from the B-mode ultrasound region
(PhysicalDeltaX in cm), else PixelSpacing. The region also bounds the sector search.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from preprocessing.importers.common import (ImportProblem, ImportResult, ImportWriter,
                                            crop_columns, find_inputs, path_hash)
from preprocessing.importers.sector import Box, SectorProbe, split_colour

EXTENSIONS = (".dcm", ".dicom", ".dic")
CACHE_BYTES = 512 * 2**20  # loops up to this size are decoded once; larger ones twice
CM, TISSUE, SPATIAL_2D = 3, 1, 1  # PhysicalUnits code for cm, RegionDataType, RegionSpatialFormat


def looks_like_dicom(path: str) -> bool:
    """For folder search: a DICOM extension, or no extension and the 'DICM' marker."""
    name = os.path.basename(path)
    if name.upper() == "DICOMDIR":
        return False
    ext = os.path.splitext(name)[1].lower()
    if ext in EXTENSIONS:
        return True
    if ext:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def import_dicom(inputs: list[str], out_dir: str, crop_sector: bool = True,
                 overwrite: bool = False, progress: bool = True) -> ImportResult:
    files, missing = find_inputs(inputs, looks_like_dicom)
    if not files and not missing:
        raise ValueError(f"no DICOM files in {', '.join(inputs)} (looked for {', '.join(EXTENSIONS)}"
                         " and extension-less files with a DICM marker)")
    writer = ImportWriter(out_dir, "dicom", overwrite)
    for path in missing:
        writer.reject(path, f"{path}: no such file or directory")
    for path in tqdm(files, desc="dicom", unit="file", disable=not progress):
        with writer.item(path):
            _import_file(writer, path, crop_sector)
    return writer.finish()


def read_dataset(path: str):
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ImportProblem(f"{path}: unreadable DICOM file ({type(e).__name__}: {e})") from None
    if ds is not None:
        return _with_pixels(ds, path)
    try:  # no preamble/DICM marker: accept a bare dataset only if it clearly is an image
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" in ds and "Rows" in ds and "Columns" in ds:
            return ds
    except Exception:
        pass
    raise ImportProblem(f"{path}: not a DICOM file (no 'DICM' marker and not a readable dataset)")


def _with_pixels(ds, path: str):
    if "PixelData" not in ds:
        kind = ds.get("SOPClassUID")
        kind = f" ({kind.name})" if kind is not None and hasattr(kind, "name") else ""
        raise ImportProblem(f"{path}: DICOM file without pixel data{kind}; nothing to import")
    return ds


def check_decoder(ds, path: str) -> None:
    """ImportProblem naming the transfer syntax and what to install when no decoder is there."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import ImplicitVRLittleEndian
    ts = ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)
    if not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImportProblem(f"{path}: transfer syntax {ts.name} ({ts}) has no pixel decoder in "
                            "pydicom; convert the file (e.g. dcmdjpeg/gdcmconv) first") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise ImportProblem(f"{path}: no decoder installed for transfer syntax {ts.name} ({ts}); "
                            f"install one of: {needs}")


class Frames:
    """Iterates a file's frames as (gray uint8, colour mask or None); keeps them if small."""

    def __init__(self, ds, path: str):
        self.ds, self.path = ds, path
        self.photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        self.count = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.get("BitsAllocated", 8))
        self.window = _window(ds) if bits > 8 and self.photometric.startswith("MONO") else None
        size = int(ds.Rows) * int(ds.Columns) * self.count
        self.cache: list | None = [] if size * 2 <= CACHE_BYTES else None
        self.cached = False
        if self.window is None and bits > 8 and self.photometric.startswith("MONO"):
            lo, hi = np.inf, -np.inf  # one extra pass: the file's own range
            for raw in self._raw():
                lo, hi = min(lo, int(raw.min())), max(hi, int(raw.max()))
            self.window = (lo, max(hi, lo + 1)) if hi >= lo else None

    def _raw(self):
        from pydicom.pixels import iter_pixels
        try:
            yield from iter_pixels(self.ds, as_rgb=True)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError) as e:
            raise ImportProblem(f"{self.path}: cannot decode the pixel data ({e})") from None

    def __iter__(self):
        if self.cached:
            yield from self.cache
            return
        for raw in self._raw():
            frame = self._display(raw)
            if self.cache is not None:
                self.cache.append(frame)
            yield frame
        self.cached = self.cache is not None

    def _display(self, raw: np.ndarray):
        from pydicom.pixels import apply_color_lut
        if self.photometric == "PALETTE COLOR":
            raw = apply_color_lut(raw, self.ds)
        if raw.ndim == 3 and raw.shape[2] == 3:
            if raw.dtype != np.uint8:  # LUT or sample depth above 8 bits
                raw = (raw >> (8 * raw.dtype.itemsize - 8)).astype(np.uint8)
            return split_colour(raw)
        if raw.ndim != 2:
            raise ImportProblem(f"{self.path}: unsupported pixel layout {raw.shape}")
        if self.window is not None:
            lo, hi = self.window
            raw = np.clip((raw.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
            raw = np.round(raw).astype(np.uint8)
        elif raw.dtype != np.uint8:
            raw = np.clip(raw, 0, 255).astype(np.uint8)
        if self.photometric == "MONOCHROME1":
            raw = 255 - raw
        return raw, None


def _window(ds) -> tuple[float, float] | None:
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    first = lambda v: float(v[0] if hasattr(v, "__len__") and not isinstance(v, str) else v)
    c, w = first(centre), first(width)
    return (c - w / 2, c + w / 2) if w > 0 else None


def region(ds, h: int, w: int) -> tuple[Box | None, float | None]:
    """(union box of the B-mode ultrasound regions, pixel size in mm), either may be None.

    Regions whose corners fall outside the frame (a resized file that kept its header) are
    ignored. Without regions, PixelSpacing (mm) gives the pixel size."""
    boxes, size = [], None
    for r in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            x0, y0 = int(r.RegionLocationMinX0), int(r.RegionLocationMinY0)
            x1, y1 = int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        tissue = r.get("RegionDataType") == TISSUE
        if not (tissue or r.get("RegionSpatialFormat") == SPATIAL_2D):
            continue
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            continue
        boxes.append((tissue, (x0, y0, x1 + 1, y1 + 1)))
        if size is None and r.get("PhysicalUnitsXDirection") == CM and r.get("PhysicalDeltaX"):
            size = abs(float(r.PhysicalDeltaX)) * 10.0
    if any(t for t, _ in boxes):
        boxes = [b for b in boxes if b[0]]
    box = None
    if boxes:
        box = (min(b[1][0] for b in boxes), min(b[1][1] for b in boxes),
               min(w, max(b[1][2] for b in boxes)), min(h, max(b[1][3] for b in boxes)))
    if size is None and ds.get("PixelSpacing"):
        size = float(ds.PixelSpacing[1])  # column spacing: mm between horizontal neighbours
    return box, size


def _frame_time_ms(ds) -> float | None:
    if ds.get("FrameTime"):
        return float(ds.FrameTime)
    for rate in ("CineRate", "RecommendedDisplayFrameRate"):
        if ds.get(rate):
            return round(1000.0 / float(ds.get(rate)), 3)
    return None


class Loop:
    """One DICOM file opened for its frames: ``images()`` yields them as the importer stores
    them (cropped to the sector when asked); ``pixel_size_mm`` may be None."""

    def __init__(self, path: str, crop_sector: bool = True):
        self.path = path
        self.ds = ds = read_dataset(path)
        check_decoder(ds, path)
        self.frames = Frames(ds, path)
        self.count = self.frames.count
        self.h, self.w = int(ds.Rows), int(ds.Columns)
        box, self.pixel_size_mm = region(ds, self.h, self.w)
        self.sector = None
        if crop_sector:
            probe = SectorProbe()
            for gray, colour in self.frames:
                probe.add(gray, colour)
            self.sector = probe.find(box)
        self.frame_time_ms = _frame_time_ms(ds) if self.count > 1 else None

    def images(self):
        n = 0
        for n, (gray, colour) in enumerate(self.frames, 1):
            if gray.shape != (self.h, self.w):
                raise ImportProblem(f"{self.path}: frame {n - 1} is {gray.shape[1]}x{gray.shape[0]}, "
                                    f"the header says {self.w}x{self.h}")
            yield self.sector.apply(gray, colour) if self.sector else gray
        if n == 0:
            raise ImportProblem(f"{self.path}: the pixel data holds no frame")


def _import_file(writer: ImportWriter, path: str, crop_sector: bool) -> None:
    loop = Loop(path, crop_sector)
    ds = loop.ds
    patient = str(ds.get("PatientID") or "").strip() or f"anon-{path_hash(path)}"
    video = str(ds.get("SOPInstanceUID") or "").strip() or Path(path).stem
    columns = {"pixel_size_mm": loop.pixel_size_mm, "source_file": path,
               "manufacturer": str(ds.get("Manufacturer") or ""),
               "frame_time_ms": loop.frame_time_ms,
               **(crop_columns(loop.sector) if loop.sector else {})}
    writer.start_video(patient, video, path)
    for n, image in enumerate(loop.images()):
        writer.add_frame(patient, video, n, image, **columns)
