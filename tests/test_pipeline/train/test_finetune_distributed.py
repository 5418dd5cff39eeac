"""Fine-tuning with 2 real processes on CPU (gloo) through `accelerate launch`."""
import os
import subprocess
import sys

import pytest

from pipeline.models.segmenter import load_segmenter
from pipeline.train.logs import read_metrics

from factories import FINETUNE_CONFIG as DEBUG_CONFIG, FINETUNE_FAST as FAST, ROOT

pytestmark = pytest.mark.slow


def test_two_process_semi_run(seg_shards, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--main_process_port", "0", "-m", "pipeline.finetune", "--config", str(DEBUG_CONFIG),
           "--data", str(seg_shards), "--out", str(out), "--mode", "semi", "--label-fraction", "0.5",
           "--max-steps", "4", "--quiet", *[a for s in FAST for a in ("--set", s)]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    try:
        r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process fine-tuning run hung")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es), 4 labelled (+4 unlabelled) frames per rank" in r.stdout
    rows = read_metrics(out / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2, 3, 4]      # one writer, no duplicates
    assert all(x["loss"] == x["loss"] and x["loss_cons"] >= 0 for x in rows)
    ckpt = out / "checkpoints" / "step-4"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                        "random_states_1.pkl"]
    assert load_segmenter(out / "segmenter.pt")[1]["step"] == 4
