"""A small synthetic cohort built into shards, shared by the training tests (built once)."""
from __future__ import annotations

import pytest

from preprocessing.build import BuildOptions, build
from preprocessing.synth import make_cohort


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """8 patients x 2 sweeps x 12 frames of the synthetic cohort, all in train."""
    root = tmp_path_factory.mktemp("pretrain")
    csv = make_cohort(root / "cohort", patients=8, videos_per_patient=2, frames_per_video=12,
                      size=64, seed=3, workers=1)
    build(csv, root / "shards", BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.0,
                                             seed=3), workers=1, progress=False)
    return root / "shards"
