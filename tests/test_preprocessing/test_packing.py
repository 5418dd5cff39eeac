"""Samples are packed in the encode workers (``preprocessing.packing``): a worker numbers its
segment's frames as if every earlier frame of the video was kept, and the main process packs
again the frames after a rejected one. However the video is cut into segments and whichever
process packs, the dataset is the same bytes."""
import hashlib
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from factories import write_frames
from preprocessing import build as build_mod
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from preprocessing.encode import EncodeOptions
from preprocessing.frames_csv import plan_build
from preprocessing.packing import VideoInfo, pack_segment, renumber

OPTS = BuildOptions(image_size=32, val_fraction=0.0, test_fraction=0.0)


def _tree(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _broken_frames(tmp_path: Path) -> Path:
    """Two videos of 7 frames; frames 1 and 4 of one of them are not images."""
    src = write_frames(tmp_path / "src", patients=2, videos=1, frames=7, shape=(32, 32))
    for f in (1, 4):
        (src.parent / f"img/p000/v0/{f}.png").write_bytes(b"not a png at all")
    return src


def test_segments_and_workers_do_not_change_the_bytes(tmp_path, monkeypatch):
    src = _broken_frames(tmp_path)
    build(str(src), str(tmp_path / "one"), OPTS, workers=1, progress=False)   # one segment each
    want = _tree(tmp_path / "one")
    for segment, workers in ((2, 2), (3, 1)):   # frames after a reject in a later segment
        monkeypatch.setattr(build_mod, "SEGMENT_FRAMES", segment)
        out = tmp_path / f"seg{segment}_w{workers}"
        r = build(str(src), str(out), OPTS, workers=workers, progress=False)
        assert (r.frames, r.rejects) == (12, 2)
        assert _tree(out) == want, (segment, workers)
    index = pq.read_table(tmp_path / "one" / fmt.INDEX_FILE).to_pylist()
    broken = [r for r in index if r["video_key"] == fmt.video_key("000", "v0")]
    assert [r["frame_index"] for r in broken] == list(range(5))
    assert [r["frame_id"] for r in broken] == ["0", "2", "3", "5", "6"]
    (shard,) = (tmp_path / "one" / fmt.SHARDS_DIR).glob("*.tar")
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        metas = {n: json.load(tar.extractfile(n)) for n in names if n.endswith(".json")}
    assert names[::3] == [f"{r['key']}.jpg" for r in index]
    for r in index:   # each JSON member names the key and frame_index of its index row
        meta = metas[f"{r['key']}.json"]
        assert (meta["key"], meta["frame_index"], meta["frame_id"]) == (
            r["key"], r["frame_index"], r["frame_id"])


def test_renumber_packs_what_the_worker_would_have_packed(tmp_path):
    src = write_frames(tmp_path / "src", patients=1, videos=1, frames=4, shape=(32, 32))
    (video,) = plan_build(str(src), 0.0, 0.0, 0).videos
    enc = EncodeOptions(image_size=32)
    info = VideoInfo.of(video)
    blob, guessed = pack_segment(video.frames[2:], enc, info, start=2)
    want_blob, want = pack_segment(video.frames[2:], enc, info, start=1)
    got_blob, got = renumber(blob, guessed[0], 1)
    assert got.row == want[0].row and got.members == want[0].members
    assert got_blob == want_blob[want[0].start:want[0].start + want[0].size]
