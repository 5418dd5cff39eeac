"""The accelerator a training job runs on: Accelerate (CPU/gloo, CUDA/NCCL, DeepSpeed ZeRO) with
the project's precision rules, the per-rank batch, and DeepSpeed's "auto" fields filled in.

Kept apart from :mod:`.loop` (the step loop), which only receives the accelerator.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from preprocessing.format import SonostreamError

if TYPE_CHECKING:
    from .loop import TrainConfig


def make_accelerator(tc: TrainConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    cuda = torch.cuda.is_available()
    use_ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if tc.precision == "fp16" and not cuda:
        raise SonostreamError("train.precision fp16 needs a GPU; use bf16 or no on CPU")
    if use_ds and tc.precision == "fp16":
        raise SonostreamError("with DeepSpeed, train.precision runs as torch autocast inside the "
                              "engine, which has no fp16 loss scaler here: use train.precision "
                              "bf16")
    # Without CUDA, gloo. `cpu=True` makes Accelerate pick its MULTI_CPU (gloo) mode, but it also
    # drops a DeepSpeed plugin, so the DeepSpeed path keeps cpu=False and passes gloo explicitly.
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1 or use_ds
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if multi and not cuda else []
    if use_ds and not cuda:
        skip_deepspeed_shm_build()
    # DeepSpeed: Accelerate applies no autocast and DeepSpeed's own bf16 mode casts the weights
    # (BatchNorm then sees bf16 weights beside fp32 stats). So the engine keeps fp32 weights and
    # runs the forward under torch autocast (fill_deepspeed_auto); exported weights stay fp32.
    return Accelerator(cpu=not cuda and not use_ds,
                       mixed_precision="no" if use_ds else tc.precision,
                       gradient_accumulation_steps=tc.grad_accum,
                       log_with=list(tc.trackers) or None, project_dir=str(out),
                       kwargs_handlers=kwargs)


def skip_deepspeed_shm_build() -> None:
    """DeepSpeed on CPU: use gloo's collectives, not DeepSpeed's shared-memory all-reduce kernel.

    DeepSpeed's CPU accelerator JIT-compiles that kernel (``deepspeed_shm_comm``) the first time
    its comm backend starts: about 50 s on 2 cores, again for every new virtual environment path
    (so in every fresh CI clone). The kernel only speeds up CPU collectives; CPU runs here are
    tests and smoke runs, where gloo is enough. Marking the op incompatible makes DeepSpeed fall
    back to torch.distributed (``deepspeed.comm.torch.build_shm_op`` returns None).
    """
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def per_rank_batch(acc, tc: TrainConfig) -> int:
    world = acc.num_processes
    if tc.batch_size % world:
        raise SonostreamError(f"train.batch_size {tc.batch_size} does not divide by the world size "
                              f"{world}; use a multiple of {world}, e.g. "
                              f"{max(world, tc.batch_size // world * world)}")
    return tc.batch_size // world


def fill_deepspeed_auto(acc, per_rank: int, tc: TrainConfig) -> None:
    """Our loader is not a DataLoader, so DeepSpeed's "auto" batch and clipping come from here."""
    plugin = acc.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for key, value in (("train_micro_batch_size_per_gpu", per_rank),
                       ("gradient_clipping", tc.clip_grad)):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    if tc.precision == "bf16" and "torch_autocast" not in ds:
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
