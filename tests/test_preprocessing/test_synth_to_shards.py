"""The built-in cohort feeds the builder unchanged: no rejects, labels carried and rescaled."""
import json

import pyarrow.parquet as pq
import pytest

from preprocessing import format as fmt
from pipeline.apps.bench.build import bench_build
from preprocessing.build import BuildOptions, build
from pipeline.cli import main
from preprocessing.synth import make_cohort
from preprocessing.verify import verify


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    csv_path = make_cohort(root / "cohort", patients=4, videos_per_patient=2, frames_per_video=8,
                           size=96, seed=3, progress=False)
    result = build(str(csv_path), str(root / "ds"),
                   BuildOptions(image_size=64, val_fraction=0.25, test_fraction=0.25),
                   progress=False)
    return root, result


def test_cohort_builds_without_rejects_and_verifies(built):
    root, result = built
    assert (result.rows, result.frames, result.rejects) == (64, 64, 0)
    assert verify(str(root / "ds"), decode=True, progress=False) == []


def test_labels_survive_the_resize(built):
    root, _ = built
    rows = pq.read_table(root / "ds" / fmt.INDEX_FILE).to_pylist()
    src = {(r["patient_id"], r["video_name"], r["frame_id"]): r for r in
           __import__("pandas").read_csv(root / "cohort" / "frames.csv", dtype=str,
                                         keep_default_na=False).to_dict("records")}
    heads = [r for r in rows if r["hc_mm"] is not None]
    assert heads and all(r["plane"] == "head" for r in heads)
    for r in heads:
        s = src[(r["patient_id"], r["video_name"], r["frame_id"])]
        assert r["scale"] == pytest.approx(64 / 96)
        assert r["hc_mm"] == pytest.approx(float(s["hc_mm"]))  # mm do not change
        assert r["pixel_size_mm"] == pytest.approx(float(s["pixel_size_mm"]) * 96 / 64)
        assert r["ellipse_a"] == pytest.approx(float(s["ellipse_a"]) * 64 / 96)
        assert r["ga_weeks"] == s["ga_weeks"]  # an extra column, carried as text
    per_video = {}
    for r in rows:
        per_video.setdefault(r["video_key"], []).append(r)
    for frames in per_video.values():
        if frames[0]["plane"] == "head":
            assert sum(bool(f["is_standard_plane"]) for f in frames) == 1


def test_cli_synth_with_preview(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["synth", "--out", str(out), "--patients", "2", "--videos-per-patient", "1",
                 "--frames-per-video", "4", "--size", "64", "--workers", "1",
                 "--preview", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "wrote 8 frames of 2 patients" in text
    assert (out / "frames.csv").exists() and (tmp_path / "p.png").stat().st_size > 0
    assert main(["synth", "--out", str(out), "--size", "8"]) == 2
    assert "size" in capsys.readouterr().err


def test_bench_build_reports_the_promised_fields(tmp_path):
    result = bench_build(frames=64, repeats=1, workdir=str(tmp_path))
    assert set(result["frames_per_s"]) == {"1", "2"} and result["frames"] == 64
    assert result["scaling_2_vs_1"] == pytest.approx(
        result["frames_per_s"]["2"] / result["frames_per_s"]["1"], rel=1e-2)
    assert {"decode_frame_png", "encode_jpeg", "whole_build_1_worker"} <= set(result["per_frame_us"])
    # the main process's CPU per frame: all of a 1-worker build, the unscaled part with 2
    cpu = result["main_cpu_us_per_frame"]
    assert set(cpu) == {"1", "2"} and all(v > 0 for v in cpu.values())
    parts = result["partitioned"]   # the arm of a build split into 2 parts (2 processes vs 1)
    assert parts["frames"] == {"1_part_alone": 32, "2_parts_at_once": 64}
    assert parts["scaling_2_parts_vs_1"] == pytest.approx(
        parts["frames_per_s"]["2_parts_at_once"] / parts["frames_per_s"]["1_part_alone"], rel=1e-2)
    assert verify(str(tmp_path / "parts-2_parts_at_once"), progress=False) == []
    jpeg = result["jpeg_sources"]   # gray JPEG sources stored as they are, beside MDSWriter
    assert jpeg["frames"] == jpeg["rows"] == 64
    assert {"build_1_worker", "build_2_workers", "build_1_worker_verify_decode"} <= set(
        jpeg["frames_per_s"])
    assert ("mds_writer" in jpeg["frames_per_s"]) != ("mds_writer" in jpeg["skipped"])
    assert set(jpeg["main_cpu_us_per_frame"]) == set(jpeg["frames_per_s"])
    assert verify(str(tmp_path / "jpeg-build_2_workers"), progress=False) == []
    json.dumps(result)
