"""`sonostream bench video` runs end to end and reports what it promises (figures: BENCHMARKS.md)."""
from __future__ import annotations

import json

from pipeline.cli import main


def test_bench_video_reports_speed_smoothing_and_best_frame(trained_segmenter, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "video", "--checkpoint", str(trained_segmenter), "--sweeps", "2",
                 "--frames", "12", "--size", "64", "--batch", "4", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == r
    assert len(r["per_sweep"]) == 2 and [s["patient"] for s in r["per_sweep"]] == [1000, 1001]
    for s in r["per_sweep"]:
        assert 0 <= s["standard_frame"] < 12 and s["model_fps_batch1"] > 0 and s["model_fps_batch4"] > 0
        if s["best_frame"] is not None:
            assert s["best_offset"] == s["best_frame"] - s["standard_frame"]
    assert 0 <= r["best_within_2"] <= 2 and r["model_size"] == [64, 64]
