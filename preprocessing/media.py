"""Reading cine loops (video files, DICOM files) and writing mp4: what importers and eval share.

A *loop* is read as the importers store it: decoded (PyAV for video, pydicom for DICOM), turned
into 8-bit gray plus a colour mask, and cropped to the ultrasound sector when asked
(``preprocessing.sector``). ``sonostream import`` writes these frames to a frames CSV;
``sonostream segment-video`` segments them directly, so a loop is seen the same way by both.

Video: every ``stride``-th decoded frame is kept (its index in the file is its frame id). The
sector is found from the kept frames and applied to all of them, so a loop is decoded twice
unless its kept frames fit in CACHE_BYTES. A file that ends before the frames its container
lists (a cut-off copy: the mp4 moov's sample count, the avi header's, else the stated duration)
raises :class:`VideoTruncated` with both counts, or is read as far as it goes with a
:class:`VideoReport`; a cut non-faststart mp4 (no moov box) cannot be opened and says so.

DICOM: pixels through pydicom (with pylibjpeg for JPEG/JPEG-LS, Pillow for JPEG 2000, its own RLE
decoder; baseline-JPEG YBR and MONOCHROME loops through OpenCV, checked against pydicom on their
first frame: ``preprocessing.dicom_jpeg``): YBR is converted to RGB by the decoder, PALETTE COLOR through its lookup table,
MONOCHROME1 is inverted, and deeper than 8 bits is windowed (VOI window when present, else the
file's min..max) to 8 bits. pixel_size_mm from the B-mode ultrasound region (PhysicalDeltaX in
cm), else PixelSpacing; the region also bounds the sector search.

Every problem with a file raises :class:`MediaError` naming the file.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from preprocessing import atomic, dicom_jpeg
from preprocessing.format import SonostreamError
from preprocessing.sector import Box, SectorProbe, split_colour

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".m4v", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv")
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
CACHE_BYTES = 512 * 2**20  # loops up to this size are decoded once; larger ones twice
CM, TISSUE, SPATIAL_2D = 3, 1, 1  # PhysicalUnits code for cm, RegionDataType, RegionSpatialFormat


class MediaError(SonostreamError):
    """A file cannot be read as a loop; the message names it and says why."""


def is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def is_loop_file(path: str) -> bool:
    """A video or DICOM file (by extension, or the DICM marker of an extension-less file)."""
    return is_video(path) or looks_like_dicom(path)


def find_files(paths: list[str], wanted) -> tuple[list[str], list[str]]:
    """(files, missing): files given directly, plus files under given folders for which
    ``wanted(path)`` is true (searched recursively, sorted); paths that do not exist."""
    files, missing = [], []
    for p in paths:
        if os.path.isfile(p):
            files.append(p)
        elif os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)
                          if not n.startswith(".") and wanted(os.path.join(root, n))]
        else:
            missing.append(p)
    return list(dict.fromkeys(files)), missing


# ---------------------------------------------------------------------------------------------
# video files
# ---------------------------------------------------------------------------------------------
class VideoTruncated(MediaError):
    """The file ends before the frames its container lists (a cut-off copy or export)."""

    def __init__(self, path: str, decoded: int, expected: int, about: bool = False):
        self.path, self.decoded, self.expected, self.about = path, decoded, expected, about
        lists = "the duration its container states" if about else "the frames its container lists"
        super().__init__(f"{path}: truncated: {decoded} of {'about ' if about else ''}{expected} "
                         f"frames decoded (the file ends before {lists}); re-export or re-copy it")


class VideoReport:
    """Passed to :func:`decode_video` to read a truncated file anyway: ``truncated`` is set (a
    :class:`VideoTruncated`) when the frames run out early, instead of raising it."""

    def __init__(self):
        self.truncated: VideoTruncated | None = None


def _expected_frames(container, stream) -> tuple[int | None, bool]:
    """(frames the container lists, or an estimate from its duration; is it an estimate)."""
    if stream.frames:
        return int(stream.frames), False   # mp4/mov: the moov's sample count; avi: its header
    rate = stream.average_rate
    duration = None
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:   # mkv/webm: the segment's duration
        duration = container.duration / 1e6
    if not (rate and duration):
        return None, False
    return int(round(duration * float(rate))), True


def _truncated(whole: int, expected: int | None, about: bool) -> bool:
    if expected is None:
        return False
    # An estimate from the duration is not exact: only a clear shortfall counts.
    return whole < (expected - max(2, expected // 10) if about else expected)


def decode_video(path: str, stride: int = 1, report: VideoReport | None = None):
    """Yields (frame index, time in s or None, gray, colour mask) for every stride-th frame.

    A file that ends before the frames its container lists (``stream.frames``: the mp4 moov's
    sample count or the avi header's; else the duration times the frame rate) raises
    :class:`VideoTruncated` after its last frame, unless ``report`` is given (then
    ``report.truncated`` says so). A sample cut short at the end of the file is not decoded."""
    import av
    try:
        container = av.open(path)
    except Exception as e:  # av.InvalidDataError, OSError, ... : whatever FFmpeg cannot open
        raise MediaError(f"{path}: not a readable video ({e}){_cut_index(path)}") from None
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected, about = _expected_frames(container, stream)
        index, whole = -1, 0   # last frame decoded; samples read whole
        try:
            for packet in container.demux(stream):
                if packet.size or packet.dts is not None:   # not the flush packet at the end
                    if packet.is_corrupt:   # read short (the file ends inside it)
                        continue
                    whole += 1
                for frame in packet.decode():
                    index += 1
                    if index % stride == 0:
                        gray, colour = split_colour(frame.to_ndarray(format="rgb24"))
                        time_s = float(frame.time) if frame.time is not None else None
                        yield index, time_s, gray, colour
        except av.FFmpegError as e:
            of = f" of {'about ' if about else ''}{expected}" if expected else ""
            raise MediaError(f"{path}: decoding failed after frame {index}{of} ({e})") from None
    if _truncated(whole, expected, about):
        error = VideoTruncated(path, index + 1, expected, about)
        if report is None:
            raise error
        report.truncated = error


def _cut_index(path: str) -> str:
    """For an mp4/mov that FFmpeg cannot open: why, when its top-level boxes show a cut file."""
    if os.path.splitext(path)[1].lower() not in (".mp4", ".mov", ".m4v"):
        return ""
    try:
        size, seen, pos = os.path.getsize(path), [], 0
        with open(path, "rb") as f:
            while pos + 8 <= size:
                f.seek(pos)
                head = f.read(16)
                n, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if n == 1 and len(head) == 16:
                    n = int.from_bytes(head[8:16], "big")
                elif n == 0:
                    n = size - pos
                if n < 8 or not kind.isalnum():
                    return ""   # not a box: not an mp4 we can say more about
                seen.append(kind.decode())
                pos += n
    except OSError:
        return ""
    if "mdat" in seen and "moov" not in seen:
        return ("; its index (the moov box, which a non-faststart mp4 or mov has at the end) is "
                "missing: the file was cut off. Re-export or re-copy it")
    if seen and pos > size:
        return (f"; the file ends inside its {seen[-1]!r} box: it was cut off. Re-export or "
                "re-copy it")
    return ""


def frame_rate(path: str) -> float | None:
    import av
    with av.open(path) as container:
        rate = container.streams.video[0].average_rate
        return float(rate) if rate else None


def read_video(path: str, stride: int = 1, crop_sector: bool = True,
               report: VideoReport | None = None):
    """(sector or None, iterable of (frame index, time in s or None, image)): the frames as the
    importer stores them (cropped to the sector when asked). Raises MediaError naming ``path``
    when the file cannot be decoded or holds no frame, VideoTruncated when it is cut off (unless
    ``report`` is given: see :func:`decode_video`)."""
    frames, cache, size = decode_video(path, stride, report), [], 0
    probe = SectorProbe()
    if crop_sector:
        for item in frames:
            probe.add(item[2], item[3])
            size += item[2].nbytes * 2
            if cache is not None:
                cache.append(item)
                cache = cache if size <= CACHE_BYTES else None
        if probe.frames == 0:
            raise MediaError(f"{path}: the video holds no frame")
        frames = cache if cache is not None else decode_video(path, stride, report)
    sector = probe.find() if crop_sector else None
    images = ((index, time_s, sector.apply(gray, colour) if sector else gray)
              for index, time_s, gray, colour in frames)
    return sector, images


def write_mp4(path, frames, fps: float = 10.0, crf: int = 18) -> Path:
    """Encode ``frames`` ((H, W) uint8 gray or (H, W, 3) uint8 RGB, all one size) as H.264 mp4,
    atomically (a temp file in the same folder, then rename). Odd sizes are padded by one black
    row/column (yuv420p needs even sizes). Returns the path."""
    import av
    path = Path(path)
    with atomic.atomic_open(path, "wb") as fh:
        with av.open(fh, "w", format="mp4") as out:
            stream = None
            for img in frames:
                rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
                h, w = rgb.shape[:2]
                if h % 2 or w % 2:
                    rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)))
                if stream is None:
                    stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
                    stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            if stream is None:
                raise SonostreamError(f"{path}: no frames to write")
            for packet in stream.encode():
                out.mux(packet)
    return path


# ---------------------------------------------------------------------------------------------
# DICOM files
# ---------------------------------------------------------------------------------------------
def looks_like_dicom(path: str) -> bool:
    """For folder search: a DICOM extension, or no extension and the 'DICM' marker."""
    name = os.path.basename(path)
    if name.upper() == "DICOMDIR":
        return False
    ext = os.path.splitext(name)[1].lower()
    if ext in DICOM_EXTENSIONS:
        return True
    if ext:
        return False
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def read_dataset(path: str):
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        ds = None
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise MediaError(f"{path}: unreadable DICOM file ({type(e).__name__}: {e})") from None
    if ds is not None:
        return _with_pixels(ds, path)
    try:  # no preamble/DICM marker: accept a bare dataset only if it clearly is an image
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" in ds and "Rows" in ds and "Columns" in ds:
            return ds
    except Exception:
        pass
    raise MediaError(f"{path}: not a DICOM file (no 'DICM' marker and not a readable dataset)")


def _with_pixels(ds, path: str):
    if "PixelData" not in ds:
        kind = ds.get("SOPClassUID")
        kind = f" ({kind.name})" if kind is not None and hasattr(kind, "name") else ""
        raise MediaError(f"{path}: DICOM file without pixel data{kind}; nothing to import")
    return ds


TRANSCODE = ("or transcode it to an uncompressed transfer syntax (GDCM: `gdcmconv --raw IN.dcm "
             "OUT.dcm`; DCMTK: `dcmdjpeg` / `dcmdjp2k`) and pass that")
HANDLERS = ("pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle, or "
            "python-gdcm")
# An MPEG-2 / H.264 / HEVC loop is one video stream in the pixel data: saved as it is, it plays.
EXTRACT = ("python -c \"import sys, pydicom; from pydicom.encaps import generate_fragments as g; "
           "open(sys.argv[2], 'wb').write(b''.join(list(g(pydicom.dcmread(sys.argv[1]).PixelData))"
           "[1:]))\" IN.dcm OUT{ext}")


def transfer_syntax(ds):
    from pydicom.uid import ImplicitVRLittleEndian
    return ds.file_meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)


def _ts_text(ts) -> str:
    return f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)


def check_decoder(ds, path: str) -> None:
    """MediaError naming the transfer syntax and what to install or run when pydicom has no
    decoder for it (an unknown or private UID, MPEG video, JPIP) or its plugin is missing."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import MPEGTransferSyntaxes
    ts = transfer_syntax(ds)
    if not ts.is_transfer_syntax:
        raise MediaError(f"{path}: transfer syntax {ts} is not one pydicom knows (a private or "
                         f"misspelt UID), so its pixel data cannot be decoded; export the file "
                         f"from the scanner or PACS with a standard transfer syntax, {TRANSCODE} "
                         "if GDCM reads it")
    if not ts.is_compressed:
        return
    if ts in MPEGTransferSyntaxes:
        ext = ".mpg" if ts.startswith(("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101")) else ".mp4"
        raise MediaError(f"{path}: transfer syntax {_ts_text(ts)} is a video stream that pydicom "
                         f"does not decode; save the stream as a video file and pass that "
                         f"instead: {EXTRACT.format(ext=ext)}")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise MediaError(f"{path}: transfer syntax {_ts_text(ts)} has no pixel decoder in "
                         f"pydicom; {TRANSCODE.removeprefix('or ')}") from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
        raise MediaError(f"{path}: no decoder installed for transfer syntax {_ts_text(ts)}; "
                         f"install one of: {needs}, {TRANSCODE}")


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
        self.fast_jpeg = dicom_jpeg.eligible(ds, self.photometric, self.count)
        if self.window is None and bits > 8 and self.photometric.startswith("MONO"):
            lo, hi = np.inf, -np.inf  # one extra pass: the file's own range
            for raw in self._raw():
                lo, hi = min(lo, int(raw.min())), max(hi, int(raw.max()))
            self.window = (lo, max(hi, lo + 1)) if hi >= lo else None

    def _raw(self):
        """The frames as decoded ((H, W) or (H, W, 3) RGB, any dtype); OpenCV decodes what it
        can of a baseline-JPEG loop (``preprocessing.dicom_jpeg``), pydicom the rest."""
        n = 0
        if self.fast_jpeg:
            for n, arr in enumerate(dicom_jpeg.frames(self.ds, self.count, self.photometric,
                                                      self._display), 1):
                yield arr
        if n < self.count:
            yield from self._raw_pydicom(n)

    def _raw_pydicom(self, start: int = 0):
        from pydicom.pixels import iter_pixels
        try:
            yield from iter_pixels(self.ds, as_rgb=True,
                                   indices=range(start, self.count) if start else None)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError) as e:
            lines = [x.strip() for x in str(e).splitlines() if x.strip()]
            raise MediaError(
                f"{self.path}: cannot decode the pixel data as {_ts_text(transfer_syntax(self.ds))}"
                f" ({' '.join(lines)[:300] or type(e).__name__}); if other viewers open the file, "
                f"another pixel-data handler may ({HANDLERS}), {TRANSCODE}") from None

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
            raise MediaError(f"{self.path}: unsupported pixel layout {raw.shape}")
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


class DicomLoop:
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
                raise MediaError(f"{self.path}: frame {n - 1} is {gray.shape[1]}x{gray.shape[0]}, "
                                    f"the header says {self.w}x{self.h}")
            yield self.sector.apply(gray, colour) if self.sector else gray
        if n == 0:
            raise MediaError(f"{self.path}: the pixel data holds no frame")
