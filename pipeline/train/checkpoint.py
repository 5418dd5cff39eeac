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

Loading (:func:`load_checkpoint`) never runs code from the folder: Accelerate's own
``load_state`` unpickles the registered objects (``custom_checkpoint_N.pkl``) with
``weights_only=False``, so it is not used. The model comes from safetensors, the optimizer,
scaler, registered objects and RNG states from ``torch.load(weights_only=True)`` (the RNG files
with only numpy's array globals allowed); a file holding anything else is refused. DeepSpeed
checkpoints are read by DeepSpeed's engine, whose loader is made ``weights_only=True`` too.
"""
from __future__ import annotations

import contextlib
import pickle
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from preprocessing.atomic import no_space_message, out_of_space, share, write_text
from preprocessing.format import SonostreamError

STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """What the loop needs beyond model/optimizer/scheduler/RNG to continue exactly."""
    step: int = 0                       # optimizer steps done
    loader: dict = field(default_factory=dict)
    nonfinite_skipped: int = 0          # steps skipped for a non-finite loss, in total
    empty_skipped: int = 0              # steps skipped for want of clips (all batches empty)
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
    with _no_space(run, step, tmp):
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with _no_space(run, step, tmp):
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


@contextlib.contextmanager
def _no_space(run, step: int, tmp: Path):
    """A disk that fills up while checkpoint ``step`` is saved: the partial ``.step-N.tmp`` is
    removed and the error says what is needed and that the previous checkpoint is intact."""
    try:
        yield
    except Exception as e:
        if not out_of_space(e, tmp.parent):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(run)
        needed = sum(f.stat().st_size for f in prev.rglob("*") if f.is_file()) if prev else None
        keep = (f"{prev} is intact and still latest: free space there (while saving, a run "
                f"holds train.keep_checkpoints + 1 checkpoints: a lower value needs less) and "
                f"rerun with --resume latest, or continue in another --out with --resume {run}"
                if prev else "no checkpoint of the run was "
                "saved before: free space there or choose another --out, and start again")
        raise SonostreamError(no_space_message(
            checkpoints_dir(run), f"checkpoint step-{step}", needed=needed,
            fix=f"the partial checkpoint was removed; {keep}")) from None


def check_resume(ckpt: Path, cfg) -> None:
    """The one resume-compatibility check of every job: the checkpoint's run config, read back
    into ``cfg``'s own dataclass, must have the same ``cfg.resume_identity()`` (the settings that
    fix the model that gets built and the data it trains on; ``RESUME_KEYS`` of the config
    class), or loading it would fail deep in torch or carry on with other data unnoticed. Every
    differing key is named, with both values. A checkpoint without run.yaml is not checked."""
    from .config import from_dict
    info = Path(ckpt) / "run.yaml"
    if not info.is_file():
        return
    try:
        raw = yaml.safe_load(info.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SonostreamError(f"cannot resume from {ckpt}: {info} is damaged (not YAML: "
                              f"{str(e).splitlines()[0][:200]}); {_earlier_hint(ckpt)}") from None
    try:
        saved = from_dict(type(cfg), raw.get("config") if isinstance(raw, dict) else raw,
                          where="config")
    except (SonostreamError, TypeError) as e:
        raise SonostreamError(f"cannot resume from {ckpt}: its run config does not load ({e}); "
                              "resume with the sonostream version that wrote it") from None
    have, want = saved.resume_identity(), cfg.resume_identity()
    differ = [k for k in want if have.get(k) != want[k]]
    if not differ:
        return
    back = " ".join(_set_arg(k, have.get(k)) for k in differ if _settable(cfg, k))
    raise SonostreamError(
        f"cannot resume from {ckpt}: these settings differ from the checkpoint's, and they fix "
        f"the model or the data it trains on: " + ", ".join(
            f"{k} {_flow(have.get(k))} in the checkpoint (now {_flow(want[k])})" for k in differ)
        + f"; set them back to resume ({back or 'the values of ' + str(info)}), or "
        + getattr(cfg, "RESUME_FIX", "to train with the new values, start a new run in another "
                  "--out, without --resume"))


def _flow(value) -> str:
    """A config value as YAML writes it in one line (what ``--set KEY=VALUE`` reads back)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _set_arg(key: str, value) -> str:
    arg = f"{key}={_flow(value)}"
    return f"--set '{arg}'" if any(c in arg for c in " []{}*?") else f"--set {arg}"


def _settable(cfg, key: str) -> bool:
    """Whether ``key`` is a config key (``--set`` takes it), not a derived value."""
    import dataclasses
    *parents, name = key.split(".")
    node = cfg
    for part in parents:
        node = getattr(node, part, None)
    return dataclasses.is_dataclass(node) and name in {f.name for f in dataclasses.fields(node)}


def _earlier_hint(ckpt: Path) -> str:
    """What to resume from instead of a damaged checkpoint: the run's other step-N folders."""
    ckpt = Path(ckpt)
    others = [p for _, p in list_checkpoints(ckpt.parent.parent) if p.name != ckpt.name]
    if not others:
        return ("the run has no other checkpoint: start again without --resume, in another --out "
                f"(or in this one after removing {ckpt.parent})")
    return (f"resume from an earlier checkpoint instead: --resume {others[-1]} (the run's "
            f"checkpoints: {', '.join(p.name for p in others)})")


def _load_plain(path: Path, ckpt: Path, what: str, allow=()):
    """``torch.load(weights_only=True)`` of one checkpoint file, or a SonostreamError."""
    import torch
    if not path.is_file():
        raise SonostreamError(f"cannot resume from {ckpt}: {path.name} ({what}) is missing; resume "
                              "from a complete checkpoint folder this pipeline wrote")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError) as e:   # weights_only refused what it holds
        raise SonostreamError(
            f"cannot resume from {ckpt}: {path} ({what}) is not a sonostream checkpoint file: it "
            f"holds more than tensors and plain data, which is never loaded because unpickling it "
            f"could run code ({_first_line(e)}); resume from a checkpoint this "
            f"pipeline wrote, or start without --resume") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:   # a cut-short zip or pickle
        raise damaged(ckpt, path, what, e) from None


def damaged(ckpt: Path, path, what: str, e: BaseException) -> SonostreamError:
    """The error for a checkpoint file that does not read back (truncated, cut short)."""
    return SonostreamError(
        f"cannot resume from {ckpt}: {path} ({what}) is damaged or truncated "
        f"({_first_line(e).split('. ')[0]}): "
        f"a save that was cut short, a full disk or an incomplete copy; {_earlier_hint(ckpt)}")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _rng_globals():
    from accelerate.utils.other import TORCH_SAFE_GLOBALS   # numpy arrays/dtypes, codecs.encode
    return TORCH_SAFE_GLOBALS


def load_checkpoint(accelerator, ckpt, model, optimizer, objects) -> None:
    """What ``accelerator.save_state`` wrote, loaded without unpickling objects: ``model`` and
    ``optimizer`` are the prepared ones, ``objects`` those registered for checkpointing (in
    order, ``custom_checkpoint_N.pkl``)."""
    import numpy as np
    import torch
    ckpt = Path(ckpt)
    found = sorted(p.name for p in ckpt.glob("custom_checkpoint_*.pkl"))
    if len(found) != len(objects):
        raise SonostreamError(f"cannot resume from {ckpt}: it holds {len(found)} custom_checkpoint "
                              f"files, this run saves {len(objects)}; resume with the run's config")
    if accelerator.distributed_type == "DEEPSPEED":
        safe_deepspeed_loads(model)
        model.load_checkpoint(str(ckpt), "pytorch_model")
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_model
        weights = ckpt / "model.safetensors"
        if not weights.is_file():
            raise SonostreamError(f"cannot resume from {ckpt}: model.safetensors is missing; "
                                  "resume from a complete checkpoint folder this pipeline wrote")
        dev = accelerator.device   # "cpu", not "cpu:0" (which safetensors refuses)
        try:
            load_model(accelerator.unwrap_model(model), weights,     # saved unwrapped (no "module.")
                       device="cpu" if dev.type == "cpu" else str(dev))
        except SafetensorError as e:   # a short file: its header promises more than it holds
            raise damaged(ckpt, weights, "model weights", e) from None
        optimizer.load_state_dict(_load_plain(ckpt / "optimizer.bin", ckpt, "optimizer state"))
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(_load_plain(ckpt / "scaler.pt", ckpt, "grad scaler"))
    for i, obj in enumerate(objects):
        obj.load_state_dict(_load_plain(ckpt / f"custom_checkpoint_{i}.pkl", ckpt,
                                        f"state of {type(obj).__name__}"))
    rng = _load_plain(ckpt / f"random_states_{accelerator.process_index}.pkl", ckpt, "RNG states",
                      allow=_rng_globals())
    if "step" in rng:
        accelerator.step = rng["step"]
    random.setstate(rng["random_state"])
    np.random.set_state(rng["numpy_random_seed"])
    torch.set_rng_state(rng["torch_manual_seed"])
    if torch.cuda.is_available() and "torch_cuda_manual_seed" in rng:
        torch.cuda.set_rng_state_all(rng["torch_cuda_manual_seed"])


def safe_deepspeed_loads(engine) -> None:
    """DeepSpeed's torch checkpoint engine loads with ``weights_only=False``; make it load with
    ``weights_only=True`` (DeepSpeed's few own types allowed)."""
    import torch
    ce = engine.checkpoint_engine

    def load(path, map_location=None):
        try:
            with torch.serialization.safe_globals(_deepspeed_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except (pickle.UnpicklingError, AttributeError) as e:
            raise SonostreamError(
                f"cannot resume: {path} is not a DeepSpeed checkpoint this pipeline wrote: it holds "
                f"more than tensors and plain data, which is never loaded because unpickling it could "
                f"run code ({_first_line(e)}); start without --resume") from None
        except (RuntimeError, EOFError, ValueError, OSError) as e:
            ckpt = next((p for p in Path(path).parents if STEP_DIR.match(p.name)), Path(path).parent)
            raise damaged(ckpt, path, "DeepSpeed state", e) from None
    ce.load = load


def _deepspeed_globals():
    """The DeepSpeed classes a ZeRO checkpoint holds: plain records (an enum, a dataclass, the
    loss scaler's attributes) rebuilt without calling any code of theirs beyond ``__new__``."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [ZeroStageEnum, fragment_address, LossScaler]
