import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from preprocessing.format import Letterbox
from preprocessing.imaging import (ImageError, binarize_mask, decode_gray, encode, letterbox,
                                   is_png_gray8, to_gray8)


def _png(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_rgb_becomes_luma():
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    gray = decode_gray(_png(rgb))
    assert gray.shape == (4, 5) and gray.dtype == np.uint8
    assert abs(int(gray[0, 0]) - 76) <= 1  # 0.299 * 255


def test_palette_png_becomes_gray():
    im = Image.fromarray(np.arange(20, dtype=np.uint8).reshape(4, 5)).convert("P")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    gray = decode_gray(buf.getvalue())
    assert gray.shape == (4, 5) and gray.dtype == np.uint8
    assert gray.max() > 0


def test_16bit_scaled_by_bit_depth_not_per_image():
    a16 = np.array([[0, 4095, 2048]], np.uint16)  # 12-bit data in a 16-bit container
    ok, buf = cv2.imencode(".png", a16)
    gray = decode_gray(buf.tobytes())
    assert gray.tolist() == [[0, 255, 128]]
    full = np.array([[0, 65535, 32768]], np.uint16)
    assert to_gray8(full).tolist() == [[0, 255, 128]]


def test_alpha_composited_on_black_and_float_scaled():
    bgra = np.full((2, 2, 4), 200, np.uint8)
    bgra[..., 3] = 0
    assert to_gray8(bgra).max() == 0
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert to_gray8(f).tolist() == [[0, 128, 255]]
    with pytest.raises(ImageError):
        to_gray8(np.array([[np.nan]], np.float32))


@pytest.mark.parametrize("codec", ["png", "jpeg"])
def test_truncated_file_is_an_image_error(codec):
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = encode(img, codec)
    with pytest.raises(ImageError):
        decode_gray(data[: len(data) // 2])
    with pytest.raises(ImageError):
        decode_gray(b"this is not an image")


def test_letterbox_geometry_and_point_mapping():
    g = Letterbox.fit(540, 800, 256)
    assert (g.height, g.width) == (256, 256)
    assert g.scale == pytest.approx(0.32)
    assert (g.out_h, g.out_w) == (173, 256) and (g.pad_x, g.pad_y) == (0, 41)
    out = letterbox(np.full((540, 800), 7, np.uint8), g)
    assert out.shape == (256, 256) and out[0, 0] == 0 and out[128, 128] == 7
    # the source image centre maps to the stored image centre
    cx, cy = g.to_stored(399.5, 269.5)
    assert cx == pytest.approx(127.5) and cy == pytest.approx(41 + 86, abs=0.5)
    ident = Letterbox.fit(10, 20, 0)
    assert ident.identity and ident.to_stored(3.0, 4.0) == (3.0, 4.0)


def test_mask_resize_stays_binary():
    m = np.zeros((100, 150), np.uint8)
    cv2.ellipse(m, (75, 50), (40, 20), 30, 0, 360, 255, -1)
    out = letterbox(m, Letterbox.fit(100, 150, 64), mask=True)
    assert set(np.unique(out).tolist()) <= {0, 255}


def test_binarize_mask():
    assert binarize_mask(np.array([[0, 1]], np.uint8)).tolist() == [[0, 255]]
    m = np.array([[0, 255]], np.uint8)
    assert binarize_mask(m) is m
    with pytest.raises(ImageError, match="0/255"):
        binarize_mask(np.array([[0, 128, 255]], np.uint8))


def test_png_header_sniffing():
    assert is_png_gray8(encode(np.zeros((4, 4), np.uint8), "png"))
    assert not is_png_gray8(_png(np.zeros((4, 4, 3), np.uint8)))
    assert not is_png_gray8(encode(np.zeros((4, 4), np.uint8), "jpeg"))


def test_an_unreadable_image_reason_names_no_python_object():
    with pytest.raises(ImageError) as e:
        decode_gray(b"this is no image at all" * 4)
    assert "object at 0x" not in str(e.value)
    assert str(e.value) == ("not a readable image (neither OpenCV nor Pillow recognises the "
                            "format)")


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch):
    from preprocessing import imaging
    data = _png(np.zeros((30, 40), np.uint8))
    assert imaging.decode_raw(data, max_pixels=1200).shape == (30, 40)

    def no_decoding(*args):
        raise AssertionError("decoded despite the header saying it is over the limit")
    monkeypatch.setattr(imaging.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(imaging, "_decode_pillow", no_decoding)
    with pytest.raises(ImageError, match=r"40x30 \(1,200 pixels\), over the limit of 1,199"):
        imaging.decode_raw(data, max_pixels=1199)


def test_only_regular_files_are_read(tmp_path):
    from preprocessing.imaging import read_bytes
    with pytest.raises(ImageError, match="is a folder, not a regular file"):
        read_bytes(str(tmp_path))
    if os.path.exists("/dev/zero"):
        with pytest.raises(ImageError, match="/dev/zero is a device, not a regular file"):
            read_bytes("/dev/zero")
