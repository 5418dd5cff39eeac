"""Placement: which clips each rank and worker reads in an epoch, and in which order.

Everything here is a pure function of (clips, epoch, seed, world size, rank, workers, start).

The epoch has one *global order* of clips that does not depend on the world size:

1. shards in a seeded random order (sequential reading, as WebDataset's shard shuffle);
2. clips in on-disk order within a shard;
3. a seeded permutation inside consecutive windows of ``shuffle_window`` clips (a shuffle
   buffer whose state is a function of the position, so it can be checkpointed).

**Patient groups** (``patient_groups = G > 1``, the loader's default G = 2): step 3 permutes
*groups* of G clips instead of single clips, so positions ``G*i .. G*i+G-1`` always hold one
group and a batch of B clips (B a multiple of G, starting at a multiple of G) holds B/G whole
groups. Each patient's clips of the epoch are dealt into groups round-robin over its videos
(turn by turn, the videos with the most clips first), so a group's clips come from G distinct
videos whenever the patient has that many (for G = 2: always, unless only one of its videos has
clips left). A patient with a single video (or with one video left) gets groups of clips of
that one video, taken at different times: a weaker PM positive than another video, and with
``pm_positive="patient"`` (the default) no positive at all. Clips left over (a patient's last
fewer-than-G clips) form mixed groups, in epoch order. A group sits at its first clip's place in
the order of steps 1-2, and the windows of step 3 hold ``ceil(shuffle_window / G)`` consecutive
groups, so reading stays as local as the window allows except for a group's other clips, which
may live in another shard. The order still depends only on (clips, epoch, seed,
shuffle_window, G), never on the world size or batch size, so every guarantee below holds; a
batch size that is not a multiple of G just splits some groups.

Global step ``g`` takes the ``world_size * batch_size`` clips starting at
``start + g * world_size * batch_size``; rank ``r`` takes the r-th run of ``batch_size`` of
them and DataLoader worker ``w`` produces the steps with ``g % workers == w``. Every rank
therefore has exactly ``(clips - start) // (world_size * batch_size)`` steps (the remainder,
fewer than one global batch, is left out of the epoch), so uneven shards can never make one
rank wait for another. The loader state is just (epoch, start): resuming with the same world
size replays the same batches, and with another world size it continues the same global order
from ``start`` without repeating or skipping a clip.
"""
from __future__ import annotations

import numpy as np

from preprocessing.format import SonostreamError

from .clips import EpochClips


def global_order(clips: EpochClips, num_shards: int, epoch: int, seed: int,
                 shuffle_window: int, patient_groups: int = 1) -> np.ndarray:
    """Permutation of clip numbers: position p of the epoch reads clip ``order[p]``.

    ``patient_groups`` G > 1 permutes groups of G clips of one patient (``clips.patient``),
    from distinct videos where it has them (see the module docstring); 1: single clips."""
    if shuffle_window < 1:
        raise SonostreamError(f"shuffle_window must be >= 1, got {shuffle_window}")
    if patient_groups < 1:
        raise SonostreamError(f"loader.patient_groups must be >= 1 (1: no patient groups), got "
                              f"{patient_groups}")
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    shard_rank = rng.permutation(num_shards)
    n = len(clips)
    base = np.lexsort((np.arange(n), shard_rank[clips.shard]))
    if patient_groups == 1:
        window = np.arange(n) // shuffle_window
        return base[np.lexsort((rng.random(n), window))]
    if clips.patient is None:
        raise SonostreamError("patient_groups > 1 needs the clips' patients (EpochClips.patient)")
    return base[_patient_groups(clips.patient[base], clips.video[base], rng, shuffle_window,
                                patient_groups)]


def _runs(*keys) -> tuple[np.ndarray, np.ndarray]:
    """For arrays sorted by ``keys``: (run number, index within the run) of each element."""
    n = len(keys[0])
    change = np.zeros(n, bool)
    change[:1] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    run = np.cumsum(change) - 1
    return run, np.arange(n) - np.flatnonzero(change)[run]


def _patient_groups(patient: np.ndarray, video: np.ndarray, rng: np.random.Generator,
                    shuffle_window: int, g: int) -> np.ndarray:
    """Permutation of positions 0..n-1 (of the unshuffled order) laying out groups of ``g``."""
    n = len(patient)
    if n == 0:
        return np.zeros(0, np.int64)
    pos = np.arange(n)
    # a clip's turn within its video (in epoch order) and how many clips its video has
    by_video = np.lexsort((pos, video, patient))
    run, turn_sorted = _runs(patient[by_video], video[by_video])
    turn, left = np.empty(n, np.int64), np.empty(n, np.int64)
    turn[by_video], left[by_video] = turn_sorted, np.bincount(run)[run]
    # deal each patient's clips round-robin over its videos: turn by turn, within a turn the
    # videos with the most clips first (ties seeded), then cut into runs of g
    tie = rng.random(int(video.max()) + 1)[video]
    deal = np.lexsort((tie, -left, turn, patient))
    prun, q = _runs(patient[deal])
    whole = q < (np.bincount(prun)[prun] // g) * g
    # leftovers (fewer than g clips of a patient left) in epoch order, cut into mixed runs of g
    lay = deal[np.lexsort((np.where(whole, 0, deal), whole))]   # leftovers first, then groups
    n_left = int((~whole).sum())
    member = np.arange(n) % g if n_left % g == 0 else np.r_[np.arange(n_left) % g,
                                                              np.arange(n - n_left) % g]
    group = np.cumsum(member == 0) - 1                         # group number, in ``lay`` order
    anchor = np.minimum.reduceat(lay, np.flatnonzero(member == 0))   # a group's first place
    short = np.bincount(group) < g                             # the one short leftover group
    anchor = np.where(short, n, anchor)                        # ... goes last
    # the shuffle buffer, in groups: windows of consecutive groups (by anchor), permuted
    rank = np.empty(len(anchor), np.int64)
    rank[np.argsort(anchor, kind="stable")] = np.arange(len(anchor))
    window = rank // max(1, -(-shuffle_window // g))
    key = np.where(short, 2.0, rng.random(len(anchor)))
    return lay[np.lexsort((member, group, key[group], window[group]))]


def steps_per_epoch(num_clips: int, batch_size: int, world_size: int, start: int = 0) -> int:
    _check(batch_size, world_size, 0, 1)
    if not 0 <= start <= num_clips:
        raise SonostreamError(f"start position {start} is outside the epoch's {num_clips} clips")
    return (num_clips - start) // (batch_size * world_size)


def rank_positions(num_clips: int, batch_size: int, world_size: int, rank: int,
                   start: int = 0) -> np.ndarray:
    """[steps, batch_size] epoch positions read by ``rank``, step by step."""
    _check(batch_size, world_size, rank, 1)
    steps = steps_per_epoch(num_clips, batch_size, world_size, start)
    g = np.arange(steps)[:, None]
    return start + g * (world_size * batch_size) + rank * batch_size + np.arange(batch_size)[None, :]


def worker_steps(num_steps: int, num_workers: int, worker: int) -> range:
    """The steps DataLoader worker ``worker`` produces (round-robin, as the DataLoader reads them)."""
    _check(1, 1, 0, num_workers)
    if not 0 <= worker < max(1, num_workers):
        raise SonostreamError(f"worker {worker} is outside 0..{num_workers - 1}")
    return range(worker, num_steps, max(1, num_workers))


def place(order: np.ndarray, batch_size: int, world_size: int, rank: int, num_workers: int,
          start: int = 0) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per worker, the list of (step, positions[B], clip numbers[B]) it reads, in order."""
    pos = rank_positions(len(order), batch_size, world_size, rank, start)
    workers = max(1, num_workers)
    return [[(g, pos[g], order[pos[g]]) for g in worker_steps(len(pos), workers, w)]
            for w in range(workers)]


def _check(batch_size, world_size, rank, num_workers):
    if batch_size < 1:
        raise SonostreamError(f"batch size must be >= 1, got {batch_size}")
    if world_size < 1:
        raise SonostreamError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise SonostreamError(f"rank {rank} is outside 0..{world_size - 1}")
    if num_workers < 0:
        raise SonostreamError(f"workers must be >= 0, got {num_workers}")
