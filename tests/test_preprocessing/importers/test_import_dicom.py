"""`import dicom` on the real scanner files in pydicom-data and on generated bad input."""
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, generate_uid

from importer_helpers import dicom_file, read_rejects, read_rows
from preprocessing.importers.dicom import import_dicom
from preprocessing.media import looks_like_dicom




def _img(out, rel):
    return cv2.imread(str(Path(out) / rel), cv2.IMREAD_UNCHANGED)


def write_dicom(path, arr, photometric="MONOCHROME2", bits_stored=None, **attrs):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # US multi-frame image storage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "US"
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.set_pixel_data(arr, photometric_interpretation=photometric,
                      bits_stored=bits_stored or arr.dtype.itemsize * 8)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_philips_palette_single_and_rle_two_frame(tmp_path):
    single, rle2 = dicom_file("OBXXXX1A.dcm"), dicom_file("OBXXXX1A_rle_2frame.dcm")
    r = import_dicom([single], tmp_path / "a", crop_sector=False, progress=False,
                     keep_identifiers=True)
    assert (r.frames, r.videos, r.rejects) == (1, 1, [])
    row = read_rows(tmp_path / "a").iloc[0]
    assert row.patient_id == "11-05-25-142825" and row.frame_id == "0"
    assert row.video_name == "1.3.46.670589.14.1000.210.2.199999.20110525185628.1.0"
    assert row.manufacturer == "Philips Medical Systems"
    assert float(row.pixel_size_mm) == pytest.approx(0.2622878766, rel=1e-6)  # 0.0262 cm
    img = _img(tmp_path / "a", row.frame_path)
    assert img.shape == (600, 800) and img.dtype == np.uint8
    assert "crop_x0" not in row  # --no-crop-sector: nothing cropped, nothing recorded
    # The RLE 2-frame file: one video, frames in order; frame 0 is the same image as above.
    r2 = import_dicom([rle2], tmp_path / "b", crop_sector=False, progress=False)
    rows = read_rows(tmp_path / "b")
    assert (r2.frames, r2.videos) == (2, 1) and rows.frame_id.tolist() == ["0", "1"]
    assert np.array_equal(_img(tmp_path / "b", rows.frame_path[0]), img)
    assert not np.array_equal(_img(tmp_path / "b", rows.frame_path[1]), img)


def test_copies_of_one_image_are_rejected_by_sop_instance_uid(tmp_path):
    files = [dicom_file(n) for n in ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm")]
    r = import_dicom(files, tmp_path / "o", progress=False)
    assert r.frames == 1
    (rej,) = read_rejects(tmp_path / "o")
    assert rej["item"] == files[1] and "already imported from" in rej["reason"]
    assert files[0] in rej["reason"]


def test_ge_rgb_aloka_16bit_palette_and_sonosite_cine(tmp_path):
    files = [dicom_file(n) for n in ("US1_UNCR.dcm", "gdcm-US-ALOKA-16.dcm",
                                     "examples_ybr_color.dcm")]
    r = import_dicom(files, tmp_path / "o", progress=False, keep_identifiers=True)
    assert r.rejects == [] and (r.videos, r.frames) == (3, 1 + 1 + 30)
    rows = read_rows(tmp_path / "o")
    by_file = {f: rows[rows.source_file == f] for f in files}
    ge, aloka, cine = (by_file[f] for f in files)
    assert ge.manufacturer.iloc[0] == "G.E. Medical Systems" and ge.pixel_size_mm.iloc[0] == ""
    assert aloka.manufacturer.iloc[0] == "ALOKA CO., LTD."
    assert float(aloka.pixel_size_mm.iloc[0]) == pytest.approx(0.3826530650, rel=1e-6)
    assert [int(aloka[c].iloc[0]) for c in ("crop_y0", "crop_y1")] == pytest.approx([24, 416], abs=3)
    img = _img(tmp_path / "o", aloka.frame_path.iloc[0])
    assert img.dtype == np.uint8 and img.max() > 150 and img.mean() > 20  # 16-bit scaled, not crushed
    assert cine.frame_id.tolist() == [str(i) for i in range(30)]
    assert set(cine.frame_time_ms) == {"33.333"} and set(cine.crop_method) == {"motion"}
    assert cine.pixel_size_mm.iloc[0] == ""  # its region is for 640x480, the file is 320x240
    for _, row in rows.iterrows():  # every frame has the size of its crop box
        h, w = _img(tmp_path / "o", row.frame_path).shape
        assert (w, h) == (int(row.crop_x1) - int(row.crop_x0), int(row.crop_y1) - int(row.crop_y0))


def test_16bit_monochrome_loop_without_window_uses_the_file_range(tmp_path):
    arr = np.zeros((3, 40, 50), np.uint16)
    arr[0, :, :] = 1000
    arr[1, 10:30, 10:40] = 3000
    arr[2, :, :] = 2000
    write_dicom(tmp_path / "m.dcm", arr, bits_stored=12, PatientID="P1")
    r = import_dicom([str(tmp_path / "m.dcm")], tmp_path / "o", crop_sector=False, progress=False,
                     keep_identifiers=True)
    rows = read_rows(tmp_path / "o")
    assert r.frames == 3 and rows.patient_id.tolist() == ["P1"] * 3
    means = [_img(tmp_path / "o", p).astype(float) for p in rows.frame_path]
    assert means[0].max() == 85 and means[1].max() == 255 and means[1].min() == 0  # 0..3000
    assert means[2].max() == 170


def test_monochrome1_is_inverted_and_missing_patient_id_hashes_the_path(tmp_path):
    arr = np.full((20, 30), 200, np.uint8)
    write_dicom(tmp_path / "inv", arr, photometric="MONOCHROME1")  # no extension, DICM marker
    assert looks_like_dicom(str(tmp_path / "inv"))
    r = import_dicom([str(tmp_path)], tmp_path / "o", crop_sector=False, progress=False,
                     keep_identifiers=True)
    rows = read_rows(tmp_path / "o")
    assert r.frames == 1 and rows.patient_id[0].startswith("anon-")
    assert _img(tmp_path / "o", rows.frame_path[0]).max() == 55


def test_bad_files_are_rejected_by_name_and_the_rest_goes_on(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "notes.dcm").write_text("this is not a DICOM file\n" * 20)
    (src / "empty.dcm").write_bytes(b"")
    nopix = Dataset()
    nopix.file_meta = FileMetaDataset()
    nopix.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    nopix.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic text SR
    nopix.SOPInstanceUID = generate_uid()
    nopix.save_as(src / "report.dcm", enforce_file_format=True)
    ds = write_dicom(src / "ht.dcm", np.zeros((3, 8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(40)] * 3)
    ds["PixelData"].VR = "OB"
    ds.save_as(src / "ht.dcm", enforce_file_format=True)
    good = dicom_file("OBXXXX1A_rle.dcm")
    r = import_dicom([str(src), good, str(tmp_path / "gone.dcm")], tmp_path / "o", progress=False,
                     keep_identifiers=True)
    assert r.frames == 1 and read_rows(tmp_path / "o").source_file.tolist() == [good]
    reasons = {Path(x["item"]).name: x["reason"] for x in read_rejects(tmp_path / "o")}
    assert set(reasons) == {"notes.dcm", "empty.dcm", "report.dcm", "ht.dcm", "gone.dcm"}
    for name, reason in reasons.items():
        assert name in reason  # every message names its file
    assert "not a DICOM file" in reasons["notes.dcm"] and "not a DICOM file" in reasons["empty.dcm"]
    assert "without pixel data" in reasons["report.dcm"]
    assert "High-Throughput JPEG 2000" in reasons["ht.dcm"] and "openjpeg" in reasons["ht.dcm"]
    assert "no such file" in reasons["gone.dcm"]


def test_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no DICOM files"):
        import_dicom([str(tmp_path / "empty")], tmp_path / "o", progress=False)
    good = dicom_file("OBXXXX1A_rle.dcm")
    import_dicom([good], tmp_path / "o2", progress=False)
    with pytest.raises(ValueError, match="--overwrite"):
        import_dicom([good], tmp_path / "o2", progress=False)
    assert import_dicom([good], tmp_path / "o2", overwrite=True, progress=False).frames == 1
    assert pydicom.__version__  # the importer ran on the installed pydicom


@pytest.mark.parametrize("name", ["gdcm-US-ALOKA-16.dcm", "US1_UNCR.dcm", "OBXXXX1A_2frame.dcm"])
def test_colour_conversion_matches_an_independent_decode(tmp_path, name):
    """Palette (8- and 16-bit LUT entries) and RGB frames become the luma of their RGB."""
    path = dicom_file(name)
    import_dicom([path], tmp_path / "o", crop_sector=False, progress=False)
    ds = pydicom.dcmread(path)
    rgb = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(rgb, ds)
    rgb = rgb.reshape(-1, *rgb.shape[-3:]).astype(np.float64)
    if rgb.max() > 255:
        rgb = rgb / 256.0
    expected = rgb @ np.array([0.299, 0.587, 0.114])
    rows = read_rows(tmp_path / "o")
    assert len(rows) == len(expected)
    for rel, exp in zip(rows.frame_path, expected):
        assert np.abs(_img(tmp_path / "o", rel) - exp).max() <= 1.5
