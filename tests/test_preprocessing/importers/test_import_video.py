"""`import video` on small videos written in the test (moving fan, static overlay text)."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from importer_helpers import (cut_copy, fan_loop, read_rejects, read_rows, write_empty_video,
                              write_video)
from preprocessing.importers.video import import_video




def _box(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.fixture(scope="module")
def loop():
    return fan_loop(12, 120, 160)


def test_mp4_is_cropped_to_the_moving_fan(tmp_path, loop):
    frames, fan = loop
    path = write_video(tmp_path / "scan.mp4", frames, fps=10)
    r = import_video([str(path)], tmp_path / "out", stride=3, progress=False)
    assert r.rejects == [] and (r.videos, r.frames) == (1, 4)
    rows = read_rows(tmp_path / "out")
    assert rows.frame_id.tolist() == ["0", "3", "6", "9"]
    assert rows.time_s.astype(float).tolist() == pytest.approx([0.0, 0.3, 0.6, 0.9])
    assert set(rows.frame_time_ms) == {"300.0"} and set(rows.patient_id) == {"scan"}
    box = [int(rows[c][0]) for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")]
    assert rows.crop_method[0] == "motion"
    assert box == pytest.approx(list(_box(fan)), abs=4)
    assert box[1] >= 11  # "GE 12cm" (rows 2-10) lies above the crop
    x0, y0, x1, y1 = box
    fan_crop = cv2.dilate(fan[y0:y1, x0:x1].astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    for rel in rows.frame_path:
        img = cv2.imread(str(tmp_path / "out" / rel), cv2.IMREAD_UNCHANGED)
        assert img.shape == (y1 - y0, x1 - x0)
        assert img[~fan_crop].max() == 0  # "MI 0.9" right of the fan is blanked
        assert (img[fan[y0:y1, x0:x1]] > 0).mean() > 0.98


def test_no_crop_avi_and_patient_from_folder(tmp_path, loop):
    frames, _ = loop
    for patient in ("p1", "p2"):
        (tmp_path / "in" / patient).mkdir(parents=True)
        write_video(tmp_path / "in" / patient / "loop.avi", frames[:5], codec="mpeg4")
    r = import_video([str(tmp_path / "in")], tmp_path / "out", crop_sector=False,
                     patient_from="folder", progress=False)
    rows = read_rows(tmp_path / "out")
    assert (r.videos, r.frames, r.patients) == (2, 10, 2)
    assert sorted(set(rows.patient_id)) == ["p1", "p2"] and set(rows.video_name) == {"loop"}
    assert "crop_x0" not in rows.columns
    img = cv2.imread(str(tmp_path / "out" / rows.frame_path[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (120, 160)
    # Per file, the same stems clash: the second is rejected, naming the first.
    r = import_video([str(tmp_path / "in")], tmp_path / "out2", progress=False)
    (rej,) = read_rejects(tmp_path / "out2")
    assert r.videos == 1 and "already imported from" in rej["reason"]


def test_unreadable_and_empty_videos_are_rejected(tmp_path, loop):
    frames, _ = loop
    src = tmp_path / "in"
    src.mkdir()
    (src / "zero.mp4").write_bytes(b"")
    (src / "junk.mov").write_bytes(b"\x00\x01garbage" * 50)
    (src / "notes.txt").write_text("ignored: not a video extension")
    write_empty_video(src / "noframes.avi")
    good = write_video(src / "good.mp4", frames[:4])
    r = import_video([str(src)], tmp_path / "out", progress=False)
    reasons = {Path(x["item"]).name: x["reason"] for x in read_rejects(tmp_path / "out")}
    assert set(reasons) == {"zero.mp4", "junk.mov", "noframes.avi"}
    assert all(name in reason for name, reason in reasons.items())
    assert "not a readable video" in reasons["zero.mp4"] and "not a readable" in reasons["junk.mov"]
    assert "holds no frame" in reasons["noframes.avi"]
    assert r.frames == 4 and set(read_rows(tmp_path / "out").source_file) == {str(good)}


def test_usage_errors(tmp_path):
    with pytest.raises(ValueError, match="stride"):
        import_video([str(tmp_path)], tmp_path / "o", stride=0, progress=False)
    with pytest.raises(ValueError, match="no video files"):
        import_video([str(tmp_path)], tmp_path / "o", progress=False)


@pytest.fixture(scope="module")
def cut_videos(tmp_path_factory):
    """A 40-frame faststart mp4 (moov first), its first 30 % (cut in the mdat), and a
    non-faststart mp4 cut the same way (its moov, at the end, is lost)."""
    root = tmp_path_factory.mktemp("cut")
    frames, _ = fan_loop(40, 64, 64)
    full = write_video(root / "full.mp4", frames, faststart=True)
    plain = write_video(root / "plain.mp4", frames)
    return full, cut_copy(full, root / "cut.mp4", 0.3), cut_copy(plain, root / "nomoov.mp4", 0.3)


def test_a_truncated_faststart_mp4_is_rejected_with_its_counts(tmp_path, cut_videos):
    full, cut, _ = cut_videos
    r = import_video([str(full), str(cut)], tmp_path / "out", progress=False)
    assert (r.videos, r.frames) == (1, 40) and r.truncated == []
    (rej,) = read_rejects(tmp_path / "out")
    assert rej["item"] == str(cut)
    assert re.search(r"cut\.mp4: truncated: \d+ of 40 frames decoded", rej["reason"]), rej["reason"]
    assert "re-copy" in rej["reason"] and "--keep-truncated" in rej["reason"]
    assert "40 frames of 1 videos" in r.summary() and "1 rejected" in r.summary()
    rows = read_rows(tmp_path / "out")
    assert set(rows.source_file) == {str(full)}
    assert rows.frame_id.tolist() == [str(i) for i in range(40)]
    assert [p.name for p in (tmp_path / "out" / "frames").iterdir()] == ["full__full"]


def test_keep_truncated_imports_what_the_file_holds_flagged(tmp_path, cut_videos):
    full, cut, _ = cut_videos
    r = import_video([str(full), str(cut)], tmp_path / "out", keep_truncated=True, progress=False)
    assert r.rejects == [] and r.videos == 2
    (flag,) = r.truncated
    n = int(re.search(r"truncated: (\d+) of 40 frames decoded", flag["reason"]).group(1))
    assert flag["item"] == str(cut) and 0 < n < 40 and r.frames == 40 + n
    assert "1 truncated, kept" in r.summary()
    rows = read_rows(tmp_path / "out")
    kept = rows[rows.source_file == str(cut)]
    assert kept.frame_id.tolist() == [str(i) for i in range(n)] and set(kept.truncated) == {"true"}
    assert set(rows[rows.source_file == str(full)].truncated) == {""}


def test_a_file_cut_inside_its_last_frame_is_truncated(tmp_path, cut_videos):
    full = cut_videos[0]
    data = full.read_bytes()
    short = tmp_path / "short.mp4"   # faststart: the last bytes are the last frame's
    short.write_bytes(data[:-64])
    import_video([str(short)], tmp_path / "out", progress=False)
    (rej,) = read_rejects(tmp_path / "out")
    assert "short.mp4: truncated: 39 of 40 frames decoded" in rej["reason"], rej["reason"]


def test_a_cut_mp4_without_its_moov_is_rejected_saying_so(tmp_path, cut_videos):
    _, _, nomoov = cut_videos
    r = import_video([str(nomoov)], tmp_path / "out", keep_truncated=True, progress=False)
    (rej,) = read_rejects(tmp_path / "out")
    assert r.frames == 0 and rej["item"] == str(nomoov)
    assert "nomoov.mp4: not a readable video" in rej["reason"]
    assert "moov box" in rej["reason"] and "cut off" in rej["reason"], rej["reason"]


def test_cli_lists_a_truncated_file_and_keeps_it_when_asked(tmp_path, cut_videos, capsys):
    from pipeline.cli import main
    _, cut, _ = cut_videos
    assert main(["import", "video", "--input", str(cut), "--out", str(tmp_path / "a"),
                 "--quiet"]) == 1   # nothing imported: the one file is rejected
    err = capsys.readouterr().err
    assert "rejected: " in err and "truncated: " in err and "of 40 frames decoded" in err
    assert main(["import", "video", "--input", str(cut), "--out", str(tmp_path / "b"),
                 "--keep-truncated", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert "truncated, kept: " in err and "0 rejected; 1 truncated, kept" in out
