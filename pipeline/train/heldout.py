"""Held-out pretext metrics for pretraining: the ``validate`` part of its job (``Parts.validate``).

Every ``train.eval_every`` steps and at the end, on a fixed set of val clips
(``pipeline.data.heldout``: val patients, never the training window), with the model in eval
mode and no gradients (``loop.validate``):

* ``val_io_acc``: image ordering accuracy (chance 1 / the IO classes);
* ``val_pm_acc_cross_video``: patient matching accuracy on balanced pairs whose positive is a
  frame of *another video* of the same patient and whose negative is a frame of another
  patient (chance 0.5);
* ``val_mir_sector_mse``: the reconstruction's squared error (in the model's -1..1 units) over
  the hidden pixels inside the imaged sector (``tasks.sector_mask``, the fan training's MIR loss
  uses), not on the black outside the fan where the target is always the same.

The model is called through the task's own step (``pretraining.pretrain_forward``), so the
held-out inputs (masks, the IO permutation) are made exactly as in training. Each rank scores
its share of the set's forward batches (``heldout.eval_share``) and ``loop.validate`` sums
over ranks: the values do not depend on the world size or the batch split (eval mode scores
each clip on its own).
"""
from __future__ import annotations

import logging

from pipeline.data.heldout import clip_slice, eval_share, heldout_set
from pipeline.data.tasks import sector_mask

log = logging.getLogger("sonostream.train")
VAL_NOISE_SEED = 0x5A1   # the VAE draws no noise in eval mode; a fixed seed all the same


def pretext_validator(cfg, ctx, view, forward):
    """(validate, None), or (None, why there is none) when the data has no val split to use.
    ``view``: the train loader's IndexView (which splits exist); ``forward``: the task's step
    ``(model, batch, tasks, step, seed) -> (loss, logs, outputs)``."""
    tc, acc = cfg.train, ctx.acc
    if "val" in cfg.loader.splits:
        return None, ("loader.splits trains on the val split, so its patients are not held out "
                      "(train on [train] for held-out pretext metrics)")
    if len(view.rows_of(["val"])) == 0:
        return None, (f"{ctx.data} has no val split, so no held-out pretext metrics (build the "
                      "dataset with --val-fraction, e.g. 0.1, for val patients)")
    hs = heldout_set(ctx.data, cfg.loader, tc.eval_clips, tc.seed, cache_dir=ctx.cache_dir,
                     shard_url=ctx.shard_url)
    if hs.clips == 0:
        return None, f"none of the val split's clips could be used ({len(hs.faults)} corrupt)"
    # Forward batches of the training's per-rank size, whole triplets (their pairs stay inside)
    step = max(3, ctx.per_rank // 3 * 3) if hs.triplets else max(1, ctx.per_rank)
    bounds = [(s, min(s + step, hs.clips)) for s in range(0, hs.clips, step)]
    share = eval_share(len(bounds), acc.process_index, acc.num_processes)
    active = cfg.tasks.active
    keys = ([k for k, t in (("io_acc", "io"), ("mir_sector_mse", "mir")) if t in active]
            + (["pm_acc_cross_video"] if "pm" in active and hs.triplets else []))
    if acc.is_main_process:
        log.info("held-out pretext metrics every %d steps and at the end: %s%s", tc.eval_every,
                 hs.describe(), f"; {len(hs.faults)} corrupt member(s) left out" if hs.faults else "")

    def validate(model) -> dict:
        sums = {k: [0.0, 0.0] for k in keys}
        for i, weight in share:
            batch = clip_slice(hs.batch, *bounds[i]).to(acc.device)
            _, _, out = forward(model, batch, cfg.tasks, 0, VAL_NOISE_SEED)
            for k, (s, c) in batch_sums(out, batch).items():
                if k in sums:
                    sums[k][0] += weight * s
                    sums[k][1] += weight * c
        return {k: tuple(v) for k, v in sums.items()}

    return validate, None


def batch_sums(out: dict, batch) -> dict:
    """{name: (sum, count)} of one held-out batch from the model's outputs (``pretrain_forward``)."""
    sums = {}
    if "io_logits" in out:
        hit = out["io_logits"].float().argmax(1) == batch.io_label
        sums["io_acc"] = (float(hit.sum()), hit.numel())
    if "pm_logits" in out:
        hit = (out["pm_logits"].float() > 0).float() == batch.pm_label.float()
        sums["pm_acc_cross_video"] = (float(hit.sum()), hit.numel())
    if "recon" in out:
        hidden = (out["mask"] & sector_mask(batch.frames)).flatten(0, 1)   # the fan training scores
        err = (out["recon"].float() - out["target"].float()).pow(2)
        sums["mir_sector_mse"] = (float((err * hidden).sum()), float(hidden.sum()))
    return sums
