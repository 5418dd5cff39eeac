"""Every importer feeds `build` unchanged: import -> build -> verify, through the library and CLI."""
import csv
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from importer_helpers import HC18_ELLIPSES, dicom_file, fan_loop, make_hc18, write_video
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from pipeline.cli import main
from pipeline.cli.console import COMMANDS
from preprocessing.importers.dicom import import_dicom
from preprocessing.importers.hc18 import import_hc18
from preprocessing.importers.video import import_video
from preprocessing.verify import verify

OPTS = BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.0)


def _build_and_verify(csv_path, out):
    result = build(str(csv_path), str(out), OPTS, workers=1, progress=False)
    assert result.rejects == 0 and result.frames > 0
    assert verify(str(out), decode=True, progress=False) == []
    return pq.read_table(Path(out) / fmt.INDEX_FILE).to_pylist()


def test_hc18_to_shards_keeps_masks_and_labels(tmp_path):
    root = make_hc18(tmp_path / "hc18")
    r = import_hc18(str(root), tmp_path / "imp", crop_sector=True, progress=False)
    rows = _build_and_verify(r.csv_path, tmp_path / "ds")
    assert len(rows) == r.frames == 6
    train = [x for x in rows if x["hc18_set"] == "training_set"]
    assert len(train) == len(HC18_ELLIPSES) and all(x["has_mask"] for x in train)
    assert all(x["hc_mm"] > 0 and x["ellipse_a"] > 0 and x["plane"] == "head" for x in train)
    assert all(x["crop_method"] == "image" and x["crop_x0"] is not None for x in rows)


def test_dicom_to_shards(tmp_path):
    files = [dicom_file(n) for n in ("OBXXXX1A_rle_2frame.dcm", "US1_UNCR.dcm",
                                     "examples_ybr_color.dcm")]
    r = import_dicom(files, tmp_path / "imp", progress=False, keep_identifiers=True)
    assert r.rejects == []
    rows = _build_and_verify(r.csv_path, tmp_path / "ds")
    assert len(rows) == 2 + 1 + 30 and len({x["video_key"] for x in rows}) == 3
    cine = [x for x in rows if x["source_file"].endswith("examples_ybr_color.dcm")]
    assert [x["frame_index"] for x in cine] == list(range(30)) and cine[0]["num_frames"] == 30
    philips = [x for x in rows if x["manufacturer"] == "Philips Medical Systems"]
    assert philips[0]["pixel_size_mm"] > 0.2622878766  # stored pixels are larger than source


def test_video_to_shards(tmp_path):
    frames, _ = fan_loop(8)
    write_video(tmp_path / "a.mp4", frames)
    r = import_video([str(tmp_path / "a.mp4")], tmp_path / "imp", stride=2, progress=False)
    rows = _build_and_verify(r.csv_path, tmp_path / "ds")
    assert [x["frame_id"] for x in rows] == ["0", "2", "4", "6"]
    assert {x["crop_method"] for x in rows} == {"motion"}


def test_cli_import_then_build_then_verify(tmp_path, capsys):
    assert "import" in COMMANDS
    frames, _ = fan_loop(4)
    write_video(tmp_path / "a.mp4", frames)
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    out = tmp_path / "imp"
    assert main(["import", "video", "--input", str(tmp_path / "a.mp4"), str(tmp_path / "bad.mp4"),
                 "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "imported 4 frames of 1 videos" in captured.out and "bad.mp4" in captured.err
    with open(out / "import_rejects.csv", newline="") as f:
        assert [r["item"] for r in csv.DictReader(f)] == [str(tmp_path / "bad.mp4")]
    assert main(["build", "--csv", str(out / "frames.csv"), "--out", str(tmp_path / "ds"),
                 "--workers", "1", "--image-size", "64", "--quiet"]) == 0
    assert main(["verify", str(tmp_path / "ds"), "--quiet"]) == 0
    # Nothing usable: exit 1; a usage error: exit 2; an earlier import without --overwrite: 2.
    assert main(["import", "video", "--input", str(tmp_path / "bad.mp4"), "--out",
                 str(tmp_path / "none"), "--quiet"]) == 1
    assert main(["import", "hc18", "--root", str(tmp_path / "nowhere"), "--out",
                 str(tmp_path / "h")]) == 2
    assert main(["import", "video", "--input", str(tmp_path / "a.mp4"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["import", "dicom", "--input", dicom_file("OBXXXX1A_rle.dcm"), "--out",
                 str(out), "--overwrite", "--no-crop-sector", "--quiet"]) == 0
    assert not (out / "frames" / "a__a").exists()  # the earlier import's frames are gone


@pytest.mark.parametrize("source", ["hc18", "dicom", "video"])
def test_cli_help_names_the_crop_switches(source, capsys):
    with pytest.raises(SystemExit):
        main(["import", source, "--help"])
    text = capsys.readouterr().out
    assert "--crop-sector" in text and "--no-crop-sector" in text and "--out" in text


def test_hc18_official_test_set_is_split_test_and_the_submission_covers_it(tmp_path, capsys):
    import torch
    from pipeline.models.segmenter import SegmenterConfig, build_segmenter, export_segmenter
    root = make_hc18(tmp_path / "hc18", test_images=3)
    r = import_hc18(str(root), tmp_path / "imp", progress=False)
    opts = BuildOptions(image_size=64, val_fraction=0.5)   # the default test fraction: none added
    build(r.csv_path, str(tmp_path / "ds"), opts, workers=1, progress=False)
    rows = pq.read_table(tmp_path / "ds" / fmt.INDEX_FILE).to_pylist()
    official = sorted(f"{i:03d}_HC.png" for i in range(3))
    assert sorted(Path(x["source_file"]).name for x in rows if x["split"] == "test") == official
    assert {x["hc18_set"] for x in rows if x["split"] == "test"} == {"test_set"}
    assert {x["split"] for x in rows if x["hc18_set"] == "training_set"} == {"train", "val"}
    cfg = SegmenterConfig(arch="tiny", decoder_channels=(16, 16, 8, 8, 8))
    torch.manual_seed(0)
    export_segmenter(build_segmenter(cfg).state_dict(), cfg, tmp_path / "seg.pt",
                     image_size=(64, 64), planes=[])
    assert main(["evaluate", "--checkpoint", str(tmp_path / "seg.pt"), "--data",
                 str(tmp_path / "ds"), "--split", "test", "--out", str(tmp_path / "e"),
                 "--device", "cpu", "--quiet"]) == 0
    with open(tmp_path / "e" / "hc18.csv", newline="") as f:
        assert sorted(row["filename"] for row in csv.DictReader(f)) == official


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("import_first", [True, False])
def test_import_and_build_in_one_folder_keep_both_rejects(tmp_path, import_first):
    """The importer's rejects (import_rejects.csv) and the build's (rejects.csv) never clobber."""
    frames, _ = fan_loop(8)
    write_video(tmp_path / "short.mp4", frames[:3])
    write_video(tmp_path / "long.mp4", frames)
    (tmp_path / "bad.mp4").write_bytes(b"junk")
    folder = tmp_path / "both"
    opts = BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.0, min_video_frames=5)

    def do_import():
        import_video([str(tmp_path / n) for n in ("short.mp4", "long.mp4", "bad.mp4")],
                     str(folder), progress=False)

    if import_first:
        do_import()
        csv_path = folder / "frames.csv"
    else:  # build another import's CSV into the folder, then import into it
        csv_path = import_video([str(tmp_path / "short.mp4"), str(tmp_path / "long.mp4")],
                                str(tmp_path / "elsewhere"), progress=False).csv_path
    build(str(csv_path), str(folder), opts, workers=1, progress=False)
    if not import_first:
        do_import()
    assert [r["item"] for r in _rows(folder / "import_rejects.csv")] == [str(tmp_path / "bad.mp4")]
    built = _rows(folder / fmt.REJECTS_FILE)
    assert len(built) == 3 and all("--min-video-frames 5" in r["reason"] for r in built)
    assert verify(str(folder)) == []
