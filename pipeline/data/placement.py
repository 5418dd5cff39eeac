"""Placement: which clips each rank and worker reads in an epoch, and in which order.

Everything here is a pure function of (clips, epoch, seed, world size, rank, workers, start).

The epoch has one *global order* of clips that does not depend on the world size:

1. shards in a seeded random order (sequential reading, as WebDataset's shard shuffle);
2. clips in on-disk order within a shard;
3. a seeded permutation inside consecutive windows of ``shuffle_window`` clips (a shuffle
   buffer whose state is a function of the position, so it can be checkpointed).

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
                 shuffle_window: int) -> np.ndarray:
    """Permutation of clip numbers: position p of the epoch reads clip ``order[p]``."""
    if shuffle_window < 1:
        raise SonostreamError(f"shuffle_window must be >= 1, got {shuffle_window}")
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    shard_rank = rng.permutation(num_shards)
    n = len(clips)
    base = np.lexsort((np.arange(n), shard_rank[clips.shard]))
    window = np.arange(n) // shuffle_window
    return base[np.lexsort((rng.random(n), window))]


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
