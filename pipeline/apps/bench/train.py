"""`sonostream bench train`: end-to-end pretraining throughput on real shards against the same
model fed a batch already on the device, and images/s per precision.

One process, one device (the GPU when there is one). The model, optimizer and step are the
trainer's (:func:`pipeline.train.pretraining.pretrain_forward`, AdamW); the config is a run config,
so the real configuration is measured as it would train. Three timings, each after warm-up:

* ``synthetic_images_per_s[p]``: one loader batch, kept on the device and stepped over and
  over, at precision ``p`` (``no`` = fp32, ``bf16``): the model's speed with no input cost;
* ``real_images_per_s``: the loader streaming the shards (DALI or CPU, as ``loader.loader``
  says) at the config's precision;
* ``real_over_synthetic``: how much of the model's speed the input pipeline keeps (goal >= 0.9
  on a GPU), and ``bf16_over_fp32``.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from preprocessing.format import SonostreamError

MEASURED = ("no", "bf16")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(data, config=None, overrides=(), steps: int = 20, warmup: int = 3,
                precisions=MEASURED) -> dict:
    from pipeline.data import ClipLoader
    from pipeline.train.optim import build_optimizer
    from pipeline.train.pretraining import build_model, load_pretrain_config, pretrain_forward
    cfg = load_pretrain_config(config, overrides)
    for p in precisions:
        if p not in MEASURED:
            raise SonostreamError(f"--precisions takes {', '.join(MEASURED)}, got {p!r}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tc, k, tasks = cfg.train, cfg.loader.clip_len, cfg.tasks
    torch.manual_seed(tc.seed)
    loader = ClipLoader(data, replace(cfg.loader, batch_size=tc.batch_size), seed=tc.seed, device=device)
    model = build_model(cfg).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg.optim)
    dtypes = {"no": None, "bf16": torch.bfloat16}

    def step(batch, precision):
        dtype = dtypes[precision]
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _, _ = pretrain_forward(model, batch, tasks, 10_000, seed=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def batches():   # an empty batch (every clip had a corrupt member) has nothing to time
        while True:
            yield from (b for b in loader if b.batch_size)

    stream = batches()
    first = next(stream)
    images = first.batch_size * first.clip_len
    synthetic = {}
    for p in precisions:
        for _ in range(warmup):
            step(first, p)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step(first, p)
        _sync(device)
        synthetic[p] = images * steps / (time.perf_counter() - t0)

    real_p = tc.precision if tc.precision in MEASURED else "no"
    for _ in range(warmup):
        step(next(stream), real_p)
    _sync(device)
    t0, seen = time.perf_counter(), 0
    for _ in range(steps):
        b = next(stream)
        step(b, real_p)
        seen += b.batch_size * b.clip_len
    _sync(device)
    real = seen / (time.perf_counter() - t0)
    stream.close()
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "loader": loader.kind, "arch": cfg.model.arch, "image_size": list(loader.image_size),
              "batch_clips": tc.batch_size, "clip_len": k, "steps": steps, "warmup": warmup,
              "synthetic_images_per_s": synthetic, "real_precision": real_p,
              "real_images_per_s": real, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if real_p in synthetic:
        result["real_over_synthetic"] = real / synthetic[real_p]
    if "no" in synthetic and "bf16" in synthetic:
        result["bf16_over_fp32"] = synthetic["bf16"] / synthetic["no"]
    return result
