"""verify finds each kind of damage; inspect counts what is there; the CLI reports clearly."""
import json
import shutil
from pathlib import Path

import cv2
import pyarrow.parquet as pq
import pytest

from factories import as_format_2, scramble_member, write_frames
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from preprocessing.dataset import DatasetError
from pipeline.cli import main
from preprocessing.summary import contact_sheet, summarize
from preprocessing.verify import verify

OPTS = BuildOptions(image_size=64, val_fraction=0.2, test_fraction=0.2, shard_size_mb=0.05)


@pytest.fixture
def dataset(tmp_path):
    src = write_frames(tmp_path / "src", patients=6, videos=2, frames=4)
    build(str(src), str(tmp_path / "ds"), OPTS, progress=False)
    return tmp_path / "ds"


def test_clean_dataset_verifies(dataset, capsys):
    assert main(["verify", str(dataset), "--decode", "--quiet"]) == 0
    assert "OK" in capsys.readouterr().out


def test_flipped_byte_is_found(dataset, capsys):
    shard = sorted((dataset / "shards").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(dataset), "--quiet"]) == 1
    assert f"{shard.name}: sha256 differs" in capsys.readouterr().err


def test_missing_and_extra_shards_are_found(dataset):
    shards = sorted((dataset / "shards").glob("*.tar"))
    shards[0].unlink()
    shutil.copy(shards[1], dataset / "shards" / "train-000999.tar")
    problems = verify(str(dataset), progress=False)
    assert any("train-000999.tar: shard on disk but not in the manifest" in p for p in problems)
    assert any(f"{shards[0].name}: listed in the manifest but missing" in p for p in problems)
    assert any(f"point at shard {shards[0].name}" in p for p in problems)


def test_index_row_pointing_at_the_wrong_place_is_found(dataset):
    table = pq.read_table(dataset / fmt.INDEX_FILE)
    offsets = table["image_offset"].to_pylist()
    offsets[3] += 512
    table = table.set_column(table.schema.get_field_index("image_offset"), "image_offset",
                             __import__("pyarrow").array(offsets, "int64"))
    pq.write_table(table, dataset / fmt.INDEX_FILE)
    problems = verify(str(dataset), progress=False)
    assert len(problems) == 1 and "index says (offset, size)" in problems[0]


def test_unfinished_dataset_is_named(tmp_path, dataset):
    (dataset / fmt.INDEX_FILE).unlink()
    with pytest.raises(ValueError, match="not a finished dataset"):
        verify(str(dataset), progress=False)


def test_inspect_counts_and_contact_sheet(dataset, tmp_path, capsys):
    s = summarize(str(dataset))
    assert s["frames"] == 48 and s["videos"] == 12 and s["patients"] == 6
    assert sum(c["frames"] for c in s["splits"].values()) == 48
    assert s["label_coverage"]["mask"] == 1.0 and s["label_coverage"]["hc_mm"] == 0.0
    assert s["shards"]["count"] == len(list((dataset / "shards").glob("*.tar")))
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", str(dataset), "--contact-sheet", str(sheet), "--n", "9"]) == 0
    out = capsys.readouterr().out
    assert "48 frames, 12 videos, 6 patients" in out and "contact sheet" in out
    img = cv2.imread(str(sheet))
    assert img.shape[1] == 3 * 160 and img.shape[0] == 3 * (160 + 18)
    assert img[:160, :160].max() > 0
    assert main(["inspect", str(dataset), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == 48


def test_cli_build_prints_both_counts_and_clear_errors(tmp_path, capsys):
    src = write_frames(tmp_path / "src", patients=2, videos=1, frames=3,
                       extra_rows=[dict(frame_path="nope.png", patient_id="000", video_name="v0",
                                        frame_id="9")])
    out = tmp_path / "ds"
    assert main(["build", "--csv", str(src), "--out", str(out), "--quiet", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "7 CSV rows: 6 frames in the index, 1 rejected" in text
    assert "rejected      1: file not found: <path>" in text
    assert main(["build", "--csv", str(src), "--out", str(out), "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("frame_path,patient_id,frame_id\nx.png,1,1\n")
    assert main(["build", "--csv", str(bad), "--out", str(tmp_path / "d2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.csv: missing column(s) 'video_name'" in err
    only_bad = tmp_path / "only_bad.csv"
    only_bad.write_text("frame_path,patient_id,video_name,frame_id\nx.png,1,v,1\n")
    assert main(["build", "--csv", str(only_bad), "--out", str(tmp_path / "d3"), "--quiet"]) == 1
    assert "no frame made it" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("synth", "build", "verify", "inspect", "bench"):
        assert cmd in text
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    assert "--shard-size-mb" in capsys.readouterr().out


def test_manifest_count_and_split_of_shard_are_checked(dataset):
    manifest = json.loads((dataset / fmt.MANIFEST_FILE).read_text())
    manifest["counts"]["frames"] += 1
    (dataset / fmt.MANIFEST_FILE).write_text(json.dumps(manifest))
    table = pq.read_table(dataset / fmt.INDEX_FILE)
    splits = table["split"].to_pylist()
    splits[0] = "test" if splits[0] != "test" else "val"
    table = table.set_column(table.schema.get_field_index("split"), "split",
                             __import__("pyarrow").array(splits, "string"))
    pq.write_table(table, dataset / fmt.INDEX_FILE)
    problems = verify(str(dataset), progress=False)
    assert any("manifest counts 49 frames but the index has 48 rows" in p for p in problems)
    assert any(f"split {splits[0]!r} but stored in shard" in p for p in problems)


def test_dali_indexes_and_wids_lists_are_checked(dataset):
    manifest = json.loads((dataset / fmt.MANIFEST_FILE).read_text())
    assert set(manifest["wids"]) == {r["split"] for r in manifest["shards"]}
    first = manifest["shards"][0]["dali_index"]["name"]
    idx = dataset / "shards" / first
    lines = idx.read_text().splitlines(keepends=True)
    parts = lines[1].split(" ")
    parts[1] = str(int(parts[1]) + 512)  # the first member's data offset, one block off
    idx.write_text("".join([lines[0], " ".join(parts), *lines[2:]]))
    shutil.copy(idx, dataset / "shards" / "train-000999.idx")
    split, name = sorted(manifest["wids"].items())[0]
    (dataset / name).unlink()
    problems = verify(str(dataset), progress=False)
    assert sorted(problems) == sorted([
        f"{first}: DALI index does not match {manifest['shards'][0]['name']} (rebuild with "
        "--overwrite)",
        "train-000999.idx: DALI index on disk but not in the manifest",
        f"{name}: the wids shard list of split {split!r} is missing (rebuild with --overwrite)"])


def test_a_dataset_of_another_format_version_asks_for_a_rebuild(dataset, capsys):
    manifest = json.loads((dataset / fmt.MANIFEST_FILE).read_text())
    (dataset / fmt.MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 1}))
    assert main(["verify", str(dataset), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (f"{dataset / fmt.MANIFEST_FILE} is sonostream dataset format 1, this sonostream reads formats 2 and "
            f"{fmt.FORMAT_VERSION}; rebuild it with this sonostream (`sonostream build --csv CSV "
            "--out DIR --overwrite`)") in err
    (dataset / fmt.MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format 99, .*; upgrade sonostream"):
        verify(str(dataset), progress=False)


def test_scrambled_members_are_named_by_their_checksums(dataset, capsys, tmp_path):
    index = pq.read_table(dataset / fmt.INDEX_FILE).to_pandas()
    img, mask = index.iloc[5], index.iloc[20]
    scramble_member(dataset, img, "image")
    scramble_member(dataset, mask, "mask")
    problems = verify(str(dataset), progress=False)
    assert f"{img.shard}: member {img.key}.jpg fails its checksum" in "\n".join(problems)
    assert f"{mask.shard}: member {mask.key}.mask.png fails its checksum" in "\n".join(problems)
    assert sum("fails its checksum" in p for p in problems) == 2   # the clean members pass
    assert main(["verify", str(dataset), "--quiet"]) == 1
    assert f"member {img.key}.jpg fails its checksum" in capsys.readouterr().err
    with pytest.raises(DatasetError, match=f"image member of {img.key} fails its checksum"):
        contact_sheet(str(dataset), str(tmp_path / "s.png"), n=48)


def test_a_format_2_dataset_verifies_without_member_checks(dataset, caplog):
    as_format_2(dataset)
    with caplog.at_level("WARNING", logger="sonostream.verify"):
        assert verify(str(dataset), decode=True, progress=False) == []
    assert "format 2, which has no per-member checksums" in caplog.text
    assert "rebuild it with `sonostream build --overwrite`" in caplog.text
