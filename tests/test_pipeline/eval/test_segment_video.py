"""`sonostream segment-video` on an mp4, on multi-frame DICOMs (generated and real), on a video in
the shards, on folders, and on bad input."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pipeline.apps.demo import find_dicom
from pipeline.eval.cine.outputs import COLUMNS
from pipeline.cli import main
from preprocessing.format import SonostreamError
from preprocessing.synth.sweep import write_sweep


def rows(out) -> list[dict]:
    with open(out / "per_frame.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def segment(ckpt, *args) -> int:
    return main(["segment-video", "--checkpoint", str(ckpt), *map(str, args), "--quiet"])


def check_rows(out, n: int, with_hc: bool) -> list[dict]:
    got = rows(out)
    assert [int(r["frame_index"]) for r in got] == list(range(n))
    for r in got:
        if r["head_present"] == "1":
            assert all(r[k] != "" for k in ("cx", "cy", "a", "b", "angle_rad", "quality"))
            assert (r["hc_mm"] != "") == with_hc
            assert float(r["a"]) >= float(r["b"]) > 0 and 0 <= float(r["angle_rad"]) < np.pi
        else:   # no head: no ellipse, no HC
            assert all(r[k] == "" for k in ("cx", "cy", "a", "b", "angle_rad", "hc_mm"))
    return got


def write_dicom(path, frames: np.ndarray, pixel_mm: float):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality = "SYN1", "US"
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [pixel_mm, pixel_mm]
    ds.FrameTime = 80.0
    ds.PixelData = np.ascontiguousarray(frames, np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def sweep_frames(tmp_path, n: int):
    from preprocessing.media import decode_video as decode
    info = write_sweep(tmp_path / "s.mp4", patient=40, frames=n, size=64)
    return info, np.stack([g for _, _, g, _ in decode(info["video"], 1)])


def test_mp4_gives_one_row_per_frame_and_every_output(trained_segmenter, tmp_path):
    from preprocessing.media import decode_video as decode
    info = write_sweep(tmp_path / "sweep.mp4", patient=40, frames=16, size=64)
    out = tmp_path / "o"
    assert segment(trained_segmenter, "--input", info["video"], "--out", out, "--no-crop-sector",
                   "--pixel-size-mm", info["pixel_size_mm"]) == 0
    got = check_rows(out, 16, with_hc=True)
    assert sum(r["head_present"] == "1" for r in got) >= 8   # the sweep shows a head in most
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == 16 and s["best_frame"] is not None and s["best_hc_mm"] > 0
    assert len(list(decode(str(out / "overlay.mp4"), 1))) == 16
    for name in ("best_frame.png", "best_overlay.png", "hc_over_time.png", "frames.png",
                 "per_frame_raw.csv"):
        assert (out / name).stat().st_size > 0
    # The raw fits have the same rows; the smoothed ones differ from them.
    raw = rows_of(out / "per_frame_raw.csv")
    assert len(raw) == 16 and [r["a"] for r in raw] != [r["a"] for r in got]


def rows_of(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_multiframe_dicom_gives_one_row_per_frame_with_hc_from_its_header(trained_segmenter, tmp_path):
    info, frames = sweep_frames(tmp_path, 10)
    dcm = write_dicom(tmp_path / "loop.dcm", frames, 0.4)
    out = tmp_path / "o"
    assert segment(trained_segmenter, "--input", dcm, "--out", out, "--no-crop-sector") == 0
    got = check_rows(out, 10, with_hc=True)
    heads = [r for r in got if r["head_present"] == "1"]
    assert heads
    # HC = perimeter in pixels x the header's 0.4 mm (no --pixel-size-mm given).
    from preprocessing.format import ellipse_perimeter
    r = heads[0]
    assert float(r["hc_mm"]) == pytest.approx(0.4 * ellipse_perimeter(float(r["a"]), float(r["b"])),
                                              rel=1e-6)
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "dicom" and s["pixel_size_mm"] == pytest.approx(0.4) and s["fps"] == 12.5


def test_real_two_frame_dicom(trained_segmenter, tmp_path):
    path = find_dicom()
    if path is None:
        pytest.skip("pydicom-data is not installed (dev extras)")
    out = tmp_path / "o"
    assert segment(trained_segmenter, "--input", path, "--out", out) == 0
    check_rows(out, 2, with_hc=True)
    s = json.loads((out / "summary.json").read_text())
    assert s["pixel_size_mm"] == pytest.approx(0.2622878766)
    # A model trained on synthetic frames: whatever it finds here, no HC below its quality floor.
    assert s["best_frame"] is None or s["best_quality"] >= s["min_quality"] > 0


def test_video_in_the_shards_is_scored_against_its_labels(trained_segmenter, seg_shards, tmp_path):
    import pyarrow.parquet as pq
    index = pq.read_table(seg_shards / "index.parquet").to_pandas()
    key = index[(index.split == "test") & (index.plane == "head")].video_key.iloc[0]
    out = tmp_path / "o"
    assert segment(trained_segmenter, "--data", seg_shards, "--video-key", key, "--out", out) == 0
    check_rows(out, 8, with_hc=True)
    s = json.loads((out / "summary.json").read_text())
    labelled = index[(index.video_key == key) & index.is_standard_plane.fillna(False).astype(bool)]
    assert s["standard_frame"] == int(labelled.frame_index.iloc[0])
    assert s["kind"] == "shards" and "best_frame_offset" in s


def test_a_folder_segments_every_loop_and_lists_the_bad_ones(trained_segmenter, tmp_path):
    folder = tmp_path / "in"
    write_sweep(folder / "a.mp4", patient=41, frames=6, size=64)
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    data = faststart_sweep(tmp_path / "fs.mp4", 20)
    (folder / "cut.mp4").write_bytes(data[:len(data) // 2])
    out = tmp_path / "o"
    assert segment(trained_segmenter, "--input", folder, "--out", out, "--no-video") == 0
    listed = {r["input"].rsplit("/", 1)[-1]: r for r in rows_of(out / "summary.csv")}
    assert listed["a.mp4"]["status"] == "ok" and listed["a.mp4"]["frames"] == "6"
    assert listed["a.mp4"]["reason"] == ""
    cut = listed["cut.mp4"]   # segmented as far as it goes, saying so
    assert cut["status"] == "ok" and f"read {cut['frames']} of 20 frames" in cut["reason"]
    s = json.loads((out / "cut" / "summary.json").read_text())
    assert s["frames"] == int(cut["frames"]) < 20 and "truncated" in s["warnings"][0]
    assert listed["broken.mp4"]["status"] == "error" and "broken.mp4" in listed["broken.mp4"]["reason"]
    assert (out / "a" / "per_frame.csv").is_file() and not (out / "a" / "overlay.mp4").exists()


@pytest.mark.parametrize("case", ["undecodable", "one_frame_dicom", "empty_folder", "not_segmenter",
                                  "missing", "unknown_key"])
def test_bad_input_is_a_clear_error_naming_it(case, trained_segmenter, seg_shards, tmp_path, capsys):
    ckpt, args = trained_segmenter, None
    if case == "undecodable":
        bad = tmp_path / "x.mp4"
        bad.write_bytes(b"\x00" * 500)
        args, named = ["--input", bad], str(bad)
    elif case == "one_frame_dicom":
        _, frames = sweep_frames(tmp_path, 2)
        bad = write_dicom(tmp_path / "still.dcm", frames[:1], 0.4)
        args, named = ["--input", bad], "single frame"
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        args, named = ["--input", tmp_path / "empty"], "holds no video"
    elif case == "not_segmenter":
        import torch
        ckpt = tmp_path / "encoder.pt"
        torch.save({"format": "sonostream-encoder/1"}, ckpt)
        args, named = ["--input", tmp_path], "is not a sonostream segmenter"
    elif case == "missing":
        args, named = ["--input", tmp_path / "nope.mp4"], "nope.mp4: no such file"
    else:
        args, named = ["--data", seg_shards, "--video-key", "P9__nope"], "P9__nope"
    assert segment(ckpt, *args, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err, err
    assert not (tmp_path / "o" / "per_frame.csv").exists()


def faststart_sweep(path, frames: int, patient: int = 42) -> bytes:
    """A synthetic sweep remuxed with its moov first (faststart); returns the file's bytes."""
    import av
    info = write_sweep(path.with_name("plain_" + path.name), patient=patient, frames=frames,
                       size=64)
    with av.open(info["video"]) as src, av.open(str(path), "w",
                                                 options={"movflags": "faststart"}) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    return path.read_bytes()


def test_a_truncated_video_is_read_as_far_as_it_goes_with_a_warning(tmp_path):
    """No model needed: what segment-video would segment of a faststart mp4 cut at 30 %."""
    from pipeline.eval.cine.source import read_file
    data = faststart_sweep(tmp_path / "fs.mp4", 40)
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) * 3 // 10])
    assert read_file(str(tmp_path / "fs.mp4"), crop_sector=False).warnings == []
    cine = read_file(str(tmp_path / "cut.mp4"), crop_sector=False)
    (warning,) = cine.warnings
    assert f"is truncated: read {len(cine.frames)} of 40 frames" in warning
    assert 2 <= len(cine.frames) < 40 and cine.frame_index == list(range(len(cine.frames)))
    (tmp_path / "stub.mp4").write_bytes(data[:data.index(b"mdat") + 20])   # no frame whole
    with pytest.raises(SonostreamError, match=r"stub\.mp4: truncated: 0 of 40 frames"):
        read_file(str(tmp_path / "stub.mp4"), crop_sector=False)
