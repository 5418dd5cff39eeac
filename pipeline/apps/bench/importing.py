"""`sonostream bench import`: import frames/s per source at 1 and 2 workers, end to end to shards.

Sources, all the same real ultrasound loop (pydicom-data's ``color3d_jpeg_baseline.dcm``: 120
frames of 640x480 YBR_FULL_422, JPEG baseline), copied to ``frames`` frames per source:

- ``dicom_jpeg``  the loop as shipped (encapsulated JPEG), each copy with its own SOPInstanceUID;
- ``dicom_raw``   the same frames decoded once and stored uncompressed (RGB, Explicit VR LE);
- ``video``       the same frames as H.264 mp4 (``preprocessing.media.write_mp4``).

Arms alternate (1 worker, 2 workers, next source, ...) so that every arm sees the same machine
load; the median of ``repeats`` runs is reported. Frames/s counts the frames in frames.csv over
the wall time of the whole import. ``end_to_end`` is the DICOM JPEG archive to shards: import
then ``build`` (256x256 JPEG), frames over both wall times. The 2-worker arm needs the importers'
``workers=`` keyword; where it is absent it is reported as skipped. ``per_frame_us`` breaks one
DICOM JPEG frame into its steps on this path (one process, measured once).
"""
from __future__ import annotations

import inspect
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from preprocessing.format import SonostreamError

LOOP = "color3d_jpeg_baseline.dcm"


def _source_loop(loop_frames: int | None):
    """(dataset of the JPEG loop cut to ``loop_frames``, its RGB frames (n, h, w, 3))."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.pixels import iter_pixels
    try:
        path = get_testdata_file(LOOP, download=False)
    except TypeError:   # older pydicom without download=
        path = get_testdata_file(LOOP)
    if path is None:
        raise SonostreamError(f"{LOOP} not found: the import bench needs pydicom-data's test "
                              "files (pip install pydicom-data, or the dev extras)")
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    if loop_frames is not None and loop_frames < n:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n))[:loop_frames]
        ds.PixelData = encapsulate(frames)
        ds.NumberOfFrames = loop_frames
    rgb = np.stack(list(iter_pixels(ds, as_rgb=True)))
    return ds, rgb


def make_sources(root: Path, frames: int, loop_frames: int | None = None) -> dict:
    """root/<source>/ with about ``frames`` frames each; returns {source: (folder, frames)}."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from preprocessing.media import write_mp4
    ds, rgb = _source_loop(loop_frames)
    per_file = len(rgb)
    copies = max(1, math.ceil(frames / per_file))
    out = {}
    for name in ("dicom_jpeg", "dicom_raw", "video"):
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        out[name] = (str(folder), copies * per_file)
    for i in range(copies):
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["sonostream-bench", str(i)])
        ds.PatientID = f"bench-{i:04d}"
        ds.save_as(root / "dicom_jpeg" / f"loop{i:04d}.dcm", enforce_file_format=True)
    raw = ds.copy()
    raw.set_pixel_data(rgb, photometric_interpretation="RGB", bits_stored=8)
    raw.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for i in range(copies):
        raw.SOPInstanceUID = generate_uid(entropy_srcs=["sonostream-bench-raw", str(i)])
        raw.PatientID = f"bench-{i:04d}"
        raw.save_as(root / "dicom_raw" / f"loop{i:04d}.dcm", enforce_file_format=True)
    write_mp4(root / "video" / "loop0000.mp4", rgb, fps=25)
    for i in range(1, copies):
        shutil.copyfile(root / "video" / "loop0000.mp4", root / "video" / f"loop{i:04d}.mp4")
    return out


def _importers() -> dict:
    from preprocessing.importers.dicom import import_dicom
    from preprocessing.importers.video import import_video
    return {"dicom_jpeg": import_dicom, "dicom_raw": import_dicom, "video": import_video}


def takes_workers(fn) -> bool:
    return "workers" in inspect.signature(fn).parameters


def _run_import(fn, folder: str, out: Path, workers: int):
    shutil.rmtree(out, ignore_errors=True)
    kwargs = {"workers": workers} if takes_workers(fn) else {}
    if "keep_identifiers" in inspect.signature(fn).parameters:
        # DICOM pseudonymises by default: time that path, with a throwaway key (never the
        # user's key file, which would be created on first use)
        from preprocessing.importers.pseudonym import Pseudonymiser
        kwargs["pseudonyms"] = Pseudonymiser(key=bytes(range(32)))
    t0 = time.perf_counter()
    result = fn([folder], str(out), progress=False, **kwargs)
    seconds = time.perf_counter() - t0
    if result.rejects:
        raise SonostreamError(f"bench import of {folder} rejected {len(result.rejects)} inputs: "
                              f"{result.rejects[0]['reason']}")
    return result, seconds


def _run_build(csv_path: str, out: Path, workers: int):
    from preprocessing.build import BuildOptions, build
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = build(csv_path, str(out), BuildOptions(image_size=256, codec="jpeg"),
                   workers=workers, progress=False)
    return result, time.perf_counter() - t0


def _timer():
    """stage(name) adds the seconds of the with-block to totals[name]."""
    import contextlib
    totals: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name):
        t0 = time.perf_counter()
        yield
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
    return totals, stage


def stage_costs(path: str) -> dict:
    """Microseconds per frame of each step of one DICOM file on the import -> build path, run
    step by step through the same functions the importer and the build use."""
    from pydicom.pixels import iter_pixels
    from preprocessing import atomic, imaging, media
    from preprocessing.format import Letterbox
    from preprocessing.sector import SectorProbe
    totals, stage = _timer()
    with stage("read_dataset"):
        ds = media.read_dataset(path)
    frames = media.Frames(ds, path)
    frames.cache = None                      # each step below on its own
    with stage("dicom_decode"):
        raws = list(frames._raw())
    with stage("gray_and_colour"):
        shown = [frames._display(r) for r in raws]
    if str(ds.file_meta.TransferSyntaxUID) != "1.2.840.10008.1.2.1":   # reference: pydicom's
        with stage("ref_pydicom_decode_as_stored"):                    # own path, split
            list(iter_pixels(ds, as_rgb=False))
        with stage("ref_pydicom_decode_to_rgb"):
            list(iter_pixels(ds, as_rgb=True))
    box, _ = media.region(ds, int(ds.Rows), int(ds.Columns))
    with stage("sector_search"):
        probe = SectorProbe()
        for gray, colour in shown:
            probe.add(gray, colour)
        sector = probe.find(box)
    with stage("sector_crop"):
        images = [sector.apply(g, c) for g, c in shown]
    import_png = getattr(imaging, "encode_import_png", lambda im: imaging.encode(im, "png"))
    with stage("png_encode"):
        pngs = [import_png(im) for im in images]
    tmp = Path(tempfile.mkdtemp(prefix="sonostream-bench-stage-"))
    try:
        with stage("write_file_fsync"):
            for i, data in enumerate(pngs):
                atomic.write_bytes(tmp / f"{i:06d}.png", data)
        with stage("build_read_file"):
            data = [imaging.read_bytes(str(tmp / f"{i:06d}.png")) for i in range(len(pngs))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with stage("build_png_decode"):
        decoded = [imaging.to_gray8(imaging.decode_raw(d)) for d in data]
    geo = Letterbox.fit(decoded[0].shape[0], decoded[0].shape[1], 256)
    with stage("build_letterbox"):
        boxed = [imaging.letterbox(im, geo) for im in decoded]
    with stage("build_jpeg_encode"):
        for im in boxed:
            imaging.encode(im, "jpeg", 95)
    n = len(raws)
    out = {k: round(v / n * 1e6, 1) for k, v in totals.items()}
    out["png_kb"] = round(sum(map(len, pngs)) / n / 1e3, 1)
    return out


def bench_import(frames: int = 2400, repeats: int = 3, workdir: str | None = None,
                 worker_counts: tuple[int, ...] = (1, 2), loop_frames: int | None = None,
                 sources: tuple[str, ...] = ("dicom_jpeg", "dicom_raw", "video"),
                 end_to_end: bool = True) -> dict:
    if frames < 1 or repeats < 1:
        raise SonostreamError(f"--frames and --repeats must be at least 1, got {frames}, {repeats}")
    tmp = None
    if workdir is None:
        tmp = workdir = tempfile.mkdtemp(prefix="sonostream-bench-import-")
    root = Path(workdir)
    try:
        made = make_sources(root / "sources", frames, loop_frames)
        importers = _importers()
        arms = [(s, w) for s in sources for w in worker_counts]
        skipped = {f"{s}/{w}": "the importer has no workers= keyword yet (parallel importers, "
                   "issue 17 part 1)" for s, w in arms if w > 1 and not takes_workers(importers[s])}
        arms = [a for a in arms if f"{a[0]}/{a[1]}" not in skipped]
        e2e_workers = [w for w in worker_counts if ("dicom_jpeg", w) in arms] if end_to_end else []
        times = {a: [] for a in arms}
        e2e = {w: [] for w in e2e_workers}
        counts = {}
        for _ in range(repeats):
            for source, w in arms:
                out = root / f"import-{source}-w{w}"
                result, seconds = _run_import(importers[source], made[source][0], out, w)
                times[(source, w)].append(seconds)
                counts[source] = result.frames
                if source == "dicom_jpeg" and w in e2e:
                    built, build_s = _run_build(result.csv_path, root / f"shards-w{w}", w)
                    e2e[w].append((seconds, build_s, built.rows))
        fps = {}
        for (source, w), t in times.items():
            fps.setdefault(source, {})[str(w)] = round(counts[source] / statistics.median(t), 1)
        result = {"import_frames_per_s": fps, "frames": counts,
                  "seconds": {f"{s}/{w}": [round(x, 3) for x in t] for (s, w), t in times.items()},
                  "skipped": skipped}
        for source, by_w in fps.items():
            if "1" in by_w and "2" in by_w:
                result.setdefault("scaling_2_vs_1", {})[source] = round(by_w["2"] / by_w["1"], 3)
        if e2e:
            result["end_to_end_frames_per_s"] = {
                str(w): round(runs[0][2] / statistics.median(a + b for a, b, _ in runs), 1)
                for w, runs in e2e.items()}
            result["end_to_end_seconds"] = {
                str(w): {"import": [round(a, 3) for a, _, _ in runs],
                         "build": [round(b, 3) for _, b, _ in runs]} for w, runs in e2e.items()}
        files = sorted(Path(made["dicom_jpeg"][0]).glob("*.dcm"))
        result["per_frame_us"] = stage_costs(str(files[0]))
        result["setup"] = {"loop": f"{LOOP} (YBR_FULL_422 JPEG baseline, 640x480)",
                           "files_per_source": len(files),
                           "frames_per_file": made["dicom_jpeg"][1] // len(files),
                           "build": "256x256 jpeg q95", "repeats": repeats,
                           "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                           else os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
                           "python": platform.python_version(), "machine": platform.machine()}
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
