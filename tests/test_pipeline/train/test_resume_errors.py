"""--resume that cannot work says why and what to do: a truncated checkpoint file (resume from
an earlier one, listed), and a config that changed a setting the checkpoint's model or data
depend on (each key, both values, the --set that sets it back); other settings may change.
A disk that fills up while a checkpoint is saved leaves the previous one intact and says so."""
import errno
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.pretrain import main
from pipeline.train.checkpoint import check_resume, save_checkpoint
from pipeline.train.config import saved_dict
from pipeline.train.finetuning import load_finetune_config
from pipeline.train.logs import read_metrics
from pipeline.train.pretraining import load_pretrain_config, train
from preprocessing.format import SonostreamError

from factories import FINETUNE_CONFIG, PRETRAIN_CONFIG, PRETRAIN_FAST

pytestmark = pytest.mark.slow
FAST = [*PRETRAIN_FAST, "train.checkpoint_every=2", "train.figure_every=0"]


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory):
    """A 4-step pretraining run with checkpoints step-2 and step-4."""
    out = tmp_path_factory.mktemp("resume") / "run"
    train(load_pretrain_config(PRETRAIN_CONFIG, FAST, 4), str(shards), out, quiet=True)
    return out


def resume(shards, out, *sets, steps=6):
    args = ["--config", str(PRETRAIN_CONFIG), "--data", str(shards), "--out", str(out),
            "--max-steps", str(steps), "--quiet", "--resume", "latest"]
    return main([*args, *[a for s in (*FAST, *sets) for a in ("--set", s)]])


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "custom_checkpoint_1.pkl"])
def test_a_truncated_checkpoint_file_names_it_and_the_earlier_checkpoint(shards, run, tmp_path,
                                                                         capsys, name):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    f = out / "checkpoints" / "step-4" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert resume(shards, out) == 2
    err = capsys.readouterr().err
    assert f"{f} (" in err and "is damaged or truncated" in err, err
    assert f"--resume {out / 'checkpoints' / 'step-2'} (the run's checkpoints: step-2)" in err
    assert "Traceback" not in err and "holds more than tensors" not in err


def test_changed_clip_len_is_refused_before_loading_the_model(shards, run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    assert resume(shards, out, "loader.clip_len=5") == 2      # was a state-dict size mismatch
    err = capsys.readouterr().err
    assert "loader.clip_len 4 in the checkpoint (now 5)" in err, err
    assert "--set loader.clip_len=4" in err and "without --resume" in err


def test_changed_mask_ratio_and_image_size_are_refused_not_trained_on(shards, run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    assert resume(shards, out, "loader.mask_ratio=0.75", "loader.image_size=64") == 2
    err = capsys.readouterr().err
    assert "loader.image_size 32 in the checkpoint (now 64)" in err, err
    assert "loader.mask_ratio 0.6 in the checkpoint (now 0.75)" in err
    assert "--set loader.image_size=32 --set loader.mask_ratio=0.6" in err
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 4   # nothing trained


def test_schedule_length_logging_and_checkpointing_may_change_on_resume(shards, run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    assert resume(shards, out, "train.log_every=2", "train.checkpoint_every=3",
                  "tasks.beta=0.02", "optim.warmup_steps=3", steps=6) == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-6"


def test_finetuning_refuses_other_frames_or_frame_size(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    base = ["data.image_size=32", "train.trackers=[]"]
    saved = load_finetune_config(FINETUNE_CONFIG, base, mode="semi")
    (ckpt / "run.yaml").write_text(yaml.safe_dump({"step": 3, "config": saved_dict(saved)}))
    check_resume(ckpt, load_finetune_config(FINETUNE_CONFIG, [*base, "semi.alpha=0.3",
                                                              "train.steps=50"], mode="semi"))
    now = load_finetune_config(FINETUNE_CONFIG, [*base, "data.image_size=64", "optim.lr_encoder=0.1"],
                               mode="multitask", label_fraction=0.5)
    with pytest.raises(SonostreamError) as e:
        check_resume(ckpt, now)
    msg = str(e.value)
    for part in ("task.mode semi in the checkpoint (now multitask)",
                 "data.label_fraction 1.0 in the checkpoint (now 0.5)",
                 "data.image_size 32 in the checkpoint (now 64)",
                 "optim.lr_encoder 0.002 in the checkpoint (now 0.1)",   # the optimizer keeps it
                 "--set task.mode=semi --set data.label_fraction=1.0 --set data.image_size=32 "
                 "--set optim.lr_encoder=0.002",
                 "--init ENCODER.pt"):
        assert part in msg, msg


def test_pretraining_refuses_other_patient_groups_or_pm_positives(tmp_path):
    """Both change which clips a batch holds and what PM learns: a resume must not mix them."""
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    saved = load_pretrain_config(PRETRAIN_CONFIG, FAST)
    (ckpt / "run.yaml").write_text(yaml.safe_dump({"step": 3, "config": saved_dict(saved)}))
    check_resume(ckpt, load_pretrain_config(PRETRAIN_CONFIG, FAST))
    now = load_pretrain_config(PRETRAIN_CONFIG, [*FAST, "loader.patient_groups=1",
                                                 "loader.pm_positive=video"])
    with pytest.raises(SonostreamError) as e:
        check_resume(ckpt, now)
    msg = str(e.value)
    assert "loader.patient_groups 2 in the checkpoint (now 1)" in msg, msg
    assert "loader.pm_positive patient in the checkpoint (now video)" in msg, msg


def test_a_damaged_run_yaml_names_itself(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / "run.yaml").write_text("config: {model: [\n")
    with pytest.raises(SonostreamError, match=r"run\.yaml is damaged \(not YAML.*the run has no other "
                                         r"checkpoint: start again without --resume"):
        check_resume(ckpt, load_pretrain_config(PRETRAIN_CONFIG, FAST))


class FakeAccelerator:
    """What save_checkpoint uses of an Accelerator; ``save_state`` fills the disk on call n."""
    is_main_process = True

    def __init__(self, fail_on: int):
        self.calls, self.fail_on = 0, fail_on

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        self.calls += 1
        (Path(folder) / "model.safetensors").write_bytes(bytes(3000))
        if self.calls == self.fail_on:
            (Path(folder) / "optimizer.bin").write_bytes(bytes(100))   # cut short
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "optimizer.bin"))
        (Path(folder) / "optimizer.bin").write_bytes(bytes(6000))


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path):
    acc, run = FakeAccelerator(fail_on=2), tmp_path / "run"
    save_checkpoint(acc, run, 2, keep=3, info={"step": 2})
    with pytest.raises(SonostreamError) as e:
        save_checkpoint(acc, run, 4, keep=3, info={"step": 4})
    msg = str(e.value)
    assert msg.startswith(f"no space left on the device (or the disk quota is used up) writing "
                          f"checkpoint step-4 in {run / 'checkpoints'} ("), msg
    assert "; about 9 kB needed); the partial checkpoint was removed; " in msg   # step-2's size
    assert f"{run / 'checkpoints' / 'step-2'} is intact and still latest: free space there" in msg
    assert f"rerun with --resume latest, or continue in another --out with --resume {run}" in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-2"]
    assert (run / "checkpoints" / "latest").read_text() == "step-2\n"
