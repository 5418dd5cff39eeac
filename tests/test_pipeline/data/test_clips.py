"""Clips: K frames of one video in order, each frame at most once per epoch, short videos."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.clips import ClipConfig, epoch_clips, video_table
from pipeline.data.index import IndexView


def index(lengths, shards=None):
    rows = []
    for v, n in enumerate(lengths):
        for f in reversed(range(n)):                    # rows out of order on purpose
            rows.append({"split": "train", "shard": f"train-{(shards or [0] * len(lengths))[v]:06d}.tar",
                         "image_offset": v * 1000 + f, "image_size": 1,
                         "video_key": f"p{v % 2}__v{v}",
                         "patient_id": f"p{v % 2}", "frame_index": f, "key": f"p{v % 2}__v{v}/{f:06d}"})
    return IndexView(pa.Table.from_pylist(rows))


def test_table_groups_videos_in_frame_order():
    t = video_table(index([5, 3, 7]))
    assert t.num_videos == 3 and t.num_frames == 15
    for v in range(3):
        rows = t.rows[t.start[v]:t.start[v] + t.length[v]]
        assert t.view.frame_index[rows].tolist() == list(range(t.length[v]))
        assert len(set(t.video_keys[v] for _ in rows)) == 1
    assert list(t.view.patient_ids) == ["p0", "p1"]


def test_table_rejects_a_missing_split():
    with pytest.raises(ValueError, match="no frames in split"):
        video_table(index([3]), splits=("val",))


@pytest.mark.parametrize("k,stride", [(4, 1), (3, 2), (2, 5)])
def test_clips_are_ordered_strided_and_disjoint(k, stride):
    t = video_table(index([30, 17, 9]))
    cfg = ClipConfig(k, stride, "skip")
    for epoch in range(3):
        c = epoch_clips(t, cfg, epoch, seed=0)
        fi = t.view.frame_index[c.frames]
        assert (np.diff(fi, axis=1) == stride).all()
        assert len(np.unique(c.frames)) == c.frames.size          # no frame twice in the epoch
        for v in range(3):
            assert (c.video == v).sum() == t.length[v] // cfg.span
            rows = c.frames[c.video == v]
            assert np.isin(rows, t.rows[t.start[v]:t.start[v] + t.length[v]]).all()


def test_cuts_move_between_epochs_and_repeat_for_a_seed():
    t = video_table(index([30]))
    cfg = ClipConfig(4, 1)
    a = epoch_clips(t, cfg, 0, seed=0).frames
    np.testing.assert_array_equal(a, epoch_clips(t, cfg, 0, seed=0).frames)
    firsts = {int(t.view.frame_index[epoch_clips(t, cfg, e, seed=0).frames[0, 0]]) for e in range(20)}
    assert len(firsts) > 1 and max(firsts) <= 30 - 7 * 4


def test_short_videos_repeat_or_skip():
    t = video_table(index([1, 2, 10]))
    rep = epoch_clips(t, ClipConfig(4, 1, "repeat"), 0, 0)
    by_video = {int(v): t.view.frame_index[f].tolist() for v, f in zip(rep.video, rep.frames)}
    assert by_video[0] == [0, 0, 0, 0]
    assert by_video[1] == [0, 0, 1, 1]
    skip = epoch_clips(t, ClipConfig(4, 1, "skip"), 0, 0)
    assert set(skip.video.tolist()) == {2}


def test_bad_clip_settings_are_named():
    with pytest.raises(ValueError, match="short_videos"):
        ClipConfig(4, 1, "pad")
    with pytest.raises(ValueError, match="stride"):
        ClipConfig(4, 0)
