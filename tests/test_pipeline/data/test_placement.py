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


def patient_clips(seed=0, patients=30, shards=6):
    """A factory epoch: 1-4 videos per patient (most several), 1-6 clips per video, a patient's
    videos next to each other on disk, spread over ``shards`` shards."""
    rng = np.random.default_rng(seed)
    pat, vid, v = [], [], 0
    for p in range(patients):
        for _ in range(1 if p % 10 == 9 else int(rng.integers(2, 5))):   # every 10th: one video
            c = int(rng.integers(1, 7))
            pat += [p] * c
            vid += [v] * c
            v += 1
    n = len(pat)
    return EpochClips(frames=np.arange(n)[:, None], video=np.array(vid),
                      shard=np.arange(n) * shards // n, patient=np.array(pat))


def share_with_two_videos(clips, order, b):
    """Over all batches of b clips: the share of (batch, patient) with >= 2 of its videos."""
    hits = total = 0
    for s in range(0, len(order) - b + 1, b):
        c = order[s:s + b]
        for p in np.unique(clips.patient[c]):
            total += 1
            hits += len(np.unique(clips.video[c][clips.patient[c] == p])) >= 2
    return hits / total


@pytest.mark.parametrize("seed", [0, 1])
def test_patient_groups_put_two_videos_of_most_patients_in_each_batch(seed):
    clips = patient_clips(seed)
    order = global_order(clips, 6, epoch=seed, seed=3, shuffle_window=128, patient_groups=2)
    assert sorted(order.tolist()) == list(range(len(clips)))        # still a permutation
    np.testing.assert_array_equal(order, global_order(clips, 6, epoch=seed, seed=3,
                                                      shuffle_window=128, patient_groups=2))
    pairs = order[:len(order) // 2 * 2].reshape(-1, 2)
    one_patient = clips.patient[pairs[:, 0]] == clips.patient[pairs[:, 1]]
    other_video = clips.video[pairs[:, 0]] != clips.video[pairs[:, 1]]
    assert one_patient.mean() > 0.85 and (one_patient & other_video).mean() > 0.6
    assert share_with_two_videos(clips, order, 8) > 0.7
    plain = global_order(clips, 6, epoch=seed, seed=3, shuffle_window=128, patient_groups=1)
    assert share_with_two_videos(clips, plain, 8) < 0.3               # what the groups buy
    # the shuffle buffer works on groups: one shard (epoch order = clip number), a group sits at
    # its first clip's place, and each window of 128 clips permutes 64 consecutive groups
    one = EpochClips(clips.frames, clips.video, np.zeros(len(clips), int), clips.patient)
    pairs = global_order(one, 1, epoch=seed, seed=3, shuffle_window=128,
                         patient_groups=2)[:len(clips) // 2 * 2].reshape(-1, 2)
    first = pairs.min(axis=1)
    for w in range(0, len(first), 64):
        assert sorted(first[w:w + 64].tolist()) == np.sort(first)[w:w + 64].tolist()


def test_patient_groups_prefer_other_videos_and_pair_a_single_video_with_itself():
    # patient 0: videos 0 (3 clips), 1 (2), 2 (1); patient 1: one video, 2 clips; patient 2: 1 clip
    clips = EpochClips(frames=np.arange(9)[:, None], video=np.array([0, 0, 0, 1, 1, 2, 3, 3, 4]),
                       shard=np.zeros(9, int), patient=np.array([0, 0, 0, 0, 0, 0, 1, 1, 2]))
    for seed in range(5):
        order = global_order(clips, 1, epoch=0, seed=seed, shuffle_window=16, patient_groups=2)
        groups = [tuple(order[i:i + 2].tolist()) for i in range(0, 8, 2)]
        by_patient = sorted((int(clips.patient[g[0]]), sorted(clips.video[list(g)].tolist()))
                            for g in groups if clips.patient[g[0]] == clips.patient[g[1]])
        # patient 0's six clips: three groups, each from two videos; patient 1: its one video
        assert [p for p, _ in by_patient] == [0, 0, 0, 1]
        assert all(v[0] != v[1] for p, v in by_patient if p == 0)
        assert clips.patient[order[-1]] == 2                      # the short group goes last


@pytest.mark.parametrize("w1,b1,w2,b2", [(2, 4, 3, 6), (4, 2, 1, 8), (3, 2, 2, 4)])
def test_patient_groups_resume_at_another_world_size_covers_the_rest_once(w1, b1, w2, b2):
    clips, done = patient_clips(2), 3
    n = len(clips)

    def order():   # each process (before, after the restart) computes it on its own
        return global_order(clips, 6, epoch=1, seed=5, shuffle_window=32, patient_groups=2)

    before_pos = [rank_positions(n, b1, w1, r)[:done] for r in range(w1)]
    assert len({len(p) for p in before_pos}) == 1                  # equal steps per rank
    before = np.concatenate([order()[p.ravel()] for p in before_pos])
    start = done * w1 * b1
    after_pos = [rank_positions(n, b2, w2, r, start=start) for r in range(w2)]
    assert {len(p) for p in after_pos} == {steps_per_epoch(n, b2, w2, start)}
    resumed = order()
    after = np.concatenate([resumed[p.ravel()] for p in after_pos])
    both = np.concatenate([before, after])
    assert len(np.unique(both)) == len(both)                       # no clip twice
    np.testing.assert_array_equal(np.sort(both), np.sort(resumed[:len(both)]))   # none skipped
    assert n - len(both) < w2 * b2                                 # only the last partial batch
    # after the restart the batches still hold whole groups (b2 and start are multiples of 2)
    pairs = np.concatenate([resumed[p].reshape(-1, 2) for p in after_pos])
    assert (clips.patient[pairs[:, 0]] == clips.patient[pairs[:, 1]]).mean() > 0.85


def test_patient_groups_need_patients_and_a_positive_size():
    clips = fake_clips([10])
    with pytest.raises(ValueError, match="patient"):
        global_order(clips, 1, epoch=0, seed=0, shuffle_window=4, patient_groups=2)
    with pytest.raises(ValueError, match="patient_groups must be >= 1"):
        global_order(patient_clips(), 6, epoch=0, seed=0, shuffle_window=4, patient_groups=0)
