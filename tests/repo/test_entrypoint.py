"""launch/entrypoint.sh (the container's entry point), run with fake commands on PATH: known
commands pass through unchanged, anything else goes to ``accelerate launch`` exactly once."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "launch" / "entrypoint.sh"
FAKES = ("sonostream", "accelerate", "torchrun", "deepspeed", "python", "python3", "nvidia-smi")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    bin_dir = tmp_path_factory.mktemp("fakebin")
    for name in FAKES:   # each fake prints its name and its arguments, one per line
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho {name}\nfor a in "$@"; do echo "$a"; done\n')
        fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def run(*args):
        out = subprocess.run([bash, str(ENTRYPOINT), *args], env=env, capture_output=True,
                             text=True, check=True).stdout
        return out.splitlines()
    return run


@pytest.mark.parametrize("argv", [
    ["accelerate", "launch", "-m", "pipeline.pretrain", "--config", "a b.yaml"],
    ["torchrun", "--nproc_per_node", "8", "-m", "pipeline.pretrain"],
    ["deepspeed", "train.py"],
    ["python", "-m", "pipeline.finetune", "--help"],
    ["python3", "-c", "print(1)"],
    ["nvidia-smi", "-L"],
    ["sonostream", "build", "--csv", "/data/frames.csv", "--out", "/data/shards"],
])
def test_known_commands_pass_through_unchanged(run, argv):
    assert run(*argv) == argv


def test_bash_passes_through(run):
    assert run("bash", "-c", "echo from bash") == ["from bash"]


def test_accelerate_flags_go_to_accelerate_launch_once(run):
    argv = ["--config_file", "launch/accelerate/multi_gpu.yaml", "-m", "pipeline.pretrain"]
    assert run(*argv) == ["accelerate", "launch", *argv]
    assert run("pipeline/pretrain.py", "--x") == ["accelerate", "launch", "pipeline/pretrain.py", "--x"]


def test_no_arguments_prints_the_cli_help(run):
    assert run() == ["sonostream", "--help"]


def test_entrypoint_is_executable():
    assert os.access(ENTRYPOINT, os.X_OK)
