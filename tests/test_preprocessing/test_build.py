"""The builder end to end on small generated CSVs: contract, bad input, determinism, resume."""
import csv
import hashlib
import json
import subprocess
import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from factories import as_format_2, write_frames
from preprocessing import format as fmt
from preprocessing import shards as shards_mod
from preprocessing.build import BuildError, BuildOptions, build
from preprocessing.imaging import decode_gray
from preprocessing.verify import verify

OPTS = BuildOptions(image_size=64, val_fraction=0.25, test_fraction=0.25, seed=1)


def _index(out):
    return pq.read_table(Path(out) / fmt.INDEX_FILE).to_pylist()


def _rejects(out):
    with open(Path(out) / fmt.REJECTS_FILE, newline="") as f:
        return list(csv.DictReader(f))


def _digest_tree(out):
    out = Path(out)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_build_follows_the_contract(tmp_path):
    src = write_frames(tmp_path / "src", patients=8, videos=2, frames=6)
    r = build(str(src), str(tmp_path / "ds"), OPTS, progress=False)
    assert (r.rows, r.frames, r.rejects) == (96, 96, 0)
    rows = _index(tmp_path / "ds")
    assert verify(str(tmp_path / "ds"), decode=True, progress=False) == []
    # one split per patient, the one the contract's split function gives
    splits = {}
    for row in rows:
        splits.setdefault(row["patient_id"], set()).add(row["split"])
        assert "." not in row["key"] and row["height"] == row["width"] == 64
    assert splits == {p: {fmt.split_of(p, 0.25, 0.25, seed=1)} for p in splits}
    assert len({s for v in splits.values() for s in v}) >= 2
    # frames of a video are consecutive, numbered 0..n-1, in numeric frame_id order
    by_video = {}
    for pos, row in enumerate(rows):
        by_video.setdefault(row["video_key"], []).append((pos, row))
    for items in by_video.values():
        positions = [p for p, _ in items]
        assert positions == list(range(positions[0], positions[0] + len(items)))
        assert [r["frame_index"] for _, r in items] == list(range(len(items)))
        assert [int(r["frame_id"]) for _, r in items] == sorted(int(r["frame_id"]) for _, r in items)
        assert {r["num_frames"] for _, r in items} == {len(items)}
        assert len({r["shard"] for _, r in items}) == 1
    # shards are named per split and numbered from 0
    names = sorted(p.name for p in (tmp_path / "ds" / "shards").glob("*.tar"))
    assert all(n.split("-")[0] in fmt.SPLITS for n in names)
    assert rows[0]["note"] == "n0" and rows[0]["plane"] == "head"  # labels and extras carried


def test_webdataset_and_tar_read_exactly_the_indexed_frames(tmp_path):
    src = write_frames(tmp_path / "src", patients=6, videos=2, frames=4)
    build(str(src), str(tmp_path / "ds"), OPTS, progress=False)
    rows = _index(tmp_path / "ds")
    urls = sorted(str(p) for p in (tmp_path / "ds" / "shards").glob("*.tar"))
    seen = {}
    by_key = {r["key"]: r for r in rows}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        assert meta["key"] == sample["__key__"]
        row = by_key[meta["key"]]   # the index's checksums are those of the members' bytes
        assert row["image_crc32"] == zlib.crc32(sample["jpg"])
        assert row["mask_crc32"] == zlib.crc32(sample["mask.png"])
        assert not set(fmt.CHECKSUM_COLUMNS) & set(meta)
        assert decode_gray(sample["jpg"]).shape == (64, 64)
        assert set(np.unique(decode_gray(sample["mask.png"])).tolist()) <= {0, 255}
        seen[sample["__key__"]] = Path(sample["__url__"]).name
    assert seen == {r["key"]: r["shard"] for r in rows}
    listed = set()
    for url in urls:
        out = subprocess.run(["tar", "-tf", url], check=True, capture_output=True, text=True)
        listed |= set(out.stdout.split())
    expected = {f"{r['key']}.{ext}" for r in rows for ext in ("jpg", "json", "mask.png")}
    assert listed == expected


def _bad_rows(root: Path):
    """One bad row of each kind, plus a valid single-frame video."""
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "bad" / "text.png").write_text("not an image")
    img = np.random.default_rng(0).integers(0, 255, (48, 64), dtype=np.uint8)
    data = cv2.imencode(".png", img)[1].tobytes()
    (root / "bad" / "trunc.png").write_bytes(data[: len(data) // 2])
    cv2.imwrite(str(root / "bad" / "ok.png"), img)
    cv2.imwrite(str(root / "bad" / "small_mask.png"), np.zeros((10, 10), np.uint8))
    cv2.imwrite(str(root / "bad" / "gray_mask.png"), np.full((48, 64), 128, np.uint8))
    base = dict(patient_id="900", video_name="bad", plane="head", pixel_size_mm="0.5")
    return [
        dict(base, frame_path="bad/missing.png", frame_id="1"),
        dict(base, frame_path="bad/text.png", frame_id="2"),
        dict(base, frame_path="bad/trunc.png", frame_id="3"),
        dict(base, frame_path="bad/ok.png", frame_id="4", mask_path="bad/small_mask.png"),
        dict(base, frame_path="bad/ok.png", frame_id="5", mask_path="bad/gray_mask.png"),
        dict(base, frame_path="bad/ok.png", frame_id="6"),
        dict(base, frame_path="bad/ok.png", frame_id="6"),  # duplicate row
        dict(base, frame_path="bad/ok.png", frame_id="7", mask_path="bad/missing_mask.png"),
        dict(base, patient_id="901", video_name="single", frame_path="bad/ok.png", frame_id="0"),
    ]


def test_bad_rows_land_in_rejects_with_reasons(tmp_path):
    src = write_frames(tmp_path / "src", patients=3, videos=1, frames=3,
                       extra_rows=_bad_rows(tmp_path / "src"))
    r = build(str(src), str(tmp_path / "ds"), OPTS, progress=False)
    rejects = _rejects(tmp_path / "ds")
    assert r.rows == 9 + 9 and r.frames + r.rejects == r.rows
    assert len(_index(tmp_path / "ds")) == r.frames
    by_id = {(x["patient_id"], x["frame_id"]): x["reason"] for x in rejects}
    assert "file not found" in by_id[("900", "1")]
    assert "not a readable image" in by_id[("900", "2")]
    assert "truncated" in by_id[("900", "3")] or "not a readable image" in by_id[("900", "3")]
    assert "10x10 but the frame is 64x48" in by_id[("900", "4")]
    assert "0/255" in by_id[("900", "5")]
    assert "duplicate" in by_id[("900", "6")]
    assert "mask" in by_id[("900", "7")] and "not found" in by_id[("900", "7")]
    assert len(rejects) == 7
    assert all(int(x["csv_line"]) >= 2 for x in rejects)
    # single-frame videos (901/single, and 900/bad, left with frame 6) are kept and counted
    assert r.single_frame_videos == 2
    assert verify(str(tmp_path / "ds"), progress=False) == []


def test_min_video_frames_rejects_short_videos(tmp_path):
    src = write_frames(tmp_path / "src", patients=2, videos=1, frames=3,
                       extra_rows=_bad_rows(tmp_path / "src"))
    opts = BuildOptions(image_size=64, val_fraction=0.0, test_fraction=0.0, min_video_frames=2)
    r = build(str(src), str(tmp_path / "ds"), opts, progress=False)
    reasons = [x["reason"] for x in _rejects(tmp_path / "ds")]
    # video 900/bad keeps only frame 6 (one usable frame) and 901/single has one frame
    assert sum("--min-video-frames 2" in x for x in reasons) == 2
    assert r.frames == 6 and r.frames + r.rejects == r.rows


def test_same_inputs_give_identical_bytes_whatever_workers_or_row_order(tmp_path):
    a = write_frames(tmp_path / "src", patients=6, videos=2, frames=5, name="a.csv", seed=0)
    lines = Path(a).read_text().splitlines()
    (tmp_path / "src" / "b.csv").write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    opts = BuildOptions(image_size=64, shard_size_mb=0.05, val_fraction=0.2, test_fraction=0.2)
    build(str(a), str(tmp_path / "d1"), opts, workers=1, progress=False)
    build(str(a), str(tmp_path / "d2"), opts, workers=2, progress=False)
    build(str(tmp_path / "src" / "b.csv"), str(tmp_path / "d3"), opts, workers=2, progress=False)
    d1, d2, d3 = (_digest_tree(tmp_path / d) for d in ("d1", "d2", "d3"))
    assert len([k for k in d1 if k.endswith(".tar")]) > 3
    assert d1 == d2
    # another CSV file (other hash in the manifest) but the same shards and index
    assert {k: v for k, v in d3.items() if k != "manifest.json"} == \
           {k: v for k, v in d1.items() if k != "manifest.json"}
    other = BuildOptions(image_size=64, shard_size_mb=0.05, val_fraction=0.2, test_fraction=0.2,
                         seed=9)
    build(str(a), str(tmp_path / "d4"), other, progress=False)
    assert _digest_tree(tmp_path / "d4")["index.parquet"] != d1["index.parquet"]


def test_large_video_runs_on_into_the_next_shard(tmp_path):
    src = write_frames(tmp_path / "src", patients=1, videos=3, frames=30, shape=(96, 96))
    opts = BuildOptions(image_size=96, codec="png", shard_size_mb=0.25, val_fraction=0.0,
                        test_fraction=0.0)
    build(str(src), str(tmp_path / "ds"), opts, progress=False)
    rows = _index(tmp_path / "ds")
    shards_of = {}
    for row in rows:
        shards_of.setdefault(row["video_key"], []).append(row["shard"])
    sizes = [p.stat().st_size for p in (tmp_path / "ds" / "shards").glob("*.tar")]
    assert max(sizes) <= 0.25 * 2**20 + 10240
    video_bytes = 30 * (96 * 96 + 2048)  # incompressible PNG frames: each video > one shard
    assert video_bytes > 0.25 * 2**20
    assert all(len(set(s)) >= 2 for s in shards_of.values())
    for s in shards_of.values():  # runs on into consecutive shards, never back
        assert s == sorted(s)
    assert verify(str(tmp_path / "ds"), progress=False) == []


def test_resume_after_crash_keeps_finished_shards(tmp_path, monkeypatch):
    src = write_frames(tmp_path / "src", patients=6, videos=2, frames=6)
    opts = BuildOptions(image_size=64, shard_size_mb=0.03, val_fraction=0.2, test_fraction=0.2)
    build(str(src), str(tmp_path / "clean"), opts, progress=False)

    real_finish = shards_mod.ShardWriter._finish_shard
    calls = {"n": 0}

    def crashing_finish(self):
        if self._file is not None:
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("simulated crash while finishing the third shard")
        real_finish(self)

    monkeypatch.setattr(shards_mod.ShardWriter, "_finish_shard", crashing_finish)
    with pytest.raises(KeyboardInterrupt):
        build(str(src), str(tmp_path / "ds"), opts, progress=False)
    monkeypatch.setattr(shards_mod.ShardWriter, "_finish_shard", real_finish)
    done = sorted((tmp_path / "ds" / "shards").glob("*.tar"))
    assert len(done) == 2 and not (tmp_path / "ds" / fmt.INDEX_FILE).exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in done}

    import preprocessing.build as build_mod
    encoded = []
    real_segment = build_mod.encode_segment
    monkeypatch.setattr(build_mod, "encode_segment",
                        lambda rows, enc: encoded.extend(rows) or real_segment(rows, enc))
    r = build(str(src), str(tmp_path / "ds"), opts, progress=False)
    assert r.reused_shards == 2
    assert {p.name: p.stat().st_mtime_ns for p in done} == stamps  # not rewritten
    assert 0 < len(encoded) < 72  # finished videos were not encoded again
    assert _digest_tree(tmp_path / "ds") == _digest_tree(tmp_path / "clean")


def test_rerun_options_and_overwrite(tmp_path):
    src = write_frames(tmp_path / "src", patients=2, videos=1, frames=3)
    out = str(tmp_path / "ds")
    build(str(src), out, OPTS, progress=False)
    assert build(str(src), out, OPTS, progress=False).up_to_date
    other = BuildOptions(image_size=32)
    with pytest.raises(BuildError, match="--overwrite"):
        build(str(src), out, other, progress=False)
    r = build(str(src), out, other, overwrite=True, progress=False)
    assert not r.up_to_date and _index(out)[0]["height"] == 32
    # a dataset of the previous format (no checksums), from the same CSV and options: readers
    # still open it, but build neither takes it as up to date nor adds to it
    as_format_2(tmp_path / "ds")
    with pytest.raises(BuildError, match=r"holds a dataset of format 2 \(this sonostream writes "
                                         r"3\); pass --overwrite to rebuild it"):
        build(str(src), out, other, progress=False)
    r = build(str(src), out, other, overwrite=True, progress=False)
    assert not r.up_to_date and all(row["image_crc32"] is not None for row in _index(out))
    assert json.loads((tmp_path / "ds" / fmt.MANIFEST_FILE).read_text())["format_version"] == 3


def test_image_modes_and_geometry_labels(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[..., 1] = 200
    cv2.imwrite(str(root / "rgb.jpg"), rgb)
    cv2.imwrite(str(root / "deep.png"), np.full((100, 200), 40000, np.uint16))
    mask = np.zeros((100, 200), np.uint8)
    cv2.ellipse(mask, (100, 50), (40, 20), 0, 0, 360, 1, -1)  # a 0/1 mask
    cv2.imwrite(str(root / "m.png"), mask)
    (root / "frames.csv").write_text(
        "frame_path,patient_id,video_name,frame_id,mask_path,pixel_size_mm,hc_mm,"
        "ellipse_cx,ellipse_cy,ellipse_a,ellipse_b,ellipse_angle\n"
        "rgb.jpg,p,v,1,m.png,0.1,100,99.5,49.5,40,20,0\n"
        "deep.png,p,v,2,,0.1,,,,,,\n")
    build(str(root / "frames.csv"), str(tmp_path / "ds"),
          BuildOptions(image_size=100, val_fraction=0, test_fraction=0), progress=False)
    rows = _index(tmp_path / "ds")
    first = rows[0]
    assert first["scale"] == 0.5 and (first["pad_x"], first["pad_y"]) == (0, 25)
    assert first["pixel_size_mm"] == pytest.approx(0.2)
    assert first["ellipse_a"] == pytest.approx(20) and first["ellipse_b"] == pytest.approx(10)
    assert first["ellipse_cx"] == pytest.approx(49.5) and first["ellipse_cy"] == pytest.approx(49.5)
    assert first["hc_mm"] == 100
    with tarfile.open(tmp_path / "ds" / "shards" / first["shard"]) as tar:
        img = decode_gray(tar.extractfile(f"{first['key']}.jpg").read())
        m = decode_gray(tar.extractfile(f"{first['key']}.mask.png").read())
        deep = decode_gray(tar.extractfile(f"{rows[1]['key']}.jpg").read())
    assert img.shape == (100, 100) and abs(int(img[50, 50]) - 117) <= 3  # 0.587 * 200
    assert set(np.unique(m).tolist()) == {0, 255} and m[50, 50] == 255
    assert abs(int(deep[50, 50]) - round(40000 * 255 / 65535)) <= 2
    assert rows[1]["has_mask"] is False and rows[1]["mask_offset"] is None


def test_resume_after_sigkill(tmp_path):
    """A real crash: SIGKILL the CLI mid-build, rerun it, get the bytes of a clean build."""
    import os
    import signal
    import sys
    import time
    src = write_frames(tmp_path / "src", patients=20, videos=4, frames=24, shape=(96, 96),
                       masks=False)
    args = ["--csv", str(src), "--image-size", "96", "--shard-size-mb", "0.1", "--workers", "1",
            "--quiet"]
    cli = [sys.executable, "-m", "pipeline.cli", "build"]
    subprocess.run(cli + args + ["--out", str(tmp_path / "clean")], check=True, capture_output=True)
    proc = subprocess.Popen(cli + args + ["--out", str(tmp_path / "ds")])
    parts = tmp_path / "ds" / fmt.WORK_DIR / "parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(parts.glob("*.json"))) < 2:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "ds" / fmt.INDEX_FILE).exists(), "build finished before the kill"
    kept = len(list(parts.glob("*.json")))
    assert kept >= 2
    out = subprocess.run(cli + args + ["--out", str(tmp_path / "ds")], check=True,
                         capture_output=True, text=True).stdout
    assert "kept from an interrupted run" in out
    assert _digest_tree(tmp_path / "ds") == _digest_tree(tmp_path / "clean")


def test_test_fraction_one_puts_every_patient_the_csv_does_not_place_in_test(tmp_path, capsys):
    from pipeline.cli import main
    src = write_frames(tmp_path / "src", patients=6, videos=1, frames=2, shape=(32, 32))
    lines = src.read_text().splitlines()
    pid = lines[0].split(",").index("patient_id")
    rows = [line + (",train" if line.split(",")[pid] == "003" else ",") for line in lines[1:]]
    src.write_text("\n".join([lines[0] + ",split", *rows]) + "\n")
    args = ["build", "--csv", str(src), "--image-size", "32", "--quiet", "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "ds"), "--test-fraction", "1"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err  # train and val are meant to be (almost) empty
    assert {(r["patient_id"], r["split"]) for r in _index(tmp_path / "ds")} == {
        (f"{p:03d}", "train" if p == 3 else "test") for p in range(6)}
    assert verify(str(tmp_path / "ds"), progress=False) == []
    assert main([*args, "--out", str(tmp_path / "d2"), "--test-fraction", "0.95"]) == 2
    assert ("val fraction + test fraction must be <= 1 (got 0.1 + 0.95); lower one of them "
            "(--test-fraction 1 alone puts every patient in test)") in capsys.readouterr().err
