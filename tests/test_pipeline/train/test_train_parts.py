"""Training parts on their own: the LR schedule and groups, run-config errors."""
import pytest
import torch

from pipeline.train.config import load_config
from pipeline.data.tasks import io_classes
from pipeline.models import PretrainModel
from pipeline.train.optim import OptimConfig, build_optimizer, lr_factor
from pipeline.train.pretraining import PretrainConfig, load_pretrain_config


def _model(k=4, tasks=("mir", "pm", "io")):
    torch.manual_seed(0)
    return PretrainModel("tiny", k, len(io_classes(k)), tasks=tasks).eval()


def test_warmup_then_cosine_and_separate_groups():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] <= 1.0 and f[10] == pytest.approx(1.0)
    assert f[99] == pytest.approx(0.1, abs=1e-3) and all(a >= b for a, b in zip(f[10:], f[11:]))
    opt = build_optimizer(_model(), OptimConfig(lr_encoder=1e-4, lr_heads=1e-3, weight_decay=0.1))
    by = {g["name"]: g for g in opt.param_groups}
    assert by["encoder"]["lr"] == 1e-4 and by["heads"]["lr"] == 1e-3
    assert by["encoder_no_decay"]["weight_decay"] == 0 and by["heads"]["weight_decay"] == 0.1


def test_config_errors_say_the_fix(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("train:\n  stesp: 10\n")
    with pytest.raises(ValueError, match=r"unknown config key config.train.stesp \(did you mean 'steps'\?\)"):
        load_config(bad, PretrainConfig)
    bad.write_text("loader:\n  batch_size: 8\n")
    with pytest.raises(ValueError, match="set train.batch_size"):
        load_pretrain_config(bad)
    with pytest.raises(ValueError, match="model.arch must be one of"):
        load_pretrain_config(None, ["model.arch=resnet9"])
    with pytest.raises(ValueError, match="train.steps must be int"):
        load_pretrain_config(None, ["train.steps=ten"])
    with pytest.raises(ValueError, match="every weight is 0"):
        load_pretrain_config(None, ["tasks.mir=0", "tasks.pm=0", "tasks.io=0"])
    assert load_pretrain_config(None, ["optim.lr_encoder=5e-4"]).optim.lr_encoder == 5e-4  # YAML 1.1 text
    cfg = load_pretrain_config(None, ["tasks.pm=0"], max_steps=7)
    assert cfg.train.steps == 7 and cfg.tasks.active == ("mir", "io")
    assert PretrainModel("tiny", 4, 12, tasks=cfg.tasks.active).pm is None


def test_stop_signal_catches_ctrl_c_during_the_job_only(capsys):
    import os
    import signal

    from pipeline.cli.common import guarded
    from pipeline.train.loop import StopSignal
    before = signal.getsignal(signal.SIGINT)
    stopper = StopSignal()
    os.kill(os.getpid(), signal.SIGINT)              # first Ctrl-C: a flag, checkpoint next step
    assert stopper.received == "SIGINT"
    with pytest.raises(KeyboardInterrupt):            # the second aborts
        os.kill(os.getpid(), signal.SIGINT)
    stopper.restore()
    assert signal.getsignal(signal.SIGINT) is before   # after the job Ctrl-C interrupts again

    def interrupted():
        raise KeyboardInterrupt
    assert guarded(interrupted) == 130
    assert "rerun the same command with --resume latest" in capsys.readouterr().err
