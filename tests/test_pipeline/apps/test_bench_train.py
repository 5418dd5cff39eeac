"""`sonostream bench train` on the CPU at a tiny size: the fields the GPU run will fill in."""
import json

import pytest

from pipeline.apps.bench.train import bench_train
from pipeline.cli import main

from factories import PRETRAIN_CONFIG as DEBUG_CONFIG


def test_bench_train_reports_real_and_synthetic_throughput(shards, tmp_path):
    r = bench_train(shards, DEBUG_CONFIG, ["loader.image_size=32", "train.batch_size=4"], steps=2,
                    warmup=1, precisions=("no",))
    assert r["device"] == "cpu" and r["loader"] == "cpu" and r["image_size"] == [32, 32]
    assert r["synthetic_images_per_s"]["no"] > 0 and r["real_images_per_s"] > 0
    assert r["real_over_synthetic"] == pytest.approx(r["real_images_per_s"] / r["synthetic_images_per_s"]["no"])
    assert "bf16_over_fp32" not in r
    with pytest.raises(ValueError, match="--precisions takes no, bf16"):
        bench_train(shards, DEBUG_CONFIG, [], precisions=("fp8",))
    out = tmp_path / "b.json"
    assert main(["bench", "train", "--data", str(shards), "--config", str(DEBUG_CONFIG), "--set",
                 "loader.image_size=32", "--set", "train.batch_size=4", "--steps", "1", "--warmup",
                 "1", "--precisions", "no", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["steps"] == 1
