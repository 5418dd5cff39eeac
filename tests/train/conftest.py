"""A small synthetic cohort built into shards, shared by the training tests (built once)."""
from __future__ import annotations

from pathlib import Path

import pytest

from preprocessing.build import BuildOptions, build
from preprocessing.synth import make_cohort

ROOT = Path(__file__).resolve().parents[2]
DEBUG_CONFIG = ROOT / "launch" / "configs" / "debug" / "pretrain.yaml"
# The debug config made smaller still: 32x32 frames, 8 clips per step, every step logged.
FAST = ["loader.image_size=32", "train.batch_size=8", "train.log_every=1", "train.figure_every=4",
        "train.checkpoint_every=4", "train.trackers=[]"]


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """8 patients x 2 sweeps x 12 frames of the synthetic cohort, all in train."""
    root = tmp_path_factory.mktemp("pretrain")
    csv = make_cohort(root / "cohort", patients=8, videos_per_patient=2, frames_per_video=12,
                      size=64, seed=3, workers=1)
    build(csv, root / "shards", BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.0,
                                             seed=3), workers=1, progress=False)
    return root / "shards"
