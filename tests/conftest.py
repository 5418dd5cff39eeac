"""Shared fixtures: small frames CSVs made on the fly (no synthetic-cohort dependency)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_frames  # noqa: F401  (tests import it from here too)


@pytest.fixture
def frames_csv(tmp_path) -> Path:
    return write_frames(tmp_path / "src")
