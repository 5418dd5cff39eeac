"""A damaged manifest.json (cut short, overwritten, hand-edited) is named with the fix wherever
a dataset is opened: the loaders, verify, build's up-to-date check; never a JSON traceback."""
import json
import shutil

import pytest

from preprocessing.build import BuildOptions, build
from preprocessing.dataset import DatasetError, open_dataset

from factories import write_frames


def _cut(text):
    return text[: len(text) // 2]


def _drop(*path):
    def edit(text):
        m = json.loads(text)
        node = m
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
        return json.dumps(m)
    return edit


GARBAGE = {   # name -> (edit of the manifest's text, what the message says)
    "cut short": (_cut, "is not valid JSON"),
    "empty": (lambda t: "", "is not valid JSON"),
    "a list": (lambda t: "[1, 2]", "holds a JSON list, not the object"),
    "no shards": (_drop("shards"), "lacks shards:"),
    "no counts.frames": (_drop("counts", "frames"), "lacks counts.frames:"),
    "a shard without sha256": (_drop("shards", 0, "sha256"), "lacks shards[0].sha256:"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    csv = write_frames(root / "src", patients=2, videos=1, frames=3, shape=(32, 32))
    build(csv, root / "ds", BuildOptions(image_size=32, val_fraction=0, test_fraction=0),
          workers=1, progress=False)
    return csv, root / "ds"


def damage(built, tmp_path, name):
    csv, ds = built
    copy = tmp_path / "ds"
    shutil.copytree(ds, copy)
    path = copy / "manifest.json"
    path.write_text(GARBAGE[name][0](path.read_text()))
    return csv, copy, path


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_opening_names_the_manifest_and_the_fix(built, tmp_path, name):
    _, copy, path = damage(built, tmp_path, name)
    with pytest.raises(DatasetError) as e:
        open_dataset(copy)
    msg = str(e.value)
    assert msg.startswith(f"{path} ") and GARBAGE[name][1] in msg, msg
    assert "--overwrite" in msg and "sonostream verify" in msg


@pytest.mark.parametrize("name", ["cut short", "a list"])
def test_verify_exits_2_with_the_message(built, tmp_path, capsys, name):
    from pipeline.cli.console import main
    _, copy, path = damage(built, tmp_path, name)
    assert main(["verify", str(copy), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} ") and "Traceback" not in err, err


@pytest.mark.parametrize("name", ["cut short", "no counts.frames"])
def test_build_over_a_damaged_manifest_says_overwrite(built, tmp_path, name):
    csv, copy, path = damage(built, tmp_path, name)
    with pytest.raises(DatasetError, match="pass --overwrite to rebuild the dataset") as e:
        build(csv, copy, BuildOptions(image_size=32, val_fraction=0, test_fraction=0),
              workers=1, progress=False)
    assert str(e.value).startswith(f"{path} ")
    r = build(csv, copy, BuildOptions(image_size=32, val_fraction=0, test_fraction=0),
              workers=1, progress=False, overwrite=True)
    assert r.frames == 6 and open_dataset(copy).manifest["counts"]["frames"] == 6
