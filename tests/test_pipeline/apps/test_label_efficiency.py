"""The label-efficiency experiment at its smallest: every arm trains, evaluates and lands in
the table; a re-run skips finished runs."""
import csv

import pytest
import torch

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
    assert (out / "label_efficiency.png").stat().st_size > 1000
    seg = out / "runs" / "pretrained-semi-0.3" / "segmenter.pt"
    stamp = seg.stat().st_mtime_ns
    label_efficiency(seg_shards, out, **kw)
    assert seg.stat().st_mtime_ns == stamp      # finished runs are not trained again
    with pytest.raises(ValueError, match="--encoder"):
        label_efficiency(seg_shards, out, **{**kw, "encoder": None})
