"""Small synthetic cohorts built into shards, shared by the segmentation tests (built once)."""
from __future__ import annotations

import pytest

from preprocessing.build import BuildOptions, build
from preprocessing.synth import make_cohort

from seg_helpers import rewrite_csv


@pytest.fixture(scope="session")
def seg_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return make_cohort(root / "cohort", patients=6, videos_per_patient=2, frames_per_video=8,
                       size=64, seed=0, workers=1, progress=False)


def _build(csv, out, seed=0):
    build(csv, out, BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.3, seed=seed),
          workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def seg_shards(seg_cohort):
    """6 patients x 2 sweeps x 8 frames at 64x64: 3 patients in train, 3 in test."""
    return _build(seg_cohort, seg_cohort.parent / "shards")


@pytest.fixture(scope="session")
def no_pixel_size_shards(seg_cohort):
    """The same frames and masks, without pixel sizes."""
    csv = rewrite_csv(seg_cohort, seg_cohort.parent / "no_px.csv", blank=("pixel_size_mm", "hc_mm"))
    return _build(csv, seg_cohort.parent / "shards_no_px")


@pytest.fixture(scope="session")
def unlabelled_shards(seg_cohort):
    """The same frames without masks."""
    csv = rewrite_csv(seg_cohort, seg_cohort.parent / "no_masks.csv", drop=("mask_path",))
    return _build(csv, seg_cohort.parent / "shards_no_masks")


@pytest.fixture(scope="session")
def trained_segmenter(seg_shards):
    """A multitask tiny UNet trained briefly on seg_shards (64x64): finds most heads."""
    from pipeline.train.finetune import load_finetune_config, train

    from seg_helpers import DEBUG_CONFIG
    out = seg_shards.parent / "segmenter-run"
    cfg = load_finetune_config(DEBUG_CONFIG, ["train.trackers=[]", "data.prefetch=0"],
                               mode="multitask", label_fraction=1.0, max_steps=60)
    train(cfg, str(seg_shards), out, quiet=True)
    return out / "segmenter.pt"
