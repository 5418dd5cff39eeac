import tarfile
import zlib

import pytest

from preprocessing import format as fmt
from preprocessing.shards import ShardWriter, load_finished, tar_header


@pytest.mark.parametrize("name,size", [("a/000001.jpg", 0), ("P0007__s/000012.mask.png", 12345),
                                       ("x" * 100, 5), ("y" * 120 + "/000001.jpg", 77),
                                       ("é/000001.jpg", 3), ("a/000002.json", 8**11 - 1)])
def test_tar_header_matches_tarfile(name, size):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = size, 0, 0o644, "", ""
    assert tar_header(name, size) == ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def test_writer_keeps_videos_whole_and_splits_only_oversized_ones(tmp_path):
    schema = fmt.index_schema()
    sample = [("jpg", b"x" * 1000), ("json", b"{}")]  # 512 + 1024 + 512 + 512 = 2560 bytes
    with ShardWriter(tmp_path, max_bytes=6 * 2560 + 1024, schema=schema) as w:
        def video(name, n, split="train"):
            samples = [(fmt.sample_key(name, i), sample) for i in range(n)]
            w.start_video(split, sum(w.sample_bytes(m) for _, m in samples))
            for key, members in samples:
                w.write(key, members, _full_row(key))
        video("a", 4)   # shard 0
        video("b", 3)   # does not fit beside a: shard 1
        video("c", 14)  # larger than a shard: starts in shard 2 and runs on into 3 and 4
        video("d", 2, split="val")  # another split: its own shard
    records, tables, _ = load_finished(tmp_path)
    assert [r["name"] for r in records] == ["train-000000.tar", "train-000001.tar",
                                            "train-000002.tar", "train-000003.tar",
                                            "train-000004.tar", "val-000000.tar"]
    assert [r["frames"] for r in records] == [4, 3, 6, 6, 2, 2]
    for rec, table in zip(records, tables):
        with tarfile.open(tmp_path / "shards" / rec["name"]) as tar:
            members = {m.name: (m.offset_data, m.size) for m in tar}
        for row in table.to_pylist():
            assert members[f"{row['key']}.jpg"] == (row["image_offset"], row["image_size"])
            assert row["image_crc32"] == zlib.crc32(b"x" * 1000) and row["mask_crc32"] is None


def test_writer_records_each_members_checksum(tmp_path):
    """image_crc32 / mask_crc32 are zlib.crc32 of exactly the bytes at the row's offsets."""
    schema = fmt.index_schema()
    with ShardWriter(tmp_path, max_bytes=1 << 20, schema=schema) as w:
        w.start_video("train", 0)
        for i in range(3):
            members = [("png", bytes([i]) * (700 + i)), ("json", b"{}")]
            if i != 1:
                members.append(("mask.png", bytes([9, i]) * 300))
            w.write(fmt.sample_key("a", i), members, _full_row(fmt.sample_key("a", i)))
    (rec,), (table,), _ = load_finished(tmp_path)
    data = (tmp_path / "shards" / rec["name"]).read_bytes()
    rows = table.to_pylist()
    for row in rows:
        image = data[row["image_offset"]:row["image_offset"] + row["image_size"]]
        assert row["image_crc32"] == zlib.crc32(image) and image[0] == row["frame_index"]
        if row["mask_offset"] is None:
            assert row["mask_crc32"] is None
        else:
            mask = data[row["mask_offset"]:row["mask_offset"] + row["mask_size"]]
            assert row["mask_crc32"] == zlib.crc32(mask)
    assert [r["mask_crc32"] is None for r in rows] == [False, True, False]


def _full_row(key):
    return {"key": key, "mask_offset": None, "mask_size": None, "patient_id": "p",
            "video_name": "v", "video_key": key.split("/")[0], "frame_id": "0",
            "frame_index": int(key.split("/")[1]), "num_frames": 0, "split": "train",
            "height": 1, "width": 1, "src_height": 1, "src_width": 1, "scale": 1.0,
            "pad_x": 0, "pad_y": 0, "has_mask": False, "source_path": "x"}


def test_failed_write_leaves_finished_shards_and_no_partial_file(tmp_path):
    schema = fmt.index_schema()
    sample = [("jpg", b"x" * 1000), ("json", b"{}")]
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, max_bytes=3 * 2560 + 1024, schema=schema) as w:
            w.start_video("train", 0)
            for i in range(5):
                w.write(fmt.sample_key("a", i), sample, _full_row(fmt.sample_key("a", i)))
            raise RuntimeError("crash")
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names == ["train-000000.idx", "train-000000.tar"]  # the open shard's temp file is gone
    records, _, _ = load_finished(tmp_path)
    assert [r["frames"] for r in records] == [3]
