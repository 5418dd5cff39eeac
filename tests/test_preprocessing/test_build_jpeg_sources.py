"""Sources already in the stored form (8-bit gray JPEG of the stored size) are stored byte for
byte after a structural check instead of a full decode (``headers.check_stored_jpeg``); every
JPEG the check does not accept is decoded as before, so bad ones still land in rejects.csv and
converted ones are still converted. PNG sources build the same bytes as before the check."""
import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from factories import write_frames
from preprocessing import encode, imaging
from preprocessing import format as fmt
from preprocessing.build import BuildOptions, build
from preprocessing.headers import check_stored_jpeg, header_size
from preprocessing.imaging import ImageError

SIZE = 32


def _jpeg(img: np.ndarray, **params) -> bytes:
    flags = [cv2.IMWRITE_JPEG_QUALITY, 95]
    for k, v in params.items():
        flags += [getattr(cv2, k), v]
    return cv2.imencode(".jpg", img, flags)[1].tobytes()


def _gray(seed: int, shape=(SIZE, SIZE)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _digest(ds: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((ds / fmt.SHARDS_DIR).iterdir()):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    rows = pq.read_table(ds / fmt.INDEX_FILE).to_pylist()
    h.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return h.hexdigest()


# Built by the code before the JPEG check (main at 34546f0), OpenCV 5.0.0 (launch/constraints.txt)
BEFORE = {(32, "jpeg"): "ca7c57868273ef445cc0fc8b6da81e2d7c0687a93ae14b21d7e2821d3af7e765",
          (0, "png"): "4fbd4f66c0788d8f82fdfae6b342b23f765c7ea0ff263d1469fff44a8ceb5d65",
          (0, "jpeg"): "f2324e207763f05ccb9e0e84ab5e33a748b50dc840e26786b64cc6a19a537f42"}


@pytest.mark.skipif(not cv2.__version__.startswith("5.0.0"),
                    reason="the digests are of the pinned OpenCV's JPEG encoder")
def test_png_sources_build_the_same_bytes_as_before(tmp_path):
    src = write_frames(tmp_path / "src", patients=2, videos=2, frames=4, shape=(48, 64), seed=3)
    for (size, codec), want in BEFORE.items():
        out = tmp_path / f"ds_{size}_{codec}"
        build(str(src), str(out), BuildOptions(image_size=size, codec=codec), workers=1,
              progress=False)
        assert _digest(out) == want, (size, codec)
        options = json.loads((out / fmt.MANIFEST_FILE).read_text())["fingerprint"]["options"]
        assert "verify_decode" not in options   # the manifest is the one written before, too


def _write_jpeg_csv(root: Path, files: dict[str, bytes]) -> Path:
    """One video whose frame 0 is a good gray JPEG (the sampled, decoded one) and frames 1..
    are ``files`` in order (checked, not decoded)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, data) in enumerate({"good0.jpg": _jpeg(_gray(0)), **files}.items()):
        (root / name).write_bytes(data)
        rows.append({"frame_path": name, "patient_id": "p1", "video_name": "v1",
                     "frame_id": str(i)})
    path = root / "frames.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _built(out: Path):
    index = {r["source_path"]: r for r in pq.read_table(out / fmt.INDEX_FILE).to_pylist()}
    with open(out / fmt.REJECTS_FILE, newline="") as f:
        rejects = {r["frame_path"]: r["reason"] for r in csv.DictReader(f)}
    shards = {p.name: p.read_bytes() for p in (out / fmt.SHARDS_DIR).glob("*.tar")}

    def stored(row) -> bytes:
        return shards[row["shard"]][row["image_offset"]:row["image_offset"] + row["image_size"]]
    return index, rejects, stored


def test_bad_or_unlike_jpegs_are_not_stored_as_they_are(tmp_path, monkeypatch):
    good = _jpeg(_gray(1))
    png = cv2.imencode(".png", _gray(2))[1].tobytes()
    files = {"good1.jpg": good,
             "truncated.jpg": good[:len(good) // 2],
             "wrong_size.jpg": _jpeg(_gray(3, (48, 64))),
             "text.jpg": b"this is not an image at all, only its name says so\n" * 8,
             "png_named.jpg": png,
             "colour.jpg": _jpeg(np.dstack([_gray(4), _gray(5), _gray(6)])),
             "two_images.jpg": good[:-2] + _jpeg(_gray(7))}   # a marker inside the scan
    decoded = []
    real = imaging.decode_raw
    monkeypatch.setattr(encode, "decode_raw", lambda data, *a: decoded.append(data) or real(data, *a))
    out = tmp_path / "ds"
    build(str(_write_jpeg_csv(tmp_path / "src", files)), str(out),
          BuildOptions(image_size=SIZE, val_fraction=0, test_fraction=0), workers=1, progress=False)
    index, rejects, stored = _built(out)
    assert set(index) | set(rejects) == {"good0.jpg", *files}
    # rejected, with the decoder's reason, as before the check
    assert "truncated" in rejects["truncated.jpg"]
    assert "not a readable image" in rejects["text.jpg"]
    assert set(rejects) == {"truncated.jpg", "text.jpg"}
    # stored as they are: the good ones; only the sampled frame 0 of them was decoded
    assert stored(index["good1.jpg"]) == good
    assert stored(index["good0.jpg"]) == (tmp_path / "src" / "good0.jpg").read_bytes()
    assert good not in decoded   # stored after the check, not decoded
    assert len(decoded) == 1 + len(files) - 1   # frame 0 (the sample) and every other one
    # converted, as before the check: resized, re-encoded as JPEG, made gray
    w = index["wrong_size.jpg"]
    assert (w["src_height"], w["src_width"], w["height"], w["width"]) == (48, 64, SIZE, SIZE)
    for name in ("wrong_size.jpg", "png_named.jpg", "colour.jpg"):
        data = stored(index[name])
        assert data != files[name] and data[:3] == b"\xff\xd8\xff", name
        assert check_stored_jpeg(data).width == SIZE, name   # a gray JPEG of the stored size
    # two images in one file: decoded (the first image), stored as before (whole file)
    assert stored(index["two_images.jpg"]) == files["two_images.jpg"]


def test_a_rejected_sample_decodes_its_whole_segment(tmp_path, monkeypatch):
    files = {f"g{i}.jpg": _jpeg(_gray(10 + i)) for i in range(1, 4)}
    csv_path = _write_jpeg_csv(tmp_path / "src", files)
    sample = (tmp_path / "src" / "good0.jpg").read_bytes()
    decoded = []

    def decode_raw(data, *args):   # the sampled frame fails its decode; the rest are fine
        decoded.append(data)
        if data == sample:
            raise ImageError("not a readable image (planted)")
        return imaging.decode_raw(data, *args)
    monkeypatch.setattr(encode, "decode_raw", decode_raw)
    out = tmp_path / "ds"
    build(str(csv_path), str(out), BuildOptions(image_size=SIZE), workers=1, progress=False)
    index, rejects, stored = _built(out)
    assert rejects == {"good0.jpg": "not a readable image (planted)"}
    assert sorted(decoded) == sorted([sample, *files.values()])   # all of them decoded
    assert all(stored(index[n]) == data for n, data in files.items())


def test_verify_decode_decodes_every_frame_and_stores_the_same_bytes(tmp_path, monkeypatch):
    files = {f"g{i}.jpg": _jpeg(_gray(20 + i)) for i in range(1, 40)}   # two samples: 0, 32
    csv_path = _write_jpeg_csv(tmp_path / "src", files)
    decoded = []
    real = imaging.decode_raw
    monkeypatch.setattr(encode, "decode_raw", lambda data, *a: decoded.append(data) or real(data, *a))
    digests = {}
    for verify in (False, True):
        decoded.clear()
        out = tmp_path / f"ds_{verify}"
        build(str(csv_path), str(out), BuildOptions(image_size=SIZE, verify_decode=verify),
              workers=1, progress=False)
        digests[verify] = _digest(out)
        assert len(decoded) == (40 if verify else 2)
        options = json.loads((out / fmt.MANIFEST_FILE).read_text())["fingerprint"]["options"]
        assert options.get("verify_decode", False) is verify
    assert digests[False] == digests[True]


def test_the_structural_check_and_its_reasons():
    good = _jpeg(_gray(30))
    header = check_stored_jpeg(good)
    assert (header.width, header.height) == (SIZE, SIZE)
    sof = good.index(b"\xff\xc0")
    dht = good.index(b"\xff\xc4")
    dht_len = int.from_bytes(good[dht + 2:dht + 4], "big")
    bad_huffman = bytearray(good)
    bad_huffman[dht + 5:dht + 21] = bytes([3] + [0] * 15)   # 3 codes of 1 bit: do not fit
    cases = {
        good[:-1]: "does not end with EOI",
        good + b"\0": "does not end with EOI",
        b"\x89PNG" + good[4:]: "no SOI",
        _jpeg(np.dstack([_gray(31)] * 3)): "not one 8-bit component",
        _jpeg(_gray(32), IMWRITE_JPEG_PROGRESSIVE=1): "frame type SOF2",
        good[:dht] + good[dht + 2 + dht_len:]: "a table the scan needs is not defined",
        bytes(bad_huffman): "bad Huffman table",
        good[:-200] + b"\xff\xd9" + good[-198:]: "marker FFD9 inside the scan data",
        good[:sof + 5] + b"\0\0" + good[sof + 7:]: "frame header values out of range",
    }
    for data, reason in cases.items():
        found = check_stored_jpeg(data)
        assert isinstance(found, str) and reason in found, (reason, found)
    # restart markers and stuffed bytes are entropy-coded data, not stray markers
    assert not isinstance(check_stored_jpeg(_jpeg(_gray(33), IMWRITE_JPEG_RST_INTERVAL=1)), str)


def test_header_sizes_are_pillows(tmp_path):
    from PIL import Image
    import io
    for shape in ((30, 40), (1, 7), (300, 17)):
        img = _gray(40, shape)
        for data in (_jpeg(img), cv2.imencode(".png", img)[1].tobytes(),
                     _jpeg(img, IMWRITE_JPEG_PROGRESSIVE=1), _jpeg(np.dstack([img] * 3))):
            assert header_size(data) == Image.open(io.BytesIO(data)).size == shape[::-1]
    assert header_size(b"GIF89a" + bytes(20)) is None   # other formats: Pillow's answer
