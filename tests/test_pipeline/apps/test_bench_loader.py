"""The loader benchmark's parts on a tiny dataset (figures are not asserted: machines are noisy)."""
import pyarrow.parquet as pq

from pipeline.apps.bench.loader import ours, raw_decode, scaled_dataset, seed_style, seed_style_files


def test_bench_parts_run_and_scale_the_index(dataset, tmp_path):
    big = scaled_dataset(dataset, tmp_path / "big", 500)
    base_rows = pq.read_metadata(dataset / "index.parquet").num_rows
    rows = pq.read_table(big / "index.parquet")
    assert rows.num_rows >= 500 and rows.num_rows % base_rows == 0
    assert len(set(rows.column("video_key").to_pylist())) == rows.num_rows // 9   # new ids per copy
    files = seed_style_files(dataset, tmp_path)
    assert len(list(files.iterdir())) == base_rows
    for fps in (raw_decode(big, 1, 0.2), ours(big, 2, 0.2, 2, 3, warmup=1),
                ours(big, 1, 0.2, 2, 3, warmup=1, processes=True),
                ours(big, 2, 0.2, 2, 3, warmup=1, checksums=False),
                seed_style(big, files, 1, 0.2, 3, warmup=1)):
        assert fps > 0
