import cv2
import numpy as np

from preprocessing.encode import EncodeOptions, Encoded, Rejected, encode_segment
from preprocessing.frames_csv import FrameRow
from preprocessing.imaging import decode_gray


def _row(tmp_path, name, shape, mask_name):
    cv2.imwrite(str(tmp_path / name), np.full(shape, 90, np.uint8))
    return FrameRow(2, name, str(tmp_path / name), str(tmp_path / mask_name), "0", {}, {})


def test_repeated_mask_bytes_are_checked_against_each_frame(tmp_path):
    """The same mask file is remembered after one decode, but its size is checked per frame."""
    m = np.zeros((40, 60), np.uint8)
    cv2.ellipse(m, (30, 20), (10, 6), 0, 0, 360, 255, -1)
    cv2.imwrite(str(tmp_path / "m.png"), m)
    cv2.imwrite(str(tmp_path / "bad.png"), np.full((40, 60), 7, np.uint8))
    rows = [_row(tmp_path, "a.png", (40, 60), "m.png"), _row(tmp_path, "b.png", (40, 60), "m.png"),
            _row(tmp_path, "c.png", (50, 60), "m.png"), _row(tmp_path, "d.png", (40, 60), "bad.png"),
            _row(tmp_path, "e.png", (40, 60), "bad.png")]
    out = encode_segment(rows, EncodeOptions(image_size=0, codec="png"))
    assert [type(r) for r in out] == [Encoded, Encoded, Rejected, Rejected, Rejected]
    assert out[0].mask == out[1].mask == (tmp_path / "m.png").read_bytes()  # stored as given
    assert "60x40" in out[2].reason and "c.png" not in out[2].reason
    assert "0/255" in out[3].reason and "0/255" in out[4].reason
    # resized: the mask is re-encoded at the stored size and stays binary
    (r,) = encode_segment(rows[:1], EncodeOptions(image_size=32, codec="png"))
    stored = decode_gray(r.mask)
    assert stored.shape == (32, 32) and set(np.unique(stored).tolist()) == {0, 255}


def test_sources_already_in_the_stored_form_are_kept_byte_for_byte(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (40, 60), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), img)
    cv2.imwrite(str(tmp_path / "g.jpg"), img)
    cv2.imwrite(str(tmp_path / "c.jpg"), np.dstack([img] * 3))
    rows = [FrameRow(2, n, str(tmp_path / n), None, "0", {}, {}) for n in ("g.png", "g.jpg", "c.jpg")]
    png, = encode_segment(rows[:1], EncodeOptions(image_size=0, codec="png"))
    jpg, color = encode_segment(rows[1:], EncodeOptions(image_size=0, codec="jpeg"))
    assert png.image == (tmp_path / "g.png").read_bytes()
    assert jpg.image == (tmp_path / "g.jpg").read_bytes()
    assert color.image != (tmp_path / "c.jpg").read_bytes()  # colour JPEG: re-encoded as gray
    assert decode_gray(color.image).shape == (40, 60)
    resized, = encode_segment(rows[:1], EncodeOptions(image_size=30, codec="png"))
    assert resized.image != png.image and decode_gray(resized.image).shape == (30, 30)
