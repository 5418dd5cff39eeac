import pyarrow as pa
import pytest

from preprocessing import format as fmt


def test_plain_video_key_is_readable_and_dot_free():
    assert fmt.video_key("P0007", "sweep_01") == "P0007__sweep_01"


@pytest.mark.parametrize("pid,vid", [("a.b", "c"), ("p 1", "v/2"), ("é", "x"), ("a__b", "c"),
                                     ("a_", "b"), ("a", "_b"), ("..", ".")])
def test_escaped_video_keys_are_safe(pid, vid):
    key = fmt.video_key(pid, vid)
    assert "." not in key and "/" not in key and " " not in key
    fmt.check_key(fmt.sample_key(key, 3))


def test_video_keys_do_not_collide_after_escaping():
    pairs = [("a_", "b"), ("a", "_b"), ("a.b", "c"), ("a-b", "c"), ("a b", "c"), ("a", "b__c"),
             ("a__b", "c"), ("a", "b")]
    keys = [fmt.video_key(p, v) for p, v in pairs]
    assert len(set(keys)) == len(keys)


def test_sample_key_and_member_split_follow_webdataset_convention():
    key = fmt.sample_key("P1__v", 12)
    assert key == "P1__v/000012"
    assert fmt.split_key(f"{key}.mask.png") == (key, "mask.png")
    assert fmt.split_key(f"{key}.jpg") == (key, "jpg")
    with pytest.raises(ValueError):
        fmt.check_key("P1.v/000001")
    with pytest.raises(ValueError):
        fmt.check_key("P1__v/12")


def test_frame_order_numeric_when_all_numbers():
    ids = ["10", "2", "007", "1.5"]
    assert [ids[i] for i in fmt.frame_order(ids)] == ["1.5", "2", "007", "10"]


def test_frame_order_natural_otherwise():
    ids = ["frame_10", "frame_2", "frame_1", "intro"]
    assert [ids[i] for i in fmt.frame_order(ids)] == ["frame_1", "frame_2", "frame_10", "intro"]


def test_split_is_a_pure_function_of_patient_and_seed():
    ids = [f"{i:05d}" for i in range(20000)]
    splits = [fmt.split_of(p, 0.1, 0.2, seed=3) for p in ids]
    assert splits == [fmt.split_of(p, 0.1, 0.2, seed=3) for p in ids]
    share = {s: splits.count(s) / len(ids) for s in fmt.SPLITS}
    assert share["val"] == pytest.approx(0.1, abs=0.01)
    assert share["test"] == pytest.approx(0.2, abs=0.01)
    other_seed = [fmt.split_of(p, 0.1, 0.2, seed=4) for p in ids]
    assert other_seed != splits
    assert all(fmt.split_of(p, 0.0, 0.0) == "train" for p in ids[:100])


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (0.6, 0.5), (1.1, 0.0), (0.0, 1.5)])
def test_bad_fractions_raise(val, test):
    with pytest.raises(ValueError, match="fraction"):
        fmt.split_of("p", val, test)


@pytest.mark.parametrize("val,test,only", [(0.1, 1.0, "test"), (0.0, 1.0, "test"),
                                           (1.0, 0.0, "val"), (0.0, 0.0, "train")])
def test_a_fraction_of_one_takes_every_patient(val, test, only):
    assert {fmt.split_of(f"{i:04d}", val, test) for i in range(2000)} == {only}
    splits = {fmt.split_of(f"{i:04d}", 0.5, 0.5) for i in range(2000)}
    assert splits == {"val", "test"}  # 0.5 + 0.5: none left for train, allowed


def test_split_cells_parse_loosely_and_refuse_other_words():
    assert [fmt.parse_split(t) for t in ("train", " Test ", "VAL", "", "  ")] == [
        "train", "test", "val", None, None]
    with pytest.raises(ValueError, match="'validation' is not one of train, val, test"):
        fmt.parse_split("validation")


def test_shard_names():
    assert fmt.shard_name("val", 3) == "val-000003.tar"
    with pytest.raises(ValueError):
        fmt.shard_name("holdout", 0)
    # parts of a partitioned build: names never shared between parts, nor with a plain build
    assert fmt.shard_name("val", 3, part=12) == "val-p012-000003.tar"
    assert fmt.dali_index_name(fmt.shard_name("val", 3, part=12)) == "val-p012-000003.idx"
    names = {fmt.shard_name("train", n, part=p) for n in (0, 1) for p in (None, 0, 1, 10, 100, 1000)}
    assert len(names) == 12 and all(n.startswith("train-") for n in names)
    assert not fmt.shard_name("train", 0, part=1000).startswith(fmt.shard_prefix("train", 100))


def test_index_schema_check_names_departures():
    schema = fmt.index_schema(["note"])
    assert fmt.check_index_schema(schema) == []
    broken = schema.remove(schema.get_field_index("image_offset"))
    broken = broken.set(broken.get_field_index("height"), pa.field("height", pa.string()))
    problems = fmt.check_index_schema(broken)
    assert any("'image_offset' is missing" in p for p in problems)
    assert any("'height' is string" in p for p in problems)


def test_format_3_adds_member_checksums_and_readers_still_open_format_2():
    schema = fmt.index_schema()
    assert fmt.FORMAT_VERSION == 3 and fmt.READABLE_VERSIONS == (2, 3)
    assert schema.metadata[fmt.FORMAT_VERSION_KEY.encode()] == b"3"
    assert schema.field("image_crc32").type == pa.int64() and not schema.field("image_crc32").nullable
    assert schema.field("mask_crc32").type == pa.int64() and schema.field("mask_crc32").nullable
    v2 = pa.schema([f for f in schema if f.name not in fmt.CHECKSUM_COLUMNS])
    assert fmt.check_index_schema(v2, version=2) == []
    assert fmt.check_index_schema(v2) == ["column 'image_crc32' is missing",
                                          "column 'mask_crc32' is missing"]
    assert fmt.check_format_version("2", "x") == 2 and fmt.check_format_version(3, "x") == 3
    with pytest.raises(ValueError, match="x is sonostream dataset format 1, this sonostream reads "
                                         "formats 2 and 3; rebuild it"):
        fmt.check_format_version(1, "x")
    assert fmt.member_crc32(b"123456789") == 0xCBF43926   # the CRC-32 check value
