"""A DICOM loop whose transfer syntax pydicom cannot decode is named with the file, the UID and
its name, and what to install or run, by `import dicom` (a reject) and by segment-video (an
error): an unknown private UID, an MPEG video stream, pixel data that no installed handler
decodes. The advice for MPEG (save the stream as a video file) is run here and works."""
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UltrasoundMultiFrameImageStorage, generate_uid

from importer_helpers import read_rejects
from pipeline.eval.cine.source import read_file
from preprocessing.format import SonostreamError
from preprocessing.importers.dicom import import_dicom
from preprocessing.media import read_video, write_mp4

PRIVATE = "1.2.826.0.1.3680043.10.999.1"     # a made-up private transfer syntax
H264 = "1.2.840.10008.1.2.4.102"             # MPEG-4 AVC/H.264 High Profile / Level 4.1
J2K = "1.2.840.10008.1.2.4.90"               # JPEG 2000 Lossless


def write_loop(path, ts, fragments):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", 32, 32, len(fragments)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.preamble = bytes(128)   # a file as scanners write it: preamble, 'DICM', file meta
    ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    return path


@pytest.fixture
def loops(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    frames = [np.full((32, 32), 40 * i, np.uint8) for i in range(3)]
    mp4 = write_mp4(tmp_path / "loop.mp4", frames).read_bytes()
    return {"private": write_loop(src / "private.dcm", PRIVATE, [bytes(64)] * 3),
            "h264": write_loop(src / "h264.dcm", H264, [mp4]),
            "j2k": write_loop(src / "j2k.dcm", J2K, [b"\xff\x4f\xff\x51" + bytes(40)] * 3)}


EXPECTED = {
    "private": rf"transfer syntax {re.escape(PRIVATE)} is not one pydicom knows \(a private or "
               r"misspelt UID\).*export the file .* with a standard transfer syntax, or transcode "
               r"it .*`gdcmconv --raw IN.dcm OUT.dcm`",
    "h264": r"transfer syntax MPEG-4 AVC/H.264 High Profile / Level 4.1 \(1.2.840.10008.1.2.4.102\) "
            r"is a video stream that pydicom does not decode; save the stream as a video file",
    "j2k": r"cannot decode the pixel data as JPEG 2000 Image Compression \(Lossless Only\) "
           r"\(1.2.840.10008.1.2.4.90\) \(.*\); if other viewers open the file, another pixel-data "
           r"handler may \(pip install pylibjpeg .*python-gdcm\), or transcode it",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_segment_video_names_the_file_the_syntax_and_the_fix(loops, kind):
    with pytest.raises(SonostreamError) as e:
        read_file(str(loops[kind]), crop_sector=False)
    msg = str(e.value)
    assert msg.startswith(f"{loops[kind]}: ") and re.search(EXPECTED[kind], msg), msg


def test_import_rejects_each_with_its_reason(loops, tmp_path):
    r = import_dicom([str(tmp_path / "in")], tmp_path / "out", crop_sector=False, progress=False)
    assert r.frames == 0
    reasons = {row["item"]: row["reason"] for row in read_rejects(tmp_path / "out")}
    for kind, path in loops.items():
        assert re.search(EXPECTED[kind], reasons[str(path)]), reasons[str(path)]
        assert "unexpected error" not in reasons[str(path)]


def test_the_advice_for_an_mpeg_loop_gives_a_video_that_reads(loops, tmp_path):
    with pytest.raises(SonostreamError) as e:
        read_file(str(loops["h264"]), crop_sector=False)
    command = str(e.value).split("pass that instead: ", 1)[1]
    args = shlex.split(command.replace("IN.dcm", str(loops["h264"]))
                       .replace("OUT.mp4", str(tmp_path / "out.mp4")))
    assert args[0] == "python"
    subprocess.run([sys.executable, *args[1:]], check=True, capture_output=True)
    _, images = read_video(str(tmp_path / "out.mp4"), crop_sector=False)
    means = [round(float(img.mean())) for _, _, img in images]
    assert len(means) == 3 and abs(means[2] - 80) <= 3
