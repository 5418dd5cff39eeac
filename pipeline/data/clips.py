"""Clips: K frames of one video in temporal order, enumerated per epoch from the index.

A :class:`VideoTable` groups the rows of an :class:`IndexView` (one split or several) by video,
once. Each epoch,
:func:`epoch_clips` cuts every video into non-overlapping clips of ``span = (K-1)*stride + 1``
frames, at an offset drawn per (seed, epoch, video), so an epoch shows each frame at most once
and successive epochs see different cuts. Everything is vectorised numpy: a million-frame index
takes milliseconds, and no per-sample DataFrame look-up ever happens.

Videos shorter than a span are either skipped (``short_videos="skip"``) or give one clip whose
K positions are spread over the video with repetition (``"repeat"``: positions
``round(j*(n-1)/(K-1))``, so a 1-frame video repeats its frame K times).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocessing.format import SonostreamError

from .index import IndexView

SHORT_VIDEO_POLICIES = ("repeat", "skip")


@dataclass(frozen=True)
class ClipConfig:
    clip_len: int = 4           # K frames per clip
    stride: int = 1             # frames between consecutive clip frames
    short_videos: str = "repeat"

    def __post_init__(self):
        if self.clip_len < 1:
            raise SonostreamError(f"clip_len must be >= 1, got {self.clip_len}")
        if self.stride < 1:
            raise SonostreamError(f"stride must be >= 1, got {self.stride}")
        if self.short_videos not in SHORT_VIDEO_POLICIES:
            raise SonostreamError(f"short_videos must be one of {SHORT_VIDEO_POLICIES}, "
                                  f"got {self.short_videos!r}")

    @property
    def span(self) -> int:
        return (self.clip_len - 1) * self.stride + 1


@dataclass
class VideoTable:
    """The frames of the selected splits, grouped by video, videos in on-disk order.

    ``rows[start[v] : start[v] + length[v]]`` are the index rows of video v in frame order;
    per-row arrays (shard id, offset, size, key, frame index) are the ``view``'s.
    """
    view: IndexView
    start: np.ndarray        # [V] int64, into `rows`
    length: np.ndarray       # [V] int64
    rows: np.ndarray         # [F] int64 index rows, grouped by video, in frame order
    video_shard: np.ndarray  # [V] int64 shard id of the video's first frame
    patient: np.ndarray      # [V] int64 patient code (``view.patient_ids[code]`` is the id)
    video_keys: np.ndarray   # [V] object

    @property
    def num_videos(self) -> int:
        return len(self.start)

    @property
    def num_frames(self) -> int:
        return len(self.rows)


def video_table(view: IndexView, splits=("train",)) -> VideoTable:
    """Group the index rows of ``splits`` by video (videos ordered by where they start on disk)."""
    selected = view.rows_of(splits)
    if len(selected) == 0:
        raise SonostreamError(f"the index has no frames in split(s) {list(splits)}")
    vcode = view.video
    # Group by video, frames in order; then order videos by (shard, byte offset of first frame).
    sel = selected[np.lexsort((view.frame_index[selected], vcode[selected]))]
    first = np.flatnonzero(np.r_[True, vcode[sel][1:] != vcode[sel][:-1]])
    length = np.diff(np.r_[first, len(sel)])
    heads = sel[first]
    vorder = np.lexsort((view.offset[heads], view.shard_id[heads]))
    starts = np.r_[0, np.cumsum(length[vorder])[:-1]]
    rows = _regroup(sel, first, length, vorder)
    heads = heads[vorder]
    return VideoTable(view=view, start=starts.astype(np.int64),
                      length=length[vorder].astype(np.int64), rows=rows.astype(np.int64),
                      video_shard=view.shard_id[heads], patient=view.patient[heads],
                      video_keys=view.video_keys[vcode[heads]])


def _regroup(sel, first, length, vorder):
    """Vectorised concatenation of the video slices of ``sel`` in ``vorder``."""
    lengths = length[vorder]
    starts = first[vorder]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return sel[np.repeat(starts, lengths) + within]


@dataclass
class EpochClips:
    """The clips of one epoch in on-disk order: ``frames[c]`` are K index rows of clip c."""
    frames: np.ndarray   # [C, K] int64 index rows
    video: np.ndarray    # [C] int64 video number in the table
    shard: np.ndarray    # [C] int64 shard id (of the video's first frame)
    patient: np.ndarray | None = None   # [C] int64 patient code (placement's patient groups)

    def __len__(self) -> int:
        return len(self.video)


def epoch_clips(table: VideoTable, cfg: ClipConfig, epoch: int, seed: int) -> EpochClips:
    """All clips of an epoch; a pure function of (table, cfg, epoch, seed)."""
    k, span, n = cfg.clip_len, cfg.span, table.length
    full = n // span
    short = full == 0
    count = np.where(short, 0 if cfg.short_videos == "skip" else 1, full)
    rng = np.random.default_rng([seed, epoch, 0xC11])
    slack = np.where(short, 0, n - full * span)
    jitter = np.floor(rng.random(len(n)) * (slack + 1)).astype(np.int64)
    video = np.repeat(np.arange(len(n)), count)
    c = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # clip number in video
    j = np.arange(k)
    pos = (jitter[video] + c * span)[:, None] + j[None, :] * cfg.stride
    if k > 1:  # short videos: K positions spread over the whole video, with repetition
        spread = np.rint(j[None, :] * (n[video] - 1)[:, None] / (k - 1)).astype(np.int64)
    else:
        spread = np.zeros((len(video), 1), np.int64)
    pos = np.where(short[video][:, None], spread, pos)
    frames = table.rows[table.start[video][:, None] + pos]
    return EpochClips(frames=frames.astype(np.int64), video=video.astype(np.int64),
                      shard=table.video_shard[video], patient=table.patient[video].astype(np.int64))
