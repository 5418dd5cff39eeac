"""`import video` on small videos written in the test (moving fan, static overlay text)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from importer_helpers import fan_loop, write_empty_video, write_video, read_rejects, read_rows
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
