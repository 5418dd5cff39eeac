"""The console script: torch-free help, --version, and exit statuses (2 only for our errors: a
genuine bug keeps its traceback)."""
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.cli.console import COMMANDS
from pipeline.train.loop import TrainingError
from preprocessing.format import SonostreamError

HEAVY = ("torch", "accelerate", "webdataset", "segmentation_models_pytorch", "pydicom", "av")


def test_parsing_every_command_loads_no_heavy_library():
    code = ("import sys; from pipeline.cli.console import build_parser; build_parser(); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True,
                       text=True, check=True)
    for command in COMMANDS:
        assert command in r.stdout


def test_version():
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--version"], capture_output=True,
                       text=True, check=True)
    from importlib.metadata import version
    assert r.stdout.strip() == f"sonostream {version('sonostream')}"


def test_module_entry_points_take_the_commands_flags():
    for job, flag in (("pretrain", "--stop-after"), ("finetune", "--label-fraction")):
        r = subprocess.run([sys.executable, "-m", f"pipeline.{job}", "--help"], capture_output=True,
                           text=True, check=True)
        assert f"usage: python -m pipeline.{job}" in r.stdout and flag in r.stdout


@pytest.fixture
def command(monkeypatch):
    """Replace what `sonostream inspect` runs."""
    def use(fn):
        monkeypatch.setitem(COMMANDS, "inspect", fn)
    return use


def test_our_errors_exit_2_with_the_message(command, capsys):
    def bad_input(args):
        raise SonostreamError("row 3 of x.csv: frame_id is empty; fill it in")
    command(bad_input)
    assert main(["inspect", "somewhere"]) == 2
    assert capsys.readouterr().err == "error: row 3 of x.csv: frame_id is empty; fill it in\n"


def test_a_failed_run_exits_1(command, capsys):
    def diverged(args):
        raise TrainingError("the loss was not finite for 10 steps in a row")
    command(diverged)
    assert main(["inspect", "somewhere"]) == 1
    assert "error: the loss was not finite" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast"),
                                 ZeroDivisionError("division by zero"), KeyError("shard")])
def test_a_genuine_bug_keeps_its_traceback(command, bug):
    """A ValueError from numpy or torch is not bad input: it is not turned into exit 2."""
    def buggy(args):
        raise bug
    command(buggy)
    with pytest.raises(type(bug)):
        main(["inspect", "somewhere"])


def test_a_bug_in_a_real_process_prints_a_traceback_and_exits_1():
    code = ("import sys; import pipeline.cli.console as m; "
            "m.COMMANDS['verify'] = lambda a: [][1]; sys.exit(m.main(['verify', 'x']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" in r.stderr and "IndexError" in r.stderr


def _into_a_closed_pipe(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with its stdout a pipe whose reader is already gone (``... | head`` after
    head exits)."""
    import os
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-c", code], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)


def test_a_closed_pipe_ends_quietly():
    code = ("import sys; import pipeline.cli.console as m; "
            "m.COMMANDS['inspect'] = lambda a: print('row\\n' * 100000); "
            "sys.exit(m.main(['inspect', 'x']))")
    r = _into_a_closed_pipe(code)
    assert (r.returncode, r.stderr) == (141, "")


def test_a_broken_pipe_that_is_not_stdout_keeps_its_traceback():
    code = ("import sys; import pipeline.cli.console as m\n"
            "def child_gone(args): raise BrokenPipeError(32, 'Broken pipe')\n"
            "m.COMMANDS['inspect'] = child_gone; sys.exit(m.main(['inspect', 'x']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr and "BrokenPipeError" in r.stderr


def test_log_level_from_the_top_or_from_the_training_commands(command):
    import logging
    from pipeline.cli.console import build_parser
    root, before = logging.getLogger(), logging.getLogger().level
    seen = []
    command(lambda args: seen.append(root.level))
    try:
        assert main(["--log-level", "warning", "inspect", "x"]) == 0
        assert main(["inspect", "x"]) == 0                     # the next invocation: the default
        assert seen == [logging.WARNING, logging.INFO]
    finally:
        root.setLevel(before)
    job = ["--data", "d", "--out", "o"]
    assert build_parser().parse_args(["--log-level", "ERROR", "pretrain", *job]).log_level == "ERROR"
    assert build_parser().parse_args(["finetune", *job, "--log-level", "debug"]).log_level == "DEBUG"
    assert build_parser().parse_args(["pretrain", *job]).log_level is None
    r = subprocess.run([sys.executable, "-m", "pipeline.pretrain", "--help"], capture_output=True,
                       text=True, check=True)
    assert "--log-level" in r.stdout and "metrics lines" in r.stdout


@pytest.mark.parametrize("argv, shown", [([], False), (["--verbose"], True)])
def test_experiment_shows_every_runs_metrics_only_when_verbose(monkeypatch, tmp_path, argv, shown):
    """The training loop's metrics lines are per run; the experiment prints one line per run."""
    import logging
    import pipeline.apps.experiment as experiment
    seen = []

    def fake(*args, **kw):
        seen.append(logging.getLogger("sonostream.train").isEnabledFor(logging.INFO))
    monkeypatch.setattr(experiment, "label_efficiency", fake)
    train_log = logging.getLogger("sonostream.train")
    before = train_log.level
    try:
        assert main(["experiment", "label-efficiency", "--data", "d", "--out", str(tmp_path),
                     *argv]) == 0
    finally:
        train_log.setLevel(before)
    assert seen == [shown]


@pytest.mark.parametrize("sig, rc", [("SIGTERM", 0), ("SIGINT", 130)])
def test_experiment_stopped_by_a_signal_says_so(monkeypatch, tmp_path, capsys, sig, rc):
    """A signal inside a run ends the experiment with the pretrain/finetune exit statuses and the
    way to continue, not 'wrote ...' as if it had finished."""
    import logging
    import pipeline.apps.experiment as experiment

    def fake(*args, **kw):
        raise experiment.ExperimentStopped("scratch-supervised-p1-s0", sig, 7)
    monkeypatch.setattr(experiment, "label_efficiency", fake)
    train_log = logging.getLogger("sonostream.train")
    before = train_log.level
    try:
        assert main(["experiment", "label-efficiency", "--data", "d", "--out", str(tmp_path)]) == rc
    finally:
        train_log.setLevel(before)
    out = capsys.readouterr().out
    assert f"stopped by {sig} in run scratch-supervised-p1-s0 at step 7" in out
    assert "rerun the same command to continue" in out and "wrote" not in out
