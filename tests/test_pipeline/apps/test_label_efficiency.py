"""The label-efficiency experiment at its smallest: every arm trains, evaluates and lands in
the table; a re-run skips finished runs; --patients/--seeds/--encoders give one row per run."""
import csv
import json

import pytest
import torch
import yaml

from pipeline.apps.experiment import label_efficiency
from pipeline.models.encoder import ResNetEncoder, export_encoder

from factories import FINETUNE_CONFIG as DEBUG_CONFIG, FINETUNE_FAST as FAST

pytestmark = pytest.mark.slow


def test_table_plot_and_rerun(seg_shards, tmp_path):
    torch.manual_seed(0)
    export_encoder(ResNetEncoder("tiny").state_dict(), "tiny", 1, tmp_path / "encoder.pt")
    out = tmp_path / "exp"
    kw = dict(encoder=tmp_path / "encoder.pt", config=DEBUG_CONFIG, overrides=FAST,
              fractions=(0.3, 1.0), modes=("semi",), max_steps=2)
    results = label_efficiency(seg_shards, out, **kw)
    assert len(results) == 4
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["init"], r["mode"], r["label_fraction"]) for r in rows} == {
        (i, "semi", f) for i in ("scratch", "pretrained") for f in ("0.3", "1.0")}
    assert all(r["dice"] != "" and r["labelled_patients"] in ("1", "3") for r in rows)
    md = (out / "results.md").read_text()
    assert "| pretrained | semi |" in md and "30% labels" in md and "100% labels" in md
    assert "| pretrained − scratch | semi |" in md and "(n = 1: no CI)" in md
    assert (out / "label_efficiency.png").stat().st_size > 1000
    seg = out / "runs" / "pretrained-semi-0.3-s0" / "segmenter.pt"
    stamp = seg.stat().st_mtime_ns
    label_efficiency(seg_shards, out, **kw)
    assert seg.stat().st_mtime_ns == stamp      # finished runs are not trained again
    # stopped after training, before calibration: the re-run calibrates it like the others
    blob = torch.load(seg, weights_only=True)
    calibrated = {k: blob.pop(k) for k in ("min_quality", "quality_calibration")}
    torch.save(blob, seg)
    label_efficiency(seg_shards, out, **kw)
    again = torch.load(seg, weights_only=True)
    assert again["quality_calibration"]["source"] == calibrated["quality_calibration"]["source"]
    assert again["min_quality"] == calibrated["min_quality"]
    ev = json.loads((seg.parent / "eval" / "metrics.json").read_text())
    assert ev["quality_calibration"] == again["quality_calibration"]   # and it was re-scored
    with pytest.raises(ValueError, match="--encoder"):
        label_efficiency(seg_shards, out, **{**kw, "encoder": None})


def test_patients_seeds_and_named_encoders(seg_shards, tmp_path):
    """Two arms (scratch, a named encoder) x 1 labelled patient x 2 seeds: one row per run; seed s
    is the run's train.seed and label seed; results.md has the CIs and the paired difference.
    (More amounts: tests/test_pipeline/apps/test_experiment_stats.py, without training.)"""
    torch.manual_seed(0)
    export_encoder(ResNetEncoder("tiny").state_dict(), "tiny", 1, tmp_path / "random.pt")
    out = tmp_path / "exp"
    results = label_efficiency(seg_shards, out, encoders={"random": tmp_path / "random.pt"},
                               config=DEBUG_CONFIG, overrides=[*FAST, "train.seed=3"],
                               patients=(1,), seeds=2, modes=("supervised",), max_steps=1)
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results) == 4
    for col in ("init", "mode", "labelled_patients", "seed", "dice", "dice_all",
                "empty_false_positive_rate", "hd95_mm", "hc_mae_mm"):
        assert col in rows[0]
    assert sorted((r["init"], r["labelled_patients"], r["seed"]) for r in rows) == sorted(
        (i, p, s) for i in ("scratch", "random") for p in ("1",) for s in ("3", "4"))
    assert all(r["dice_all"] != "" and r["label_fraction"] == "" for r in rows)
    for r in rows:
        run = out / "runs" / f"{r['init']}-supervised-p{r['labelled_patients']}-s{r['seed']}"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["train"]["seed"] == cfg["data"]["label_seed"] == int(r["seed"])
        assert cfg["data"]["label_patients"] == int(r["labelled_patients"])
        assert cfg["task"]["init"] == ("none" if r["init"] == "scratch"
                                       else str(tmp_path / "random.pt"))
    md = (out / "results.md").read_text()
    assert "| encoder | mode | 1 patient |" in md and " ± " in md
    assert "| random − scratch | supervised |" in md and "(n = 2)" in md
    assert (out / "label_efficiency.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--patients 4: split 'train' of .* has only 3 patients"):
        label_efficiency(seg_shards, tmp_path / "exp2", inits=["scratch"], config=DEBUG_CONFIG,
                         overrides=FAST, patients=(4,), modes=("supervised",), max_steps=1)
