"""Two real processes (gloo on CPU) through `accelerate launch`: equal steps, no hang, no repeats."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_loader_script.py")


def test_two_processes_finish_the_epoch_together(dataset, tmp_path):
    # the checkout under test (parents[3]), not whatever sonostream is installed
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", str(SCRIPT), str(dataset), str(tmp_path), "5"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process epoch hung")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["backend"] == "gloo" and ranks[0]["world"] == 2
    # 12 videos x 3 clips = 36 clips; global batch 2 x 5 = 10 -> 3 steps each, 6 clips left out
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    pos = ranks[0]["positions"]
    assert pos == ranks[1]["positions"] and len(set(pos)) == len(pos) == 30
    assert ranks[0]["state"] == ranks[1]["state"] and ranks[0]["state"]["epoch"] == 1
