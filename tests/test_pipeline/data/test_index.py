"""IndexView: its codes are np.unique's (they fix the shard shuffle and patient codes), its
selections and geometry."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.index import IndexView


def test_codes_are_exactly_np_uniques():
    rng = np.random.default_rng(0)
    ids = ["b", "a", "Z", "é", "ß", "a-1", "a_1", "10", "9", "Ω", "zz"]
    col = [ids[i] for i in rng.integers(0, len(ids), 500)]
    table = pa.table({"shard": [f"train-{i % 7:06d}.tar" for i in range(500)],
                      "image_offset": np.arange(500),
                      "image_size": np.ones(500, np.int64), "frame_index": np.arange(500),
                      "video_key": col, "patient_id": col[::-1], "split": ["train"] * 500,
                      "key": [f"k/{i:06d}" for i in range(500)]})
    view = IndexView(table)
    for uniques, codes, name in ((view.video_keys, view.video, "video_key"),
                                 (view.patient_ids, view.patient, "patient_id")):
        want_u, want_c = np.unique(np.array(table.column(name).to_pylist(), object), return_inverse=True)
        assert list(uniques) == list(want_u) and np.array_equal(codes, want_c)
        assert codes.dtype == np.int64
    assert view.shards == [f"train-{i:06d}.tar" for i in range(7)]


def test_rows_of_splits_and_unknown_split(dataset):
    import pyarrow.parquet as pq
    view = IndexView(pq.read_table(dataset / "index.parquet"))
    assert np.array_equal(view.rows_of("train"), np.arange(len(view)))
    assert len(view.rows_of(["val", "test"])) == 0
    with pytest.raises(ValueError, match="unknown split"):
        view.rows_of("training")


def test_an_index_of_another_format_version_asks_for_a_rebuild(dataset):
    import pyarrow.parquet as pq
    table = pq.read_table(dataset / "index.parquet")
    IndexView(table)  # the current format
    old = table.replace_schema_metadata({"sonostream_format_version": "1"})
    with pytest.raises(ValueError, match="index.parquet is sonostream dataset format 1, this "
                                         "sonostream reads formats 2 and 3; rebuild it"):
        IndexView(old)
