"""Placement is a pure function: equal steps per rank, no clip twice, resumable at any world size."""
import numpy as np
import pytest

from pipeline.data.clips import EpochClips
from pipeline.data.placement import (global_order, place, rank_positions, steps_per_epoch,
                                     worker_steps)


def fake_clips(per_shard):
    shard = np.repeat(np.arange(len(per_shard)), per_shard)
    n = len(shard)
    return EpochClips(frames=np.arange(n)[:, None], video=np.arange(n), shard=shard)


@pytest.mark.parametrize("n,b,w", [(103, 4, 3), (64, 8, 2), (7, 2, 4), (50, 1, 7)])
def test_every_rank_gets_the_same_steps_and_no_clip_twice(n, b, w):
    per_rank = [rank_positions(n, b, w, r) for r in range(w)]
    steps = {len(p) for p in per_rank}
    assert steps == {n // (b * w)}
    allpos = np.concatenate([p.ravel() for p in per_rank])
    assert len(np.unique(allpos)) == len(allpos)
    assert sorted(allpos.tolist()) == list(range(len(allpos)))   # only the remainder is left out


def test_uneven_shards_do_not_unbalance_ranks():
    clips = fake_clips([1, 40, 3, 17, 2])          # very uneven shards
    order = global_order(clips, 5, epoch=0, seed=0, shuffle_window=8)
    plans = [place(order, 4, 3, r, 2) for r in range(3)]
    counts = [sum(len(w) for w in p) for p in plans]
    assert counts == [len(order) // 12] * 3
    seen = [c for p in plans for w in p for _, _, cl in w for c in cl.tolist()]
    assert len(seen) == len(set(seen))


def test_global_order_is_a_seeded_permutation_that_reads_shards_together():
    clips = fake_clips([10] * 6)
    a = global_order(clips, 6, epoch=0, seed=1, shuffle_window=1)
    assert sorted(a.tolist()) == list(range(60))
    np.testing.assert_array_equal(a, global_order(clips, 6, epoch=0, seed=1, shuffle_window=1))
    assert not np.array_equal(a, global_order(clips, 6, epoch=1, seed=1, shuffle_window=1))
    # window 1: whole shards in sequence, each in on-disk order
    shards = clips.shard[a]
    assert (np.diff(shards) != 0).sum() == 5
    # a window of 20 mixes clips, but only within 20 consecutive positions
    b = global_order(clips, 6, epoch=0, seed=1, shuffle_window=20)
    for w in range(3):
        assert sorted(b[w * 20:(w + 1) * 20].tolist()) == sorted(a[w * 20:(w + 1) * 20].tolist())
    assert not np.array_equal(a, b)


def test_workers_take_steps_round_robin():
    got = sorted(g for w in range(3) for g in worker_steps(10, 3, w))
    assert got == list(range(10))
    assert list(worker_steps(10, 3, 1)) == [1, 4, 7]
    assert list(worker_steps(5, 0, 0)) == list(range(5))   # no workers: the main process does all


def test_resume_same_world_replays_the_tail():
    full = rank_positions(100, 4, 2, 1)
    resumed = rank_positions(100, 4, 2, 1, start=3 * 8)
    np.testing.assert_array_equal(resumed, full[3:])


@pytest.mark.parametrize("w1,w2,b2", [(2, 3, 4), (4, 1, 4), (3, 2, 5)])
def test_resume_other_world_size_neither_repeats_nor_skips(w1, w2, b2):
    n, b, done = 211, 4, 5
    before = np.concatenate([rank_positions(n, b, w1, r)[:done].ravel() for r in range(w1)])
    start = done * w1 * b
    after = np.concatenate([rank_positions(n, b2, w2, r, start=start).ravel() for r in range(w2)])
    both = np.concatenate([before, after])
    assert len(np.unique(both)) == len(both)
    assert both.max() < n
    assert n - len(both) < w2 * b2        # only the last partial global batch is left out
    assert steps_per_epoch(n, b2, w2, start) == len(after) // (w2 * b2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank 2"):
        rank_positions(10, 1, 2, 2)
    with pytest.raises(ValueError, match="batch size"):
        rank_positions(10, 0, 1, 0)
    with pytest.raises(ValueError, match="start position"):
        steps_per_epoch(10, 1, 1, start=11)
