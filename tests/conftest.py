"""Session fixtures: the shared datasets, each made once by ``factories.make_dataset``."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from factories import FINETUNE_CONFIG, make_dataset, rewrite_csv, synth_csv, write_frames

# DICOM imports pseudonymise by default with the key in $SONOSTREAM_KEY_FILE: tests (and the
# processes they start) use a key of their own, never the user's ~/.config/sonostream key.
os.environ["SONOSTREAM_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="sonostream-key-"),
                                                 "pseudonym.key")


@pytest.fixture
def frames_csv(tmp_path) -> Path:
    return write_frames(tmp_path / "src")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """Loader tests: 6 patients x 2 videos x 9 frames of random 40x48 frames at 32x32 JPEG, all
    train, uneven videos spread over many 12 kB shards."""
    root = tmp_path_factory.mktemp("loader")
    csv = write_frames(root / "src", patients=6, videos=2, frames=9, shape=(40, 48), seed=0)
    return make_dataset(root / "ds", csv, image_size=32, shard_kb=12)


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Pretraining tests: 8 patients x 2 sweeps x 12 frames of the synthetic cohort, all train."""
    root = tmp_path_factory.mktemp("pretrain")
    return make_dataset(root / "shards", synth_csv(root / "cohort", 8, 2, 12, seed=3), seed=3)


@pytest.fixture(scope="session")
def val_shards(tmp_path_factory):
    """Held-out validation tests: 8 patients x 2 sweeps x 12 frames of the synthetic cohort,
    2 patients (4 videos) in val, the rest in train."""
    root = tmp_path_factory.mktemp("pretrain_val")
    return make_dataset(root / "shards", synth_csv(root / "cohort", 8, 2, 12, seed=3), seed=3,
                        val=0.25)


@pytest.fixture(scope="session")
def seg_cohort(tmp_path_factory):
    """Segmentation tests: 6 patients x 2 sweeps x 8 frames at 64x64 (frames CSV)."""
    return synth_csv(tmp_path_factory.mktemp("seg") / "cohort", 6, 2, 8, seed=0)


@pytest.fixture(scope="session")
def seg_shards(seg_cohort):
    """seg_cohort built: 3 patients in train, 3 in test."""
    return make_dataset(seg_cohort.parent / "shards", seg_cohort, test=0.3)


@pytest.fixture(scope="session")
def no_pixel_size_shards(seg_cohort):
    """The same frames and masks, without pixel sizes."""
    csv = rewrite_csv(seg_cohort, seg_cohort.parent / "no_px.csv", blank=("pixel_size_mm", "hc_mm"))
    return make_dataset(seg_cohort.parent / "shards_no_px", csv, test=0.3)


@pytest.fixture(scope="session")
def unlabelled_shards(seg_cohort):
    """The same frames without masks."""
    csv = rewrite_csv(seg_cohort, seg_cohort.parent / "no_masks.csv", drop=("mask_path",))
    return make_dataset(seg_cohort.parent / "shards_no_masks", csv, test=0.3)


@pytest.fixture(scope="session")
def trained_segmenter(seg_shards):
    """A multitask tiny UNet trained briefly on seg_shards (64x64): finds most heads."""
    from pipeline.train.finetuning import load_finetune_config, train
    out = seg_shards.parent / "segmenter-run"
    cfg = load_finetune_config(FINETUNE_CONFIG, ["train.trackers=[]", "data.prefetch=0"],
                               mode="multitask", label_fraction=1.0, max_steps=60)
    train(cfg, str(seg_shards), out, quiet=True)
    return out / "segmenter.pt"
