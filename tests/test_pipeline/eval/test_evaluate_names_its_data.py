"""evaluate's metrics.json says what was scored: which data (absolute), split, manifest, checkpoint."""
import hashlib
import json
import os

from pipeline.eval.evaluate import evaluate


def test_metrics_json_names_data_split_manifest_and_checkpoint(trained_segmenter, seg_shards,
                                                                tmp_path, monkeypatch):
    monkeypatch.chdir(seg_shards.parent)               # relative paths in, absolute paths out
    evaluate(os.path.relpath(trained_segmenter), seg_shards.name, "test", tmp_path / "e",
             overlays=0, quiet=True)
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["split"] == "test" and m["data"] == str(seg_shards)
    assert m["checkpoint"] == str(trained_segmenter)
    assert m["manifest_sha256"] == hashlib.sha256((seg_shards / "manifest.json").read_bytes()).hexdigest()
