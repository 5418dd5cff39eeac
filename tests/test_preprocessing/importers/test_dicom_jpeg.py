"""Baseline-JPEG DICOM loops decoded by OpenCV (preprocessing.dicom_jpeg): within the stated
bound of pydicom's decode, checked per file, and handed back to pydicom where OpenCV fails."""
import cv2
import numpy as np
import pydicom
import pytest

from importer_helpers import dicom_file, read_rows
from preprocessing import dicom_jpeg
from preprocessing.imaging import encode_import_png
from preprocessing.importers.dicom import import_dicom


def _import(path, out, fast, monkeypatch):
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(dicom_jpeg, "eligible", lambda *a: False)
        import_dicom([str(path)], str(out), progress=False)
    rows = read_rows(out)
    return rows, [cv2.imread(str(out / p), cv2.IMREAD_UNCHANGED) for p in rows.frame_path]


def _count_opencv_decodes(monkeypatch, fail_from=None):
    calls = []
    real = cv2.imdecode

    def imdecode(buf, flag):
        calls.append(flag)
        return None if fail_from is not None and len(calls) > fail_from else real(buf, flag)
    monkeypatch.setattr(dicom_jpeg.cv2, "imdecode", imdecode)
    return calls


def test_sonosite_ybr_loop_within_the_bound_of_pydicom(tmp_path, monkeypatch):
    """The same rows (crop box, method), and every stored pixel within 2 gray levels of the
    pydicom decode, except pixels the colour-overlay rule blanks in one decode and not the
    other (R, G, B spread right at the threshold): under 0.01 % of them."""
    path = dicom_file("examples_ybr_color.dcm")   # 30 YBR_FULL_422 JPEG frames, 320x240
    slow_rows, slow = _import(path, tmp_path / "slow", False, monkeypatch)
    calls = _count_opencv_decodes(monkeypatch)
    fast_rows, fast = _import(path, tmp_path / "fast", True, monkeypatch)
    assert len(calls) == 30   # every frame went through OpenCV
    assert fast_rows.equals(slow_rows)
    off = blanked = total = 0
    for a, b in zip(slow, fast):
        diff = cv2.absdiff(a, b)
        blank = (a == 0) | (b == 0)
        off += np.count_nonzero((diff > 2) & ~blank)
        blanked += np.count_nonzero((diff > 2) & blank)
        total += a.size
    assert off == 0 and blanked < 1e-4 * total


def test_a_jpeg_opencv_reads_in_other_colours_is_left_to_pydicom(tmp_path, monkeypatch):
    """An RGB JPEG stored without the colour transform and without a marker saying so (the
    reason RGB-labelled JPEGs keep pydicom): let onto the fast path, OpenCV's decode of the first
    frame disagrees with pydicom's, so the whole file is decoded by pydicom, byte for byte as
    without the fast path."""
    src = pydicom.dcmread(dicom_file("SC_jpeg_no_color_transform.dcm"))
    frame = next(pydicom.encaps.generate_frames(src.PixelData, number_of_frames=1))
    src.PixelData = pydicom.encaps.encapsulate([frame, frame, frame])
    src.NumberOfFrames = 3
    path = tmp_path / "rgb_loop.dcm"
    src.save_as(path, enforce_file_format=True)
    slow_rows, slow = _import(path, tmp_path / "slow", False, monkeypatch)
    monkeypatch.setattr(dicom_jpeg, "PHOTOMETRIC", (*dicom_jpeg.PHOTOMETRIC, "RGB"))
    calls = _count_opencv_decodes(monkeypatch)
    fast_rows, fast = _import(path, tmp_path / "fast", True, monkeypatch)
    assert len(calls) == 1   # tried on the first frame only
    assert fast_rows.equals(slow_rows)
    assert all(np.array_equal(a, b) for a, b in zip(slow, fast))


def test_frames_opencv_cannot_decode_are_decoded_by_pydicom(tmp_path, monkeypatch):
    """OpenCV fails from frame 3 on: frames 0-2 come from OpenCV, 3.. from pydicom (exactly
    pydicom's pixels), none lost or repeated."""
    path = dicom_file("examples_ybr_color.dcm")
    slow_rows, slow = _import(path, tmp_path / "slow", False, monkeypatch)
    _count_opencv_decodes(monkeypatch, fail_from=3)
    fast_rows, fast = _import(path, tmp_path / "fast", True, monkeypatch)
    assert fast_rows.equals(slow_rows) and len(fast) == 30
    assert not all(np.array_equal(a, b) for a, b in zip(slow[:3], fast[:3]))  # OpenCV's
    assert all(np.array_equal(a, b) for a, b in zip(slow[3:], fast[3:]))


def test_import_png_is_lossless():
    rng = np.random.default_rng(0)
    fan = np.zeros((97, 131), np.uint8)
    cv2.ellipse(fan, (65, 0), (90, 90), 0, 30, 150, 255, -1)
    for img in (rng.integers(0, 256, (97, 131), dtype=np.uint8), fan,
                np.where(fan > 0, rng.integers(0, 256, fan.shape), 0).astype(np.uint8)):
        data = encode_import_png(img)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), img)


@pytest.mark.parametrize("photometric", ["RGB", "PALETTE COLOR"])
def test_other_photometric_interpretations_keep_pydicom(photometric):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = dicom_jpeg.JPEG_BASELINE
    ds.SamplesPerPixel, ds.BitsAllocated = 3, 8
    assert not dicom_jpeg.eligible(ds, photometric, 10)
    assert dicom_jpeg.eligible(ds, "YBR_FULL_422", 10) and not dicom_jpeg.eligible(ds, "YBR_FULL_422", 1)
