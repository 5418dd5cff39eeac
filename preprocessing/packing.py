"""The per-sample work of a build that does not need the whole video, done in the encode workers.

``pack_segment`` encodes consecutive frames of one video (``encode.encode_segment``) and, for
every frame kept, makes what the shard writer appends: the frame's index row, its JSON member,
and the tar bytes of its members (``shards.pack``: headers, data, padding, CRC-32s). The
segment's samples come back as one ``bytes`` blob and a small ``Packed`` per frame, so the main
process (one per build, the part that does not scale with workers) only decides the shard
boundaries, adds the shard offset to two numbers and writes.

Numbering: a frame's key and ``frame_index`` count the kept frames of its video before it. A
worker sees only its segment, so it numbers as if every earlier frame of the video was kept
(the segment's first row is frame ``start``); the main process, which sees the whole video,
keeps the packed bytes when that holds and calls ``renumber`` for the frames after a rejected
one. Both paths go through ``sample``, so the bytes are the same either way.
"""
from __future__ import annotations

import json
from typing import Callable, NamedTuple

from . import format as fmt
from .encode import Encoded, EncodeOptions, Rejected, encode_segment
from .frames_csv import FrameRow, Video
from .shards import Packed, pack

# Index columns that are not in the JSON member: where the sample is, and what only the whole
# dataset knows.
META_SKIP = frozenset({"shard", "image_offset", "image_size", "mask_offset", "mask_size",
                       "num_frames", *fmt.CHECKSUM_COLUMNS})


class VideoInfo(NamedTuple):
    """What a worker needs of a segment's video (not its other frames: they are not sent)."""
    patient_id: str
    video_name: str
    key: str
    split: str

    @classmethod
    def of(cls, video: Video) -> "VideoInfo":
        return cls(video.patient_id, video.video_name, video.key, video.split)


def pack_segment(rows: list[FrameRow], opts: EncodeOptions, video: VideoInfo, start: int,
                 encode: Callable = encode_segment) -> tuple[bytes, list[Packed | Rejected]]:
    """(blob, one result per row): a ``Packed`` (its bytes in ``blob``) or the ``Rejected``.

    ``start``: the position of ``rows[0]`` in its video; ``encode``: the encoder (a seam for
    tests, which plant dying or counting ones)."""
    ext = fmt.IMAGE_EXT[opts.codec]
    parts, out, pos, index = [], [], 0, start
    for frame, r in zip(rows, encode(rows, opts)):
        if isinstance(r, Rejected):
            out.append(r)
            continue
        data, p = sample(index_row(video, frame, r, index), ext, r.image, r.mask)
        out.append(p._replace(start=pos))
        parts.append(data)
        pos += len(data)
        index += 1
    return b"".join(parts), out


def sample(row: dict, ext: str, image: bytes, mask: bytes | None) -> tuple[bytes, Packed]:
    """The members of one frame (image, JSON of its row, optional mask) packed for its shard."""
    meta = json.dumps({k: v for k, v in row.items() if k not in META_SKIP},
                      sort_keys=True, separators=(",", ":")).encode()
    members = [(ext, image), (fmt.META_EXT, meta)]
    if mask is not None:
        members.append((fmt.MASK_EXT, mask))
    return pack(row["key"], members, row)


def renumber(blob, p: Packed, index: int) -> tuple[bytes, Packed]:
    """``p`` packed again as frame ``index`` of its video (a frame before it was rejected, so
    the worker's numbering was off): a new key, ``frame_index`` and JSON, the same data."""
    row = {k: v for k, v in p.row.items() if k not in ("image_offset", "mask_offset")}
    row["frame_index"], row["key"] = index, fmt.sample_key(row["video_key"], index)
    view = memoryview(blob)[p.start:p.start + p.size]
    data = [bytes(view[offset:offset + size]) for _, offset, size in p.members]
    ext = p.members[0][0].rpartition("/")[2].partition(".")[2]
    return sample(row, ext, data[0], data[2] if len(data) == 3 else None)


def index_row(video: VideoInfo, frame: FrameRow, e: Encoded, index: int) -> dict:
    """The frame's index row (its JSON member is this without ``META_SKIP``)."""
    g = e.geometry
    row = {"key": fmt.sample_key(video.key, index), "mask_offset": None, "mask_size": None,
           "mask_crc32": None, "patient_id": video.patient_id, "video_name": video.video_name,
           "video_key": video.key, "frame_id": frame.frame_id, "frame_index": index,
           "num_frames": 0, "split": video.split, "height": g.height, "width": g.width,
           "src_height": g.src_h, "src_width": g.src_w, "scale": g.scale,
           "pad_x": g.pad_x, "pad_y": g.pad_y, "has_mask": e.mask is not None,
           "source_path": frame.frame_path}
    row.update(e.labels)
    row.update(frame.extras)
    return row
