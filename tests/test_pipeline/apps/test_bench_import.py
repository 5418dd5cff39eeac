"""The import benchmark at a tiny size (a 3-frame cut of the real JPEG loop): its figures are not
asserted (machines are noisy), but its JSON keys and the 1/2-worker arms are."""
import json

import pytest

from pipeline.apps.bench import importing
from pipeline.cli import main

pytest.importorskip("pydicom")


def _loop_or_skip():
    from pydicom.data import get_testdata_file
    try:
        path = get_testdata_file(importing.LOOP, download=False)
    except TypeError:
        path = get_testdata_file(importing.LOOP)
    if path is None:
        pytest.skip(f"{importing.LOOP} (pydicom-data) not installed")


def test_cli_tiny_run_writes_every_promised_key(tmp_path, capsys):
    _loop_or_skip()
    out = tmp_path / "bench.json"
    assert main(["bench", "import", "--frames", "6", "--loop-frames", "3", "--repeats", "1",
                 "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    sources = {"dicom_jpeg", "dicom_raw", "video"}
    assert set(result["import_frames_per_s"]) == sources
    assert result["frames"] == {s: 6 for s in sources}   # 2 copies of the 3-frame loop each
    assert result["setup"]["files_per_source"] == 2 and result["setup"]["frames_per_file"] == 3
    for s in sources:   # the 2-worker arm is timed where the importer takes workers=, else skipped
        w2 = importing.takes_workers(importing._importers()[s])
        assert ("2" in result["import_frames_per_s"][s]) == w2
        assert (f"{s}/2" in result["skipped"]) == (not w2)
        assert result["import_frames_per_s"][s]["1"] > 0
    assert result["end_to_end_frames_per_s"]["1"] > 0
    assert set(result["end_to_end_seconds"]["1"]) == {"import", "build"}
    stages = result["per_frame_us"]
    assert {"dicom_decode", "gray_and_colour", "sector_search", "sector_crop", "png_encode",
            "write_file_fsync", "build_png_decode", "build_letterbox",
            "build_jpeg_encode"} <= set(stages)
    assert all(v >= 0 for v in stages.values())


def test_two_worker_arm_passes_workers_to_the_importer(tmp_path, monkeypatch):
    """Once the importers take ``workers=``, the 2-worker arm runs with workers=2 (the end-to-end
    build too) and nothing is reported as skipped."""
    _loop_or_skip()
    real = importing._importers()
    calls = []

    def wrap(fn):
        def importer(inputs, out_dir, progress=True, workers=1):
            calls.append((fn.__name__, workers))
            return fn(inputs, out_dir, progress=progress)
        importer.__name__ = fn.__name__
        return importer
    monkeypatch.setattr(importing, "_importers", lambda: {k: wrap(v) for k, v in real.items()})
    result = importing.bench_import(frames=2, loop_frames=2, repeats=1, sources=("dicom_jpeg",),
                                    workdir=str(tmp_path))
    assert calls == [("import_dicom", 1), ("import_dicom", 2)]
    assert result["skipped"] == {} and set(result["import_frames_per_s"]["dicom_jpeg"]) == {"1", "2"}
    assert set(result["end_to_end_frames_per_s"]) == {"1", "2"} and "scaling_2_vs_1" in result
