"""A step whose clips all have a corrupt member still comes out, empty (B = 0), on both paths:
the step count and the numbering of the steps after it never change."""
import logging
import shutil

import pytest
import torch

from pipeline.data import ClipLoader, LoaderConfig
from pipeline.data.dali import dali_available

from factories import corrupt_members

STEP = 1   # the step of epoch 0 (seed 0) whose every clip gets a corrupt member


def cfg(**kw):
    # a whole step of bad clips is more than the default fault budget of this small dataset
    base = dict(batch_size=3, clip_len=3, num_workers=0, shuffle_window=5, loader="cpu",
                max_fault_share=1.0)
    return LoaderConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def bad_step(dataset, tmp_path_factory):
    """A copy of the dataset where one member of each clip of step STEP is zeroed."""
    ds = tmp_path_factory.mktemp("empty-step") / "ds"
    shutil.copytree(dataset, ds)
    rows = ClipLoader(ds, cfg(), seed=0).plan().clip_rows(STEP)[:, 0]
    return ds, corrupt_members(ds, rows)


@pytest.mark.parametrize("workers,kind", [(0, "cpu"), (2, "cpu"), (0, "dali")])
def test_a_step_with_no_clip_left_is_an_empty_batch(dataset, bad_step, caplog, workers, kind):
    if kind == "dali" and not dali_available():
        pytest.skip("nvidia-dali is not installed")
    ds, members = bad_step
    clean = list(ClipLoader(dataset, cfg(), seed=0))
    loader = ClipLoader(ds, cfg(num_workers=workers, loader=kind, dali_threads=1), seed=0)
    with caplog.at_level(logging.WARNING, logger="sonostream.loader"):
        batches = list(loader)
    assert [b.step for b in batches] == list(range(len(clean)))      # every step, in order
    empty = batches[STEP]
    assert empty.batch_size == 0 and empty.num_images == 0 and empty.epoch == 0
    assert empty.frames.shape == (0, 3, 1, 32, 32) and empty.frames.dtype == torch.uint8
    assert empty.mir_patches.shape == (0, 3, 8, 8) and empty.mir_mask.shape == (0, 3, 1, 32, 32)
    for name in ("patient", "video", "position", "io_label", "pm_label"):
        assert getattr(empty, name).shape == (0,), name
    for name in ("frame_index", "io_perm"):
        assert getattr(empty, name).shape == (0, 3), name
    assert empty.pm_a.shape == empty.pm_b.shape == (0, 2)
    assert sorted((s, k) for s, k, _ in empty.faults) == sorted(members)
    assert sorted((s, k) for _, s, k, _ in loader.faults) == sorted(members)
    assert "3 corrupt member(s) skipped" in caplog.text      # the end-of-epoch report
    if workers == 0:   # a worker process logs to its own stderr
        assert "epoch 0, step 1: every clip had a corrupt member; the batch is empty" in caplog.text
    # The other steps are the clean run's, frames included (DALI's placeholder output dropped).
    for a, b in zip(clean, batches):
        if b.step != STEP:
            assert torch.equal(a.position, b.position) and torch.equal(a.io_label, b.io_label)
            assert (a.frames.float() - b.frames.float()).abs().mean() < 1.0
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
