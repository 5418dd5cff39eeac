"""Run folder layout and checkpoints: ``RUN/checkpoints/step-N/`` written atomically, ``latest``.

    RUN/config.yaml            the resolved config of the run
    RUN/metrics.jsonl          one JSON object per logged step
    RUN/checkpoints/step-N/    accelerator.save_state: model, optimizer, RNG of every rank, and
                               the registered objects (LR scheduler, TrainState with the loader)
    RUN/checkpoints/latest     text file naming the newest complete step-N folder
    RUN/encoder.pt             the encoder alone, for downstream use

A checkpoint is saved into ``.step-N.tmp`` by every rank, then renamed by the main process once
all ranks are done, and only then does ``latest`` move. A crash mid-save leaves the previous
checkpoint as ``latest``. All ranks must see the same RUN folder (a shared file system).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from preprocessing.atomic import share, write_text
from preprocessing.format import SonostreamError

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """What the loop needs beyond model/optimizer/scheduler/RNG to continue exactly."""
    step: int = 0                       # optimizer steps done
    loader: dict = field(default_factory=dict)
    nonfinite_skipped: int = 0          # steps skipped for a non-finite loss, in total
    window: dict = field(default_factory=dict)   # metrics summed since the last log (all ranks)
    window_count: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


def checkpoints_dir(run) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run) -> list[tuple[int, Path]]:
    d = checkpoints_dir(run)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(run) -> Path | None:
    d = checkpoints_dir(run)
    named = d / "latest"
    if named.is_file():
        p = d / named.read_text().strip()
        if p.is_dir():
            return p
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, out) -> Path | None:
    """``--resume``: 'latest' (this --out), a RUN folder, or a checkpoint folder -> checkpoint path."""
    if resume is None:
        return None
    if resume == "latest":
        p = latest_checkpoint(out)
        where = out
    elif STEP_DIR.match(Path(resume).name) and Path(resume).is_dir():
        return Path(resume)
    else:
        p = latest_checkpoint(resume)
        where = resume
    if p is None:
        raise SonostreamError(f"--resume {resume}: no checkpoint in {checkpoints_dir(where)} (no "
                              f"step-N folder); run without --resume to start from scratch")
    return p


def save_checkpoint(accelerator, run, step: int, keep: int, info: dict | None = None) -> Path:
    """Every rank calls this (DeepSpeed saves its shards from each rank). ``info`` goes to run.yaml."""
    d = checkpoints_dir(run)
    tmp, final = d / f".step-{step}.tmp", d / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if info is not None:
            (tmp / "run.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
        share(tmp)   # safetensors writes 0600 files; a run folder is read by the whole group
        if final.exists():   # the same step saved again (e.g. --stop-after at a checkpoint step)
            shutil.rmtree(final)
        tmp.rename(final)
        write_text(d / "latest", final.name + "\n")
        for s, p in list_checkpoints(run)[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_resume(ckpt: Path, cfg) -> None:
    """The one resume-compatibility check of every job: the checkpoint's run config, read back
    into ``cfg``'s own dataclass, must have the same ``cfg.resume_identity()`` (what fixes the
    model that gets built), or loading it would fail deep in torch. A checkpoint without
    run.yaml is not checked."""
    from .config import from_dict
    info = Path(ckpt) / "run.yaml"
    if not info.is_file():
        return
    raw = (yaml.safe_load(info.read_text()) or {}).get("config")
    try:
        saved = from_dict(type(cfg), raw, where="config")
    except (SonostreamError, TypeError) as e:
        raise SonostreamError(f"cannot resume from {ckpt}: its run config does not load ({e}); "
                              "resume with the sonostream version that wrote it") from None
    have, want = saved.resume_identity(), cfg.resume_identity()
    for key in want:
        if have.get(key) != want[key]:
            raise SonostreamError(f"cannot resume from {ckpt}: its {key} config {have.get(key)} "
                                  f"differs from this run's {want[key]}; use the run's config")
