"""Silent corruption: a member whose bytes changed on disk (same size, still decodes to garbage)
is caught by its checksum on every read path; the fault budget stops a broken dataset; a
format-2 dataset (no checksums) still loads, with a warning."""
import logging
import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from factories import PRETRAIN_CONFIG, as_format_2, scramble_member
from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.dali import dali_available
from pipeline.data.segloader import SegDataConfig, SegLoader
from preprocessing.format import SonostreamError

KINDS = [(0, "cpu"), (2, "cpu"), (0, "dali")]


def cfg(**kw):
    base = dict(batch_size=3, clip_len=3, num_workers=0, shuffle_window=5, loader="cpu",
                dali_threads=1)
    return LoaderConfig(**{**base, **kw})


def skip_without_dali(kind):
    if kind == "dali" and not dali_available():
        pytest.skip("nvidia-dali is not installed")


@pytest.fixture
def copy(dataset, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    return ds, pq.read_table(ds / "index.parquet").to_pandas()


@pytest.fixture
def scrambled(copy):
    """A copy of the dataset with one JPEG member scrambled in its middle: it still decodes."""
    ds, index = copy
    r = index.iloc[len(index) // 2]
    original = scramble_member(ds, r)
    data = (ds / "shards" / r.shard).read_bytes()[r.image_offset:r.image_offset + r.image_size]
    garbage = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    clean = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert garbage is not None and not np.array_equal(garbage, clean)   # silent without a check
    return ds, r


def frames_by_position(loader):
    return {p: b.frames[i].numpy().tobytes() for b in loader for i, p in enumerate(b.position.tolist())}


@pytest.mark.parametrize("workers,kind", KINDS)
def test_a_scrambled_member_is_a_fault_and_the_rest_is_served_bit_identical(
        dataset, scrambled, workers, kind, caplog):
    skip_without_dali(kind)
    ds, r = scrambled
    c = cfg(num_workers=workers, loader=kind, max_fault_share=0.05)
    clean = frames_by_position(ClipLoader(dataset, c, seed=0))
    loader = ClipLoader(ds, c, seed=0)
    with caplog.at_level(logging.WARNING, logger="sonostream.loader"):
        got = frames_by_position(loader)
    assert [f[1:] for f in loader.faults] == [(r.shard, r.key, "checksum mismatch")]
    assert len(got) == len(clean) - 1 and all(got[p] == clean[p] for p in got)
    assert f"{r.shard}:{r.key} (checksum mismatch)" in caplog.text


def test_single_frame_reads_name_the_shard_and_key(scrambled, copy):
    ds, r = scrambled
    index = pq.read_table(ds / "index.parquet").to_pandas()
    m = index.iloc[3]
    scramble_member(ds, m, "mask")
    lo = SegLoader(ds, SegDataConfig(prefetch=0), batch_size=2)
    row, mrow = (int(np.flatnonzero(index.key == k)[0]) for k in (r.key, m.key))
    with pytest.raises(SonostreamError, match=f"{r.shard}: the frame of {r.key} fails its "
                                              f"checksum .*sonostream verify {ds}"):
        lo.decoder.images([0, row], masks=True)          # what a segmentation batch reads
    with pytest.raises(SonostreamError, match=f"{m.shard}: the mask of {m.key} fails its checksum"):
        lo.decoder.mask(mrow)
    assert lo.decoder.image(mrow).shape == (32, 32)      # its frame is intact


@pytest.mark.parametrize("workers", [0, 2])
def test_an_all_corrupt_dataset_stops_within_its_first_steps(copy, workers):
    ds, index = copy
    for r in index.itertuples():
        scramble_member(ds, r)
    loader = ClipLoader(ds, cfg(num_workers=workers, max_fault_share=0.1), seed=0)
    got = []
    with pytest.raises(SonostreamError) as e:
        for b in loader:
            got.append(b)
    assert len(got) == 1 < len(ClipLoader(ds, cfg(), seed=0))   # 3 of 3.6 allowed, then 6
    msg = str(e.value)
    assert ("epoch 0, rank 0: 6 clip(s) skipped for 6 corrupt member(s), more than "
            "loader.max_fault_share=0.1 of the rank's 36 clips in the epoch allows (3)") in msg
    assert "(checksum mismatch)" in msg and " and 1 more" in msg
    assert f"`sonostream verify {ds}`" in msg and "--overwrite" in msg
    assert "raise loader.max_fault_share" in msg


@pytest.mark.parametrize("workers,kind", [(0, "cpu"), (0, "dali")])
def test_one_bad_member_stops_a_small_dataset_only_past_its_budget(scrambled, workers, kind):
    skip_without_dali(kind)
    ds, r = scrambled
    with pytest.raises(SonostreamError, match=f"1 clip.s. skipped .*{r.shard}:{r.key}"):
        list(ClipLoader(ds, cfg(loader=kind), seed=0))  # default 1 % of 36 clips: none allowed
    assert len(list(ClipLoader(ds, cfg(loader=kind, max_fault_share=0.03), seed=0))) == 12


def test_the_budget_is_a_share_of_the_ranks_clips(dataset):
    loader = ClipLoader(dataset, cfg(max_fault_share=0.001, batch_size=1), seed=0)
    plan = loader.plan()
    assert plan.positions.size == 36
    fault = ("train-000000.tar", "p__v/000000", "checksum mismatch")
    loader.cfg.max_fault_share = 1 / 30   # 36 clips: 1.2 may be skipped
    loader._check_fault_budget(plan, [fault])
    with pytest.raises(SonostreamError, match="2 clip.s. skipped for 1 corrupt member"):
        loader._check_fault_budget(plan, [fault, fault])
    loader.cfg.max_fault_share = 0.0
    with pytest.raises(SonostreamError, match="allows .0."):
        loader._check_fault_budget(plan, [fault])


def test_the_budget_is_a_config_key(tmp_path):
    from pipeline.train.config import load_config
    from pipeline.train.pretraining import PretrainConfig
    c = load_config(PRETRAIN_CONFIG, PretrainConfig, ["loader.max_fault_share=0.25"])
    assert c.loader.max_fault_share == 0.25
    with pytest.raises(SonostreamError, match="max_fault_share must be in .0, 1."):
        load_config(PRETRAIN_CONFIG, PretrainConfig, ["loader.max_fault_share=2"])
    with pytest.raises(SonostreamError, match="loader.max_faults .did you mean .max_fault_share"):
        load_config(PRETRAIN_CONFIG, PretrainConfig, ["loader.max_faults=0.1"])


@pytest.mark.parametrize("workers,kind", KINDS)
def test_a_format_2_dataset_loads_unchecked_with_one_warning(dataset, copy, workers, kind, caplog):
    skip_without_dali(kind)
    ds, _ = copy
    as_format_2(ds)
    c = cfg(num_workers=workers, loader=kind)
    with caplog.at_level(logging.WARNING, logger="sonostream.loader"):
        loader = ClipLoader(ds, c, seed=0)
        got = frames_by_position(loader)
    assert got == frames_by_position(ClipLoader(dataset, c, seed=0)) and loader.faults == []
    warned = [m for m in caplog.messages if "no per-member checksums" in m]
    assert len(warned) == 1 and f"{ds} is dataset format 2" in warned[0]
    assert "--overwrite` to get per-member checks" in warned[0]
