"""One bad row never stops a build: huge headers, FIFOs, devices, folders and corrupt files are
rejected with their reason, every other row builds, and index + rejects = CSV rows."""
import csv
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factories import write_frames
from preprocessing import format as fmt

HANG_LIMIT_S = 300  # generous: a hang fails the test instead of blocking the suite
MEMORY_LIMIT = 3 * 2**30  # address space of the build: reading /dev/zero must not eat the host


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (8-bit gray) with a few bytes of IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def tga_header_only(width: int, height: int) -> bytes:
    """An uncompressed 8-bit grayscale TGA header (no pixels follow)."""
    return struct.pack("<BBBHHBHHHHBB", 0, 0, 3, 0, 0, 0, 0, 0, width, height, 8, 0)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _build(csv_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    code = "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [sys.executable, "-c", code, "build", "--csv", str(csv_path), "--out", str(out),
            "--image-size", "32", "--quiet", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(args, capture_output=True, text=True, timeout=HANG_LIMIT_S, env=env,
                          preexec_fn=_limit_memory)


def _outcome(out: Path, csv_path: Path):
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    index = pq.read_table(out / fmt.INDEX_FILE).to_pylist()
    with open(out / fmt.REJECTS_FILE, newline="") as f:
        rejects = {int(r["csv_line"]): r for r in csv.DictReader(f)}
    assert len(index) + len(rejects) == len(rows)
    return rows, index, rejects


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and /dev/zero (POSIX)")
def test_bad_rows_are_rejected_and_the_rest_builds(tmp_path):
    root = tmp_path / "src"
    good = write_frames(root, patients=2, videos=1, frames=3, shape=(32, 32), labels=False)
    with open(good, newline="") as f:
        header = next(csv.reader(f))
    (root / "bad").mkdir()
    (root / "bad" / "bomb.png").write_bytes(png_header_only(60000, 60000))
    (root / "bad" / "bomb.tga").write_bytes(tga_header_only(14000, 14000))
    (root / "bad" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    os.mkfifo(root / "bad" / "pipe.png")
    (root / "bad" / "folder.png").mkdir()
    bad = {  # frame_path (or mask_path) -> words its reason must hold
        "bad/bomb.png": "60000x60000 (3,600,000,000 pixels), over the limit of 50,000,000",
        "bad/bomb.tga": "14000x14000 (196,000,000 pixels), over the limit",
        "bad/corrupt.png": "not a readable image",
        "bad/pipe.png": "is a FIFO (named pipe), not a regular file",
        "/dev/zero": "/dev/zero is a device, not a regular file",
        "bad/folder.png": "is a folder, not a regular file",
    }
    lines = good.read_text().splitlines()
    good_frame, good_mask = lines[1].split(",")[0], lines[1].split(",")[header.index("mask_path")]
    for i, path in enumerate(bad):
        lines.append(",".join({"frame_path": path, "patient_id": "900", "video_name": "v",
                               "frame_id": str(i), "mask_path": good_mask}.get(c, "")
                              for c in header))
    lines.append(",".join({"frame_path": good_frame, "patient_id": "901", "video_name": "v",
                           "frame_id": "0", "mask_path": "bad/pipe.png"}.get(c, "")
                          for c in header))  # a FIFO as a mask
    csv_path = root / "frames.csv"
    csv_path.write_text("\n".join(lines) + "\n")

    run = _build(csv_path, tmp_path / "ds", "--workers", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    rows, index, rejects = _outcome(tmp_path / "ds", csv_path)
    assert len(index) == 6  # every good row
    by_path = {r["frame_path"]: r["reason"] for r in rejects.values()}
    for path, words in bad.items():
        assert words in by_path[path], (path, by_path.get(path))
    assert "mask" in rejects[len(rows) + 1]["reason"]
    assert "FIFO" in rejects[len(rows) + 1]["reason"]
    assert all("object at 0x" not in r["reason"] for r in rejects.values())


def test_max_pixels_is_a_build_option(tmp_path):
    root = tmp_path / "src"
    good = write_frames(root, patients=2, videos=1, frames=2, shape=(32, 40), masks=False,
                        labels=False)
    run = _build(good, tmp_path / "ds", "--workers", "1", "--max-pixels", str(32 * 40 - 1))
    assert run.returncode == 1  # nothing built: every frame is over the limit
    rows, index, rejects = _outcome(tmp_path / "ds", good)
    assert index == [] and len(rejects) == 4
    assert all("40x32 (1,280 pixels), over the limit of 1,279 pixels" in r["reason"]
               for r in rejects.values())
    run = _build(good, tmp_path / "ok", "--workers", "1", "--max-pixels", str(32 * 40))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(_outcome(tmp_path / "ok", good)[1]) == 4


def test_build_warns_about_a_misspelled_optional_column(tmp_path, capsys):
    from pipeline.cli import main
    from preprocessing.build import BuildOptions, build
    src = write_frames(tmp_path / "src", patients=1, videos=1, frames=2, shape=(32, 32),
                       masks=False, labels=False)
    lines = src.read_text().splitlines()
    src.write_text("\n".join([lines[0] + ",pixel_size"] + [r + ",0.2" for r in lines[1:]]) + "\n")
    warning = (f"{src}: column 'pixel_size' is not a known column; did you mean "
               "'pixel_size_mm'? It is carried as text")
    result = build(str(src), str(tmp_path / "ds"), BuildOptions(image_size=32), progress=False)
    assert len(result.warnings) == 1 and result.warnings[0].startswith(warning)
    again = build(str(src), str(tmp_path / "ds"), BuildOptions(image_size=32), progress=False)
    assert again.up_to_date and again.warnings == result.warnings
    assert main(["build", "--csv", str(src), "--out", str(tmp_path / "cli"), "--image-size",
                 "32", "--quiet", "--workers", "1"]) == 0
    assert f"warning: {warning}" in capsys.readouterr().err
    index = pq.read_table(tmp_path / "ds" / fmt.INDEX_FILE)
    assert index["pixel_size"].to_pylist() == ["0.2", "0.2"]  # still carried as text
