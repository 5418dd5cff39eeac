"""What a run leaves for people and tools that were not there: plain metrics lines in a log file
(not a terminal), a config.yaml that repeats the run, provenance.json, the tracker project."""
import hashlib
import json
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from pipeline.train.finetuning import load_finetune_config, train
from pipeline.train.logs import read_metrics
from pipeline.train.provenance import git_state, write_provenance

from factories import FINETUNE_CONFIG, FINETUNE_FAST, PRETRAIN_CONFIG, PRETRAIN_FAST, ROOT

pytestmark = pytest.mark.slow
STEPS = 5
LOGGED = [1, 2, 4, 5]          # train.log_every 2, plus the first and the last step
LINE = re.compile(r"INFO sonostream\.train: step (\d+)/5 \| loss \d+\.\d{4} \| .*"
                  r"\| lr_encoder \d\.\d\de-\d\d \| lr_heads \d\.\d\de-\d\d \| \d+ img/s \| "
                  r"ETA \d+:\d\d:\d\d$")


def pretrain(args, cwd, log):
    """``python -m pipeline.pretrain ARGS`` in ``cwd`` with stderr going to the file ``log``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("SONOSTREAM_PROGRESS", None)
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "pipeline.pretrain", *args], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True, timeout=300)
    assert proc.returncode == 0, log.read_text()[-3000:]


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    """Run A: the debug config + overrides, without --quiet, launched from the dataset's parent
    with relative paths. Run B: A's config.yaml as --config, --quiet, from another folder."""
    root = tmp_path_factory.mktemp("runfolder")
    a_args = ["--config", str(PRETRAIN_CONFIG), "--data", shards.name, "--out",
              os.path.relpath(root / "a", shards.parent), "--max-steps", str(STEPS),
              *[x for s in PRETRAIN_FAST for x in ("--set", s)], "--set", "train.log_every=2",
              "--set", "train.figure_every=0", "--set", "train.trackers=[tensorboard]",
              "--set", "train.tracker_project=my-project"]
    pretrain(a_args, shards.parent, root / "a.log")
    (root / "elsewhere").mkdir()
    b_args = ["--config", str(root / "a" / "config.yaml"), "--data", str(shards), "--out",
              str(root / "b"), "--quiet"]
    pretrain(b_args, root / "elsewhere", root / "b.log")
    return {"a": (root / "a", root / "a.log", a_args), "b": (root / "b", root / "b.log", b_args)}


@pytest.mark.parametrize("which", ["a", "b"])   # b: --quiet
def test_a_log_file_gets_one_plain_metrics_line_per_logged_step(runs, which):
    run, log, _ = runs[which]
    text = log.read_bytes().decode()               # (read_text would turn each \r into \n)
    assert "\r" not in text                        # no progress bar redraws in a file
    steps = [int(m.group(1)) for m in map(LINE.search, text.splitlines()) if m]
    assert steps == LOGGED == [r["step"] for r in read_metrics(run / "metrics.jsonl")]


def test_config_yaml_repeats_the_run(runs):
    (a, _, _), (b, _, _) = runs["a"], runs["b"]
    saved = yaml.safe_load((a / "config.yaml").read_text())
    assert "batch_size" not in saved["loader"] and saved["train"]["batch_size"] == 8
    assert (b / "config.yaml").read_text() == (a / "config.yaml").read_text()
    assert read_metrics(b / "metrics.jsonl") != []
    losses = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl")]
    assert losses(b) == losses(a)                  # the same run again, exactly (CPU, one process)


def test_provenance_names_code_packages_command_and_data(runs, shards):
    run, _, args = runs["a"]
    p = json.loads((run / "provenance.json").read_text())
    assert p["argv"][1:] == args and p["cwd"] == str(shards.parent)
    assert p["data"] == str(shards) and p["out"] == str(run)      # absolute, though given relative
    assert p["manifest_sha256"] == hashlib.sha256((shards / "manifest.json").read_bytes()).hexdigest()
    for name in ("torch", "torchvision", "accelerate", "webdataset", "numpy"):
        assert p["packages"][name] == metadata.version(name)
    assert p["packages"]["sonostream"] == metadata.version("sonostream")
    assert p["world_size"] == 1 and p["devices"] == ["cpu"] and p["precision"] == "no"
    assert p["resumed_from"] is None and p["earlier"] == []
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    assert p["git"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)


def test_the_tracker_project_comes_from_the_config(runs):
    run, _, _ = runs["a"]
    assert list((run / "my-project").glob("events.out.tfevents.*"))
    assert not (run / "tb").exists() and not (run / "sonostream").exists()


def test_provenance_never_fails_without_git_and_keeps_earlier_invocations(tmp_path, monkeypatch):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}       # not a repository
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert git_state() == {"commit": None, "dirty": None}               # no git at all
    path = tmp_path / "provenance.json"
    write_provenance(path, {"n": 1}, resumed=False)
    write_provenance(path, {"n": 2}, resumed=True)
    write_provenance(path, {"n": 3}, resumed=True)
    saved = json.loads(path.read_text())
    assert saved["n"] == 3 and [e["n"] for e in saved["earlier"]] == [1, 2]
    write_provenance(path, {"n": 4}, resumed=False)                     # a new run: no history
    assert json.loads(path.read_text())["earlier"] == []


def test_finetune_config_yaml_repeats_the_run_from_another_folder(seg_shards, runs, tmp_path,
                                                                  monkeypatch):
    encoder = runs["a"][0] / "encoder.pt"
    monkeypatch.chdir(encoder.parent.parent)
    cfg = load_finetune_config(FINETUNE_CONFIG, FINETUNE_FAST, mode="supervised", max_steps=2,
                               init=os.path.join(encoder.parent.name, "encoder.pt"))
    train(cfg, str(seg_shards), tmp_path / "ft", quiet=True)
    saved = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert saved["task"]["init"] == str(encoder)               # absolute, though given relative
    monkeypatch.chdir(tmp_path)
    again = load_finetune_config(tmp_path / "ft" / "config.yaml")
    train(again, str(seg_shards), tmp_path / "ft2", quiet=True)
    assert (tmp_path / "ft2" / "config.yaml").read_text() == (tmp_path / "ft" / "config.yaml").read_text()
    losses = lambda run: [r["loss"] for r in read_metrics(run / "metrics.jsonl")]
    assert losses(tmp_path / "ft2") == losses(tmp_path / "ft")
