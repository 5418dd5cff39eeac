"""verify recomputes every manifest field it can: an edited field or a missing rejects.csv is a
problem, not a dataset the loaders then trust."""
import json
import shutil

import pytest

from preprocessing.verify import verify


def _edit(root, fn):
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


EDITS = {
    "image_size": lambda m: m.update(image_size=96),
    "codec": lambda m: m.update(codec="png"),
    "image_ext": lambda m: m.update(image_ext="png"),
    "counts.frames": lambda m: m["counts"].update(frames=m["counts"]["frames"] + 1),
    "counts.rows": lambda m: m["counts"].update(rows=m["counts"]["rows"] + 1),
    "counts.rejects": lambda m: m["counts"].update(rejects=3),
    "counts.splits": lambda m: m["counts"]["splits"]["train"].update(patients=99),
    "single_frame_videos": lambda m: m["counts"].update(single_frame_videos=5),
    "extra_columns": lambda m: m.update(extra_columns=["site"]),
    "shard frames": lambda m: m["shards"][0].update(frames=m["shards"][0]["frames"] + 1),
    "shard split": lambda m: m["shards"][0].update(split="test"),
}


@pytest.fixture
def copy(dataset, tmp_path):
    shutil.copytree(dataset, tmp_path / "ds")
    return tmp_path / "ds"


def test_the_built_dataset_passes(copy):
    assert verify(str(copy), progress=False) == []


@pytest.mark.parametrize("field", sorted(EDITS))
def test_an_edited_manifest_field_is_found(copy, field):
    _edit(copy, EDITS[field])
    problems = verify(str(copy), progress=False)
    assert problems and any("manifest" in p for p in problems), problems


def test_a_missing_rejects_csv_is_found(copy):
    (copy / "rejects.csv").unlink()
    assert any("rejects.csv is missing" in p for p in verify(str(copy), progress=False))
