"""`sonostream bench step`: time per multi-task pretraining step, fused vs the seed's three passes.

Both steps run in one process on one :class:`PretrainModel` (the same encoder, heads and AdamW
optimizer as the trainer builds) and on the same synthetic batch of B clips x K frames:

* **fused** (ours): exactly the trainer's step. One encoder pass over the B*K masked frames feeds
  the MIR decoder (all B*K frames), the PM head (pairs picked among those features) and the IO
  head (each clip's features in permuted order); ``pretrain_losses(...)["loss"].backward()``,
  ``optimizer.step()``, ``zero_grad``. Images encoded per clip: K.
* **three-pass** (the seed's way), at equal B and K with the same modules: the MIR pass encodes B
  masked frames (one per clip) and decodes them; the PM pass encodes 2B frames (the two sides of
  B pairs: one per clip, alternately a positive and a negative, as ``label_batch`` draws them);
  the IO pass encodes the B*K permuted frames. PM and IO see unmasked frames, as in the seed.
  The three losses are summed into **one** loss with one backward and one optimizer step (the
  seed's combined loss), so the two steps differ only in what they encode and decode. Images
  encoded per clip: 1 + 2 + K.

The encoder is the bulk of the work, so the speedup is bounded by (1 + 2 + K) / K (1.75 at
K = 4); the fused step also decodes K times as many frames for MIR (every frame is masked), which
pulls it below that bound as far as the decoder costs.

Timings alternate (fused, three-pass, fused, ...) after ``warmup`` untimed steps of each, so both
see the same machine load; the median seconds per step of each is reported. The warm-up steps
also count, with forward hooks, the images that reach the encoder and the MIR decoder: the
per-clip figures reported are measured, not assumed.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

from pipeline.data.batch import label_batch
from pipeline.data.tasks import clip_masks, io_classes
from pipeline.models.encoder import ARCHS
from pipeline.models.pretext import PretrainModel, apply_mask, normalize
from pipeline.objectives import TasksConfig, beta_at, io_loss, mir_loss, pm_loss
from pipeline.train.optim import OptimConfig, build_optimizer
from pipeline.train.pretraining import pretrain_forward
from preprocessing.format import SonostreamError

MASK_RATIO = 0.6
MASK_GRID = (8, 8)
BETA_STEP = 10_000   # a step past the KL warm-up: the KL term is live in both steps


def make_inputs(batch: int, clip_len: int, image_size: int, seed: int = 0) -> dict:
    """A synthetic batch: frames (B, K, 1, H, W) in 0..1 (uint8 levels), MIR mask, IO and PM labels.

    Clips come two per patient (``patient = arange(B) // 2``), one video each, so PM has both
    positives and negatives. PM takes same-clip positives (``pm_positive="video"``) so that every
    clip has a pair at any B (with the trainer's default, an odd B's last clip would have none):
    the encoder's work, which the bench times, is the same either way.
    """
    g = torch.Generator().manual_seed(seed)
    b, k, s = batch, clip_len, image_size
    frames_u8 = torch.randint(0, 256, (b, k, 1, s, s), generator=g, dtype=torch.uint8)
    patient = np.arange(b) // 2
    cb = label_batch(frames_u8, patient, np.arange(b), np.arange(b), np.tile(np.arange(k), (b, 1)),
                     seed=seed, epoch=0, step=0, pm_positive="video")
    cb.mir_patches = clip_masks(b, k, MASK_GRID, MASK_RATIO, "tube", generator=g)
    mask = cb.mir_mask
    assert mask.shape == (b, k, 1, s, s)
    # The seed's PM pass: one pair per clip, alternately its positive and its negative.
    n_pairs = len(cb.pm_label) // 2
    pick = torch.arange(n_pairs) * 2 + torch.arange(n_pairs) % 2
    mir_frame = torch.from_numpy(np.random.default_rng(seed).integers(0, k, size=b))
    return {"batch": cb, "frames": cb.images(), "mask": mask, "pm_pick": pick,
            "mir_frame": mir_frame}


def build(arch: str, clip_len: int, seed: int = 0):
    """The trainer's model and optimizer (train mode)."""
    torch.manual_seed(seed)
    model = PretrainModel(arch, clip_len, len(io_classes(clip_len)))
    model.train()
    return model, build_optimizer(model, OptimConfig())


def fused_step(model: PretrainModel, optimizer, inp: dict, cfg: TasksConfig, step: int) -> float:
    """The trainer's step: one encoder pass over the B*K masked frames feeds all three heads."""
    loss, _, _ = pretrain_forward(model, inp["batch"], cfg, BETA_STEP, seed=step)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def three_pass_step(model: PretrainModel, optimizer, inp: dict, cfg: TasksConfig, step: int) -> float:
    """The seed's step: MIR (B images), PM (2B) and IO (B*K) each encode their own images.

    Same modules as the fused step; the weighted losses are summed, one backward, one step."""
    cb, frames, mask = inp["batch"], inp["frames"], inp["mask"]
    b, k, c, h, w = frames.shape
    clips = torch.arange(b)
    total = frames.new_zeros(())
    # MIR: one masked frame per clip, encoded and decoded.
    f = inp["mir_frame"]
    x = normalize(frames[clips, f])
    m = mask[clips, f]
    fmap, _, skip = model.encode_with_skip(apply_mask(x, m))
    recon, mu, logvar = model.mir(fmap, (h, w), step, skip)
    loss, _, _ = mir_loss(recon, x, m, mu, logvar, beta_at(BETA_STEP, cfg.beta, cfg.beta_warmup_steps))
    total = total + cfg.mir * loss
    # PM: both sides of B pairs, 2B images in one encoder call.
    pick = inp["pm_pick"]
    a, bb = cb.pm_a[pick], cb.pm_b[pick]
    pair_imgs = torch.cat([frames[a[:, 0], a[:, 1]], frames[bb[:, 0], bb[:, 1]]])
    pooled = model.encoder(normalize(pair_imgs)).mean(dim=(2, 3))
    fa, fb = pooled.chunk(2)
    loss, _ = pm_loss(model.pm(fa, fb), cb.pm_label[pick])
    total = total + cfg.pm * loss
    # IO: the B clips' frames in permuted order, B*K images.
    seq = frames[clips[:, None], cb.io_perm].reshape(b * k, c, h, w)
    feats = model.encoder(normalize(seq)).mean(dim=(2, 3)).view(b, k, -1)
    loss, _ = io_loss(model.io(feats), cb.io_label)
    total = total + cfg.io * loss
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total.detach())


class ImageCounter:
    """Counts images entering a module (forward pre-hook) while in a ``with`` block."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.images, self.calls = module, 0, 0

    def _hook(self, _module, args):
        self.images += int(args[0].shape[0])
        self.calls += 1

    def __enter__(self):
        self.images, self.calls = 0, 0
        self._h = self.module.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._h.remove()


def bench_step(arch: str = "resnet18", image_size: int = 224, batch: int = 8, clip_len: int = 4,
               threads: int = 2, steps: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    if arch not in ARCHS:
        raise SonostreamError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    if steps < 1 or warmup < 1:
        raise SonostreamError(f"bench step needs steps >= 1 and warmup >= 1, got {steps} and "
                              f"{warmup}")
    if batch < 3:
        raise SonostreamError(f"bench step needs batch >= 3 (two clips per patient; PM needs two "
                              f"patients), got {batch}")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(arch, image_size, batch, clip_len, threads, steps, warmup, seed)
    finally:
        torch.set_num_threads(prev_threads)


def _run(arch, image_size, batch, clip_len, threads, steps, warmup, seed) -> dict:
    model, optimizer = build(arch, clip_len, seed)
    inp = make_inputs(batch, clip_len, image_size, seed)
    cfg = TasksConfig()
    steps_fn = {"fused": fused_step, "three_pass": three_pass_step}
    counts = {}
    for name, fn in steps_fn.items():
        for i in range(warmup):
            with ImageCounter(model.encoder) as enc, ImageCounter(model.mir) as dec:
                fn(model, optimizer, inp, cfg, i)
        counts[name] = {"encoded": enc.images / batch, "encoder_calls": enc.calls,
                        "decoded": dec.images / batch}
    times = {name: [] for name in steps_fn}
    cpu = {name: [] for name in steps_fn}
    load = [os.getloadavg()[0]]
    for i in range(steps):
        for name, fn in steps_fn.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(model, optimizer, inp, cfg, warmup + i)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    load.append(os.getloadavg()[0])
    fused, three = statistics.median(times["fused"]), statistics.median(times["three_pass"])
    cpu_f, cpu_t = statistics.median(cpu["fused"]), statistics.median(cpu["three_pass"])
    paired = statistics.median(t / f for f, t in zip(times["fused"], times["three_pass"]))
    enc_f, enc_t = counts["fused"]["encoded"], counts["three_pass"]["encoded"]
    return {
        "fused_step_s": fused,
        "three_pass_step_s": three,
        "speedup": three / fused,
        # Robustness figures for a busy machine: the median of each ABAB pair's ratio, and the
        # process CPU seconds per step (exact at threads=1; with more threads it also counts
        # the time OpenMP workers spin while waiting).
        "speedup_paired_median": paired,
        "fused_step_cpu_s": cpu_f,
        "three_pass_step_cpu_s": cpu_t,
        "speedup_cpu": cpu_t / cpu_f,
        "images_encoded_per_clip": {"fused": enc_f, "three_pass": enc_t},
        "images_decoded_per_clip": {"fused": counts["fused"]["decoded"],
                                    "three_pass": counts["three_pass"]["decoded"]},
        "encoder_calls_per_step": {"fused": counts["fused"]["encoder_calls"],
                                   "three_pass": counts["three_pass"]["encoder_calls"]},
        "encode_bound": enc_t / enc_f,
        "clips_per_s": {"fused": round(batch / fused, 3), "three_pass": round(batch / three, 3)},
        "step_times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "step_cpu_s": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
        "settings": {"arch": arch, "image_size": image_size, "batch": batch, "clip_len": clip_len,
                     "threads": threads, "steps": steps, "warmup": warmup, "seed": seed,
                     "mask_ratio": MASK_RATIO, "mask_grid": list(MASK_GRID),
                     "optimizer": "AdamW", "three_pass_backward": "one combined loss",
                     "torch": torch.__version__, "device": "cpu", "cpu_count": os.cpu_count(),
                     "loadavg_1m": [round(x, 2) for x in load]},
    }
