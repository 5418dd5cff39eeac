"""A fixed held-out set of val clips: what pretraining scores its pretext heads on.

The set is drawn once per run from the val split (a ClipLoader over ``splits=("val",)``, epoch 0
of the clip cut, the run's seed): a pure function of the dataset, the loader config and the
seed. Every evaluation of a run scores the same clips with the same masks, permutations and
pairs, so a curve moves only because the model did, and two runs with one seed score one set.

Clips come in triplets (anchor, sibling, negative): the sibling is a clip of *another video of
the same patient*, the negative a clip of another patient. Each triplet gives one positive pair
(a frame of the anchor, a frame of the sibling) and one negative (a frame of the anchor, a
frame of the negative), so the held-out PM pairs are balanced and need identity (two frames of
one clip share speckle, gain and drift: a shortcut). Anchors cycle over the videos (one clip of
every eligible video before a second of any), so a small set still covers the val patients.
IO and MIR are scored on every clip of the set. When no val patient has two videos, or the
split holds one patient, the set is plain clips spread over the videos, without PM pairs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from .batch import ClipBatch, label_batch
from .clips import epoch_clips
from .loader import ClipLoader, LoaderConfig

log = logging.getLogger("sonostream.loader")
PM_FIELDS = ("pm_a", "pm_b", "pm_label")


def spread_order(video: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Clip numbers in an order where every video gives one clip before any gives a second
    (random within a video and among the videos of one round)."""
    video = np.asarray(video)
    n = len(video)
    order = np.lexsort((rng.random(n), video))
    sv = video[order]
    first = np.r_[True, sv[1:] != sv[:-1]] if n else np.zeros(0, bool)
    starts = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts
    return np.lexsort((rng.random(n), rank))


def cross_video_triplets(patient, video, n: int, seed: int) -> np.ndarray:
    """[T, 3] clip numbers (anchor, sibling, negative), T <= n: the sibling is of the anchor's
    patient and another video, the negative of another patient. T = 0 when no patient has two
    videos or there is one patient. A pure function of its arguments."""
    patient, video = np.asarray(patient), np.asarray(video)
    rng = np.random.default_rng([seed, 0x4E1D])
    pv = np.unique(np.stack([patient, video], 1), axis=0) if len(patient) else np.zeros((0, 2))
    pats, videos = np.unique(pv[:, 0], return_counts=True)
    multi = pats[videos >= 2]
    if len(pats) < 2 or len(multi) == 0 or n < 1:
        return np.zeros((0, 3), np.int64)
    order = spread_order(video, rng)
    anchors = order[np.isin(patient[order], multi)][:n]
    out = np.empty((len(anchors), 3), np.int64)
    for i, a in enumerate(anchors.tolist()):
        sib = np.flatnonzero((patient == patient[a]) & (video != video[a]))
        neg = np.flatnonzero(patient != patient[a])
        out[i] = a, sib[rng.integers(len(sib))], neg[rng.integers(len(neg))]
    return out


def triplet_pairs(triplets: int, k: int, seed: int):
    """PM pairs of clips laid out as triplets (3t: anchor, 3t+1: sibling, 3t+2: negative):
    (a [2T, 2], b [2T, 2], label [2T]) as (clip, frame); positive then negative per triplet."""
    rng = np.random.default_rng([seed, 0x9A1B])
    f = rng.integers(0, k, size=(triplets, 4))
    t = 3 * np.arange(triplets)
    a = np.empty((2 * triplets, 2), np.int64)
    b = np.empty_like(a)
    a[0::2], b[0::2] = np.stack([t, f[:, 0]], 1), np.stack([t + 1, f[:, 1]], 1)
    a[1::2], b[1::2] = np.stack([t, f[:, 2]], 1), np.stack([t + 2, f[:, 3]], 1)
    return a, b, np.tile(np.array([1.0, 0.0], np.float32), triplets)


@dataclass
class HeldoutSet:
    batch: ClipBatch     # every clip of the set, labelled, on the CPU (triplets laid out 3 by 3)
    triplets: int        # 0: plain clips, no PM pairs
    patients: int        # val patients / videos among the set's clips
    videos: int
    faults: list         # (shard, key, reason) of the members that did not decode

    @property
    def clips(self) -> int:
        return self.batch.batch_size

    def describe(self) -> str:
        what = (f"{self.triplets} triplets (a clip, another video of its patient, another "
                f"patient)" if self.triplets else "clips (no val patient with 2 videos: no PM pairs)")
        return f"{self.clips} val clips of {self.patients} patients, {self.videos} videos: {what}"


def heldout_set(data: str, cfg: LoaderConfig, clips: int, seed: int, *, cache_dir=None,
                shard_url=None) -> HeldoutSet:
    """About ``clips`` clips of the val split (``clips // 3`` triplets, at least one), labelled
    for IO (``label_batch``), PM (:func:`triplet_pairs`) and MIR (the loader's own masks)."""
    val = ClipLoader(data, replace(cfg, splits=("val",), loader="cpu", num_workers=0, batch_size=1,
                             patient_groups=1),   # the set makes its own triplets
                     seed=seed, device="cpu", cache_dir=cache_dir, shard_url=shard_url)
    ec = epoch_clips(val.table, val.cfg.clip, 0, seed)
    patient = val.table.patient[ec.video]
    trip = cross_video_triplets(patient, ec.video, max(1, clips // 3), seed)
    members = trip.reshape(-1) if len(trip) else spread_order(
        ec.video, np.random.default_rng([seed, 0x4E1D]))[:clips]
    uniq, inv = np.unique(members, return_inverse=True)
    frames, kept, faults = val.decoder.decode_clips(ec.frames[uniq], val.image_size)
    decoded = np.zeros((len(uniq), *frames.shape[1:]), np.uint8)
    decoded[kept] = frames
    ok = kept[inv]
    if len(trip):   # a triplet with a member that did not decode goes whole
        ok = np.repeat(ok.reshape(-1, 3).all(1), 3)
    members, inv = members[ok], inv[ok]
    clip_frames = torch.from_numpy(decoded[inv]).unsqueeze(2)
    batch = label_batch(clip_frames, patient[members], ec.video[members], np.arange(len(members)),
                        val.view.frame_index[ec.frames[members]], seed=seed, epoch=0, step=0,
                        io_reverse=cfg.io_reverse)
    t = len(members) // 3 if len(trip) else 0
    a, b, label = triplet_pairs(t, val.cfg.clip_len, seed)
    batch = replace(batch, pm_a=torch.from_numpy(a), pm_b=torch.from_numpy(b),
                    pm_label=torch.from_numpy(label))
    batch.mir_patches = val.mir_patches(batch)
    return HeldoutSet(batch, t, len(np.unique(patient[members])), len(np.unique(ec.video[members])),
                      faults)


def clip_slice(batch: ClipBatch, start: int, stop: int) -> ClipBatch:
    """Clips ``start:stop`` of ``batch`` with the PM pairs whose two sides both lie among them
    (re-indexed); every per-clip tensor field is sliced, whatever fields the batch holds."""
    n = batch.batch_size
    sliced = {f.name: getattr(batch, f.name)[start:stop] for f in fields(batch)
              if f.name not in PM_FIELDS and isinstance(getattr(batch, f.name), torch.Tensor)
              and getattr(batch, f.name).dim() and getattr(batch, f.name).shape[0] == n}
    inside = lambda p: (p[:, 0] >= start) & (p[:, 0] < stop)   # noqa: E731
    keep = inside(batch.pm_a) & inside(batch.pm_b)
    shift = torch.tensor([start, 0], dtype=batch.pm_a.dtype)
    return replace(batch, **sliced, pm_a=batch.pm_a[keep] - shift, pm_b=batch.pm_b[keep] - shift,
                   pm_label=batch.pm_label[keep])


def eval_share(num_batches: int, rank: int, world_size: int) -> list[tuple[int, float]]:
    """(batch number, weight) that ``rank`` evaluates: every world_size-th batch, padded with
    weight-0 repeats so every rank runs the same number of forwards (ZeRO-3 gathers parameters
    in each forward: a rank that ran one fewer would leave the others waiting)."""
    mine = [(i, 1.0) for i in range(rank, num_batches, world_size)]
    per_rank = -(-num_batches // world_size) if num_batches else 0
    return mine + [(0, 0.0)] * (per_rank - len(mine))
