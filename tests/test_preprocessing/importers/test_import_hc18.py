"""`import hc18` on a generated HC18-layout folder whose ellipses are known."""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from importer_helpers import HC18_ELLIPSES, ellipse_mask, make_hc18, ramanujan, read_rejects, read_rows
from preprocessing.importers.hc18 import fill_outline, fit_ellipse, import_hc18

SHAPE = (270, 400)




def _angle_diff(a, b):
    return abs((a - b + 90) % 180 - 90)


@pytest.mark.parametrize("crop", [False, True])
def test_masks_ellipses_and_hc_are_recovered(tmp_path, crop):
    root = make_hc18(tmp_path / "hc18", SHAPE)
    r = import_hc18(str(root), tmp_path / "out", crop_sector=crop, progress=False)
    assert r.rejects == [] and (r.frames, r.patients) == (6, 5)
    rows = read_rows(tmp_path / "out")
    train = rows[rows.hc18_set == "training_set"]
    assert len(train) == 4
    for _, row in train.iterrows():
        cx, cy, a, b, ang, px = HC18_ELLIPSES[row.video_name + ".png"]
        x0, y0 = (int(row.crop_x0), int(row.crop_y0)) if crop else (0, 0)
        mask = cv2.imread(str(tmp_path / "out" / row.mask_path), cv2.IMREAD_UNCHANGED)
        frame = cv2.imread(str(tmp_path / "out" / row.frame_path), cv2.IMREAD_UNCHANGED)
        assert mask.shape == frame.shape and set(np.unique(mask)) <= {0, 255}
        ref = ellipse_mask(SHAPE, cx, cy, a, b, ang)[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        iou = np.logical_and(mask, ref).sum() / np.logical_or(mask, ref).sum()
        assert iou > 0.98
        true_hc = ramanujan(a, b) * px
        assert float(row.hc_fit_mm) == pytest.approx(true_hc, rel=0.01)
        assert float(row.hc_mm) == pytest.approx(true_hc, abs=0.01)  # the CSV's reference value
        assert float(row.pixel_size_mm) == pytest.approx(px)
        assert float(row.ellipse_cx) + x0 == pytest.approx(cx, abs=0.5)
        assert float(row.ellipse_cy) + y0 == pytest.approx(cy, abs=0.5)
        assert float(row.ellipse_a) == pytest.approx(a, rel=0.01)
        assert float(row.ellipse_b) == pytest.approx(b, rel=0.01)
        if a / b > 1.1:
            assert _angle_diff(math.degrees(float(row.ellipse_angle)), ang) < 2
        assert (row.plane, row.is_standard_plane, row.frame_id) == ("head", "true", "0")
    # 001_HC and 001_2HC are one examination: one patient, so one split.
    assert set(train[train.video_name.str.startswith("001")].patient_id) == {"001"}
    test = rows[rows.hc18_set == "test_set"]
    assert test.patient_id.tolist() == ["test-000", "test-001"]  # not training patient 000
    assert (test.mask_path == "").all() and (test.hc_mm == "").all()
    assert (test.pixel_size_mm == "0.1").all()
    # the official split: the test set is split test, the training set left to the build's hash
    assert (test.split == "test").all() and (train.split == "").all()


def test_fit_and_fill_helpers():
    outline = np.zeros((100, 120), np.uint8)
    cv2.ellipse(outline, ((60.0, 50.0), (80.0, 50.0), 30.0), 255, 1)
    cx, cy, a, b, angle = fit_ellipse(outline > 0)
    assert (cx, cy, a, b) == pytest.approx((60, 50, 40, 25), abs=0.5)
    assert math.degrees(angle) == pytest.approx(30, abs=1.5) and -math.pi / 2 < angle <= math.pi / 2
    filled = fill_outline(outline > 0, (cx, cy, a, b, angle))
    assert filled[50, 60] == 255 and filled[0, 0] == 0
    gap = outline.copy()
    gap[:, 95:] = 0  # an outline with a gap lets the outside in: the fitted ellipse is drawn
    filled = fill_outline(gap > 0, fit_ellipse(gap > 0))
    assert filled[50, 60] == 255


def test_bad_input_is_rejected_by_name(tmp_path):
    root = make_hc18(tmp_path / "hc18", SHAPE)
    train = root / "training_set"
    (train / "001_HC_Annotation.png").unlink()  # an image without its annotation
    cv2.imwrite(str(train / "003_HC.png"), np.zeros(SHAPE, np.uint8))  # not in the CSV
    (train / "004_HC.png").write_bytes(b"not a png")
    with open(root / "training_set_pixel_size_and_HC.csv", "a") as f:
        f.write("004_HC.png,0.1,100\n099_HC.png,0.1,100\n")  # 099: listed, no image
    r = import_hc18(str(root), tmp_path / "out", progress=False)
    reasons = {Path(x["item"]).name: x["reason"] for x in read_rejects(tmp_path / "out")}
    assert set(reasons) == {"001_HC.png", "003_HC.png", "004_HC.png", "099_HC.png"}
    for name, reason in reasons.items():
        assert name in reason
    assert "no annotation 001_HC_Annotation.png" in reasons["001_HC.png"]
    assert "missing from training_set_pixel_size_and_HC.csv" in reasons["003_HC.png"]
    assert "no such image" in reasons["099_HC.png"]
    rows = read_rows(tmp_path / "out")
    assert r.frames == 5 and "001_HC" not in rows[rows.hc18_set == "training_set"].video_name.tolist()


def test_layout_errors_stop_with_a_message(tmp_path):
    with pytest.raises(ValueError, match="neither training_set/ nor test_set/"):
        import_hc18(str(tmp_path), tmp_path / "out", progress=False)
    root = make_hc18(tmp_path / "hc18", SHAPE)
    (root / "test_set_pixel_size.csv").unlink()
    with pytest.raises(ValueError, match="test_set_pixel_size.csv"):
        import_hc18(str(root), tmp_path / "out2", progress=False)
