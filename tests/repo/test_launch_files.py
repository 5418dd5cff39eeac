"""The launch files (run configs, Accelerate, DeepSpeed, Slurm) load and say what the trainer expects."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
RUN_CONFIGS = sorted((LAUNCH / "configs").rglob("pretrain.yaml"))
FINETUNE_CONFIGS = sorted((LAUNCH / "configs").rglob("finetune.yaml"))
ACCELERATE = sorted((LAUNCH / "accelerate").glob("*.yaml"))
DEEPSPEED = sorted((LAUNCH / "deepspeed").glob("*.json"))
SBATCH = LAUNCH / "slurm" / "pretrain.sbatch"


def test_the_launch_files_exist():
    assert {p.name for p in ACCELERATE} >= {"single_gpu.yaml", "multi_gpu.yaml", "multi_node.yaml",
                                            "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"}
    assert {p.name for p in DEEPSPEED} >= {"zero2.json", "zero3.json"}
    assert LAUNCH / "configs" / "pretrain.yaml" in RUN_CONFIGS and SBATCH.is_file()


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_run_config_loads(path):
    from pipeline.train.pretraining import load_pretrain_config
    cfg = load_pretrain_config(path)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) <= {"model", "heads", "tasks", "loader", "augment", "optim", "train"}
    assert "batch_size" not in raw.get("loader", {})
    assert cfg.train.batch_size == raw["train"]["batch_size"]   # the file's values, not defaults


def test_every_config_is_a_pretrain_or_finetune_config():
    assert set((LAUNCH / "configs").rglob("*.yaml")) == set(RUN_CONFIGS) | set(FINETUNE_CONFIGS)
    assert len(FINETUNE_CONFIGS) == 2


@pytest.mark.parametrize("path", FINETUNE_CONFIGS, ids=lambda p: str(p.relative_to(LAUNCH)))
def test_finetune_config_loads(path):
    from pipeline.train.finetuning import load_finetune_config
    cfg = load_finetune_config(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.train.batch_size == raw["train"]["batch_size"]
    assert cfg.model.arch == raw["model"]["arch"] and cfg.data.image_size % 32 == 0


def test_real_config_is_the_real_size():
    from pipeline.train.pretraining import load_pretrain_config
    cfg = load_pretrain_config(LAUNCH / "configs" / "pretrain.yaml")
    assert (cfg.model.arch, cfg.loader.image_size, cfg.loader.clip_len) == ("resnet18", 224, 4)
    assert (cfg.train.batch_size, cfg.train.precision, cfg.train.steps) == (256, "bf16", 20000)
    assert cfg.train.batch_size % 8 == 0 and cfg.train.batch_size % 16 == 0   # 1 and 2 nodes x 8


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_config(path):
    ds = json.loads(path.read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == "auto" and ds["fp16"]["enabled"] == "auto"
    assert "optimizer" not in ds and "scheduler" not in ds   # the trainer builds AdamW + LambdaLR
    assert ds["zero_allow_untested_optimizer"] is True
    zero = ds["zero_optimization"]
    assert zero["stage"] == {"zero2.json": 2, "zero3.json": 3}[path.name]
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True   # encoder.pt export
    # "auto" bucket sizes need a Transformers model.config.hidden_size, which ours lacks
    assert not [k for k, v in zero.items() if v == "auto"]


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_accepts_config(path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    DeepSpeedZeroConfig(**json.loads(path.read_text())["zero_optimization"])   # unknown keys raise


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config(path):
    text = path.read_text()
    assert text.startswith("#") and f"--config_file launch/accelerate/{path.name}" in text.split("\n\n")[0]
    from accelerate.commands.config.config_args import load_config_from_file
    cfg = load_config_from_file(str(path))   # unknown keys raise
    raw = yaml.safe_load(text)
    # train.precision decides; Accelerate also refuses mixed_precision beside a DeepSpeed file
    assert "mixed_precision" not in raw
    assert cfg.num_processes >= 1 and cfg.num_processes % cfg.num_machines == 0
    ds = raw.get("deepspeed_config") or {}
    assert (raw["distributed_type"] == "DEEPSPEED") == bool(ds)
    if ds:
        assert (ROOT / ds["deepspeed_config_file"]).is_file()
        assert not set(ds) & {"gradient_accumulation_steps", "gradient_clipping", "zero_stage",
                              "offload_optimizer_device", "offload_param_device"}


def test_sbatch():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    for needle in ("#SBATCH --nodes", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node",
                   "#SBATCH --signal=USR1", "srun", "--machine_rank", "--num_machines",
                   "--main_process_ip", "-m pipeline.pretrain", "--resume latest",
                   "scontrol show hostnames"):
        assert needle in text, needle


def test_readme_pretraining_section_names_the_launch_files():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Pretraining the encoder", 1)[1].split("\n## ", 1)[0]
    for path in ACCELERATE:
        assert path.name in section, path.name
    for path in DEEPSPEED:
        assert path.name in section, path.name
    assert "launch/slurm/pretrain.sbatch" in section and "launch/configs/pretrain.yaml" in section
    assert "--resume latest" in section and "tensorboard --logdir" in section


def test_sbatch_takes_cpus_from_slurm_and_launches_once_per_node(tmp_path):
    """The sbatch file run by bash with fake srun/scontrol/accelerate: the trainer command it
    would start, with decode threads from SLURM_CPUS_PER_TASK (nothing hard-coded)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    fake = tmp_path / "bin"
    fake.mkdir()
    scripts = {
        "scontrol": "echo node-a; echo node-b",
        "srun": 'while [ "${1#--}" != "$1" ]; do shift; done; exec "$@"',   # drop srun's options
        "accelerate": f'printf "%s\\n" "$@" > {tmp_path}/accelerate.args',
    }
    for name, body in scripts.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    text = SBATCH.read_text()
    assert "--cpus-per-task=" not in "\n".join(l for l in text.splitlines() if l.startswith("#SBATCH"))
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_NODEID": "1",
           "SLURM_CPUS_PER_TASK": "48", "SLURM_SUBMIT_DIR": str(ROOT), "OUT": str(tmp_path / "run")}
    done = subprocess.run([bash, str(SBATCH)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "48 CPUs per node (6 decode threads per GPU)" in done.stdout
    args = (tmp_path / "accelerate.args").read_text().splitlines()
    assert args[0] == "launch" and args.count("launch") == 1
    pairs = dict(zip(args, args[1:]))
    assert pairs["--machine_rank"] == "1" and pairs["--num_machines"] == "2"
    assert pairs["--main_process_ip"] == "node-a" and pairs["--num_processes"] == "16"
    assert {"loader.decode_threads=6", "loader.dali_threads=6"} <= set(args)
    from pipeline.train.pretraining import load_pretrain_config
    sets = [v for k, v in zip(args, args[1:]) if k == "--set"]
    cfg = load_pretrain_config(ROOT / pairs["--config"], sets)   # the overrides are valid keys
    assert cfg.loader.decode_threads == 6


BUILD_SBATCH = LAUNCH / "slurm" / "build.sbatch"
BUILD_SUBMIT = LAUNCH / "slurm" / "build_submit.sh"


def _fake_bin(tmp_path, scripts: dict) -> Path:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    return fake


def test_build_sbatch_parses_and_names_the_three_commands():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    for path in (BUILD_SBATCH, BUILD_SUBMIT):
        subprocess.run([bash, "-n", str(path)], check=True)
    text = BUILD_SBATCH.read_text()
    directives = [l for l in text.splitlines() if l.startswith("#SBATCH")]
    assert all(l.startswith("#SBATCH --") and "=" in l for l in directives), directives
    assert {"--job-name", "--cpus-per-task", "--time", "--output"} <= {
        l.split()[1].split("=")[0] for l in directives}
    for needle in ("--plan --parts", "--part \"$PART\" --parts", "--merge", "SLURM_ARRAY_TASK_ID",
                   "--workers", "SLURM_CPUS_PER_TASK", "--array=0-$((PARTS-1))%",
                   "--dependency=afterok:"):
        assert needle in text, needle
    submit = BUILD_SUBMIT.read_text()
    for needle in ("STEP=plan", "STEP=part", "STEP=merge", "--array=", "--dependency=afterok:",
                   "done.json", "--parsable"):
        assert needle in submit, needle


def test_build_sbatch_runs_each_step(tmp_path):
    """build.sbatch with a fake `sonostream`: the command each STEP runs."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    fake = _fake_bin(tmp_path, {"sonostream": f'echo "$@" >> {tmp_path}/calls'})
    base = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "SLURM_SUBMIT_DIR": str(ROOT),
            "OUT": "/shared/ds", "CSV": "/shared/frames.csv", "PARTS": "4",
            "SLURM_CPUS_PER_TASK": "12", "BUILD_ARGS": "--image-size 128 --seed 3"}
    for step, extra in (("plan", {}), ("part", {"SLURM_ARRAY_TASK_ID": "3"}), ("merge", {})):
        done = subprocess.run([bash, str(BUILD_SBATCH)], env={**base, "STEP": step, **extra},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        "build --csv /shared/frames.csv --out /shared/ds --plan --parts 4 --image-size 128 --seed 3",
        "build --out /shared/ds --part 3 --parts 4 --workers 12 --quiet",
        "build --out /shared/ds --merge"]
    bad = subprocess.run([bash, str(BUILD_SBATCH)], env={**base, "STEP": "part"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--array" in bad.stderr


def test_build_submit_chains_plan_parts_merge_and_resubmits_only_unfinished_parts(tmp_path):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    log = tmp_path / "sbatch.log"
    # a fake sbatch: logs its arguments and prints a new job id
    fake = _fake_bin(tmp_path, {"sbatch": f'echo "$@" >> {log}; echo $(( $(wc -l < {log}) + 100 ))'})
    out = tmp_path / "ds"
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "CSV": "/shared/frames.csv",
           "OUT": str(out), "PARTS": "4", "MAX_RUNNING": "2"}

    def submit():
        log.unlink(missing_ok=True)
        done = subprocess.run([bash, str(BUILD_SUBMIT), "--seed", "1"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return log.read_text().splitlines()

    plan, parts, merge = submit()
    assert "--export=ALL,STEP=plan" in plan and "--dependency" not in plan
    assert "--dependency=afterok:101 --array=0-3%2 --export=ALL,STEP=part" in parts
    assert "--dependency=afterok:102 --export=ALL,STEP=merge" in merge
    for part in (0, 2):   # parts 0 and 2 finished; 1 and 3 failed
        (out / ".work" / f"part-{part:03d}").mkdir(parents=True)
        (out / ".work" / f"part-{part:03d}" / "done.json").write_text("{}")
    assert "--array=1,3%2" in submit()[1]
    for part in (1, 3):
        (out / ".work" / f"part-{part:03d}").mkdir(parents=True)
        (out / ".work" / f"part-{part:03d}" / "done.json").write_text("{}")
    plan, merge = submit()   # every part finished: plan (a no-op) and merge only
    assert "STEP=plan" in plan and "--dependency=afterok:101 --export=ALL,STEP=merge" in merge
