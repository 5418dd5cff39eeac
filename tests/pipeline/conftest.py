"""A small built dataset shared by the loader tests: uneven videos spread over many shards."""
from __future__ import annotations

import pytest

from preprocessing.build import BuildOptions, build
from helpers import write_frames


def make_dataset(root, patients=6, videos=2, frames=9, image_size=32, shard_kb=12, seed=0):
    csv = write_frames(root / "src", patients=patients, videos=videos, frames=frames,
                       shape=(40, 48), seed=seed)
    opts = BuildOptions(image_size=image_size, shard_size_mb=shard_kb / 1024, val_fraction=0.0,
                        test_fraction=0.0, seed=seed)
    build(csv, root / "ds", opts, workers=1, progress=False)
    return root / "ds"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """6 patients x 2 videos x 9 frames, 32x32 JPEG, all train, several shards."""
    return make_dataset(tmp_path_factory.mktemp("loader"))
