"""Readers no one here wrote read a built dataset: DALI through its .idx files (byte for byte what
DALI's wds2idx writes), wids through {split}.wids.json, duckdb with plain SQL on index.parquet."""
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from factories import write_frames
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from preprocessing.shards import ShardWriter


def _members_by_key(ds):
    """key -> {ext: bytes} of every sample, read at the index's offsets."""
    out = {}
    for r in pq.read_table(ds / fmt.INDEX_FILE).to_pylist():
        data = (ds / fmt.SHARDS_DIR / r["shard"]).read_bytes()
        sample = {"jpg": data[r["image_offset"]:r["image_offset"] + r["image_size"]]}
        if r["has_mask"]:
            sample["mask.png"] = data[r["mask_offset"]:r["mask_offset"] + r["mask_size"]]
        out[r["key"]] = sample
    return out


def _wds2idx(tar, idx):
    wds2idx = pytest.importorskip("wds2idx", reason="wds2idx ships with nvidia-dali (dev extra)")
    if shutil.which("tar") is None:
        pytest.skip("wds2idx needs GNU tar")
    with wds2idx.IndexCreator(str(tar), str(idx), verbose=False) as creator:
        creator.create_index()
    return idx.read_bytes()


def test_dali_index_files_are_what_wds2idx_writes(dataset, tmp_path):
    manifest = json.loads((dataset / fmt.MANIFEST_FILE).read_text())
    assert len(manifest["shards"]) > 3
    for rec in manifest["shards"]:
        ours = (dataset / fmt.SHARDS_DIR / rec["dali_index"]["name"]).read_bytes()
        assert rec["dali_index"]["name"] == rec["name"].replace(".tar", ".idx")
        assert ours == _wds2idx(dataset / fmt.SHARDS_DIR / rec["name"], tmp_path / "x.idx")
        assert ours.startswith(f"v1.2 {rec['frames']}\n".encode())


def test_dali_index_of_long_member_names(tmp_path):
    """Keys over 100 bytes get a pax header before the ustar one: offsets are still the data's."""
    key = fmt.sample_key("p" * 110 + "__v", 0)
    with ShardWriter(tmp_path, max_bytes=1 << 20, schema=fmt.index_schema()) as w:
        w.start_video("train", 0)
        for i in range(2):
            key = fmt.sample_key("p" * 110 + "__v", i)
            w.write(key, [("jpg", b"x" * (700 + i)), ("json", b"{}")],
                    {"key": key, "patient_id": "p", "video_name": "v", "video_key": key[:-7],
                     "frame_id": "0", "frame_index": i, "num_frames": 0, "split": "train",
                     "height": 1, "width": 1, "src_height": 1, "src_width": 1, "scale": 1.0,
                     "pad_x": 0, "pad_y": 0, "has_mask": False, "source_path": "x"})
    ours = (tmp_path / "shards" / "train-000000.idx").read_bytes()
    assert ours == _wds2idx(tmp_path / "shards" / "train-000000.tar", tmp_path / "x.idx")


def test_dali_reads_every_sample_through_the_index_files(dataset, capfd):
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (dev extra)")
    from nvidia.dali import fn, pipeline_def, types

    manifest = json.loads((dataset / fmt.MANIFEST_FILE).read_text())
    tars = [str(dataset / fmt.SHARDS_DIR / r["name"]) for r in manifest["shards"]]
    idx = [str(dataset / fmt.SHARDS_DIR / r["dali_index"]["name"]) for r in manifest["shards"]]
    want = _members_by_key(dataset)

    def read(**index):
        @pipeline_def(batch_size=len(want), num_threads=1, device_id=None)  # CPU only
        def pipe():
            return tuple(fn.readers.webdataset(
                paths=tars, ext=["jpg", "json", "mask.png"], name="r", dtypes=[types.UINT8] * 3,
                missing_component_behavior="error", **index))
        p = pipe()
        p.build()
        assert p.epoch_size("r") == len(want)
        return p.run()

    capfd.readouterr()
    jpg, meta, mask = read(index_paths=idx)
    assert "Index file not provided" not in capfd.readouterr().err
    got = {}
    for i in range(len(want)):
        key = json.loads(np.array(meta[i]).tobytes())["key"]
        got[key] = {"jpg": np.array(jpg[i]).tobytes(), "mask.png": np.array(mask[i]).tobytes()}
        assert jpg[i].source_info().endswith(f":{key}.jpg")
    assert got == want
    read()  # without index files DALI warns (and this test would see it)
    assert "Index file not provided" in capfd.readouterr().err


@pytest.fixture
def split_dataset(tmp_path):
    """A dataset whose CSV places patients 000/001 in test and 002 in val (003, 004: the hash)."""
    src = write_frames(tmp_path / "src", patients=5, videos=1, frames=3, shape=(40, 48))
    lines = src.read_text().splitlines()
    given = {"000": " Test", "001": "test", "002": "VAL"}
    pid = lines[0].split(",").index("patient_id")
    rows = [f"{line},{given.get(line.split(',')[pid], '')}" for line in lines[1:]]
    src.write_text("\n".join([lines[0] + ",split", *rows]) + "\n")
    build(str(src), str(tmp_path / "ds"), BuildOptions(image_size=32, val_fraction=0.0,
                                                       test_fraction=0.0), progress=False)
    return tmp_path / "ds"


def test_wids_reads_each_split_from_its_shard_list(split_dataset, tmp_path):
    wids = pytest.importorskip("wids", reason="wids is not installed (dev extra)")
    index = pq.read_table(split_dataset / fmt.INDEX_FILE).to_pandas()
    assert index.groupby("split").patient_id.unique().map(sorted).to_dict() == {
        "test": ["000", "001"], "train": ["003", "004"], "val": ["002"]}
    want = _members_by_key(split_dataset)
    for split in fmt.SPLITS:
        ds = wids.ShardListDataset(str(split_dataset / fmt.wids_name(split)),
                                   cache_dir=str(tmp_path / "cache" / split), transformations=[])
        keys = index.key[index.split == split].tolist()
        assert len(ds) == len(keys) > 0
        for i, key in enumerate(keys):
            sample = {k: v.getvalue() if hasattr(v, "getvalue") else v for k, v in ds[i].items()}
            assert sample["__key__"] == key
            assert sample[".jpg"] == want[key]["jpg"] and sample[".mask.png"] == want[key]["mask.png"]
            assert json.loads(sample[".json"])["split"] == split


def test_duckdb_selects_every_index_column_by_its_plain_name(dataset):
    duckdb = pytest.importorskip("duckdb", reason="duckdb is not installed (dev extra)")
    path = dataset / fmt.INDEX_FILE
    columns = pq.read_schema(path).names
    reserved = {k for k, in duckdb.sql("SELECT keyword_name FROM duckdb_keywords() "
                                       "WHERE keyword_category = 'reserved'").fetchall()}
    assert not reserved & set(columns), "an index column needs quoting in SQL"
    rel = duckdb.sql(f"SELECT {', '.join(columns)} FROM '{path}'")
    assert rel.columns == columns
    assert rel.fetchall() == [tuple(row.values()) for row in pq.read_table(path).to_pylist()]
    (n,), = duckdb.sql(f"SELECT count(*) FROM '{path}' WHERE split = 'train' AND has_mask "
                       "AND image_size > 0").fetchall()
    assert n == pq.read_metadata(path).num_rows
