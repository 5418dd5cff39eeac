"""Image headers read without a decoder: PNG IHDR, and a JPEG's marker structure.

``header_size`` gives (width, height) for the ``--max-pixels`` check before any pixel is
decoded (a struct read; Pillow's ``Image.open``, the fallback for other formats, costs as much
as a tenth of decoding a 256x256 frame).

``check_stored_jpeg`` is the build's cheap check of a source that is already an 8-bit gray JPEG
of the stored size, whose bytes the build stores as they are (``encode.encode_frame``). It
walks every marker segment from SOI to the scan and checks, without decoding a pixel:

* SOI first; every segment's length inside the file; a frame header SOF0 (baseline) or SOF1
  (extended sequential, Huffman), 8-bit samples, one component, height and width in 1..65500
  (no DNL), sampling factors 1..4;
  exactly one scan, of that component, with Ss=0, Se=63, Ah=Al=0 (sequential);
* the quantisation table of the component and the scan's DC and AC Huffman tables defined
  before the scan; each Huffman table's code lengths fit (the check libjpeg makes when it
  builds the table) and DC symbols are <= 15; quantisation tables 8- or 16-bit with no zero;
* in the entropy-coded data, every 0xFF byte is followed by 0x00 (a stuffed byte), a restart
  marker RST0-7 or a fill byte 0xFF: no other marker (a second image, a cut-and-pasted file);
* the file ends with EOI (FFD9) and nothing after it: a truncated file fails here.

What it cannot see is a wrong Huffman code or coefficient inside the entropy-coded data;
libjpeg does not refuse those either (it warns and decodes a damaged picture, and the full
decode stores such a file as it is too). Anything the check does not accept as above (a colour,
12-bit, progressive, arithmetic-coded or lossless JPEG, bytes after EOI, a size that is not
the stored one) is not an error: the build decodes that frame fully, as it does for every
other source.
"""
from __future__ import annotations

import re
import struct

_SOF_ACCEPTED = (0xC0, 0xC1)          # baseline, extended sequential (Huffman)
_SOF_ANY = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))   # TEM, RST0-7: no length follows
_U16 = struct.Struct(">H")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG (IHDR) or JPEG (its first SOF) from the header; None for any
    other format or a header this does not parse (the caller asks Pillow)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack_from(">II", data, 16)
    if data[:3] == b"\xff\xd8\xff":
        return _jpeg_sof(data)
    return None


def _jpeg_sof(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:              # fill byte before a marker
            i += 1
            continue
        if m in _STANDALONE:
            i += 2
            continue
        if m in (0xD8, 0xD9, 0xDA):
            return None
        length = _U16.unpack_from(data, i + 2)[0]
        if m in _SOF_ANY:
            if length < 8 or i + 2 + length > n:
                return None
            h, w = struct.unpack_from(">HH", data, i + 5)
            return (w, h) if w and h else None
        i += 2 + length
    return None


class JpegHeader:
    """What ``check_stored_jpeg`` found: the frame's size, and where the scan data starts."""
    __slots__ = ("width", "height", "scan_start")

    def __init__(self, width: int, height: int, scan_start: int):
        self.width, self.height, self.scan_start = width, height, scan_start


def check_stored_jpeg(data: bytes) -> JpegHeader | str:
    """The header of a single-scan 8-bit gray sequential JPEG whose structure is sound (see the
    module docstring for every check), or the reason it is not one (then the build decodes it)."""
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return "no SOI marker"
    if data[-2:] != b"\xff\xd9":
        return "does not end with EOI (truncated, or bytes after the image)"
    i, quant, huff, sof = 2, set(), set(), None
    while True:
        if i + 4 > n - 2:
            return "the header ends before the scan"
        if data[i] != 0xFF:
            return f"no marker at byte {i}"
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD9:
            return f"marker FF{m:02X} before the scan"
        length = _U16.unpack_from(data, i + 2)[0]
        end = i + 2 + length
        if length < 2 or end > n - 2:
            return f"segment FF{m:02X} at byte {i} runs past the end"
        seg = data[i + 4:end]
        if m in _SOF_ANY:
            if sof is not None:
                return "two frame headers"
            if m not in _SOF_ACCEPTED:
                return f"frame type SOF{m - 0xC0} (only baseline/extended sequential are stored as is)"
            if len(seg) != 9 or seg[0] != 8 or seg[5] != 1:
                return "not one 8-bit component"
            h, w = struct.unpack_from(">HH", seg, 1)
            hv, tq = seg[7], seg[8]
            if not (0 < h <= 65500 and 0 < w <= 65500) or not (1 <= hv >> 4 <= 4 and 1 <= hv & 15 <= 4) or tq > 3:
                return "frame header values out of range"
            sof = (w, h, seg[6], tq)
        elif m in (0xDB, 0xC4):
            tables = _tables(m, seg)
            if tables is None:
                return "bad quantisation table" if m == 0xDB else "bad Huffman table"
            (quant if m == 0xDB else huff).update(tables)
        elif m == 0xDA:
            if sof is None:
                return "scan before the frame header"
            if len(seg) != 6 or seg[0] != 1 or seg[1] != sof[2]:
                return "scan is not of the one component"
            td, ta = seg[2] >> 4, seg[2] & 15
            if seg[3] != 0 or seg[4] != 63 or seg[5] != 0:
                return "scan is not sequential"
            if sof[3] not in quant or (0, td) not in huff or (1, ta) not in huff:
                return "a table the scan needs is not defined"
            return _check_scan(data, end, sof)
        elif m in (0xCC, 0xDC):   # DAC (arithmetic coding only), DNL
            return f"marker FF{m:02X}"
        i = end


_TABLE_MEMO: dict[tuple[int, bytes], tuple | None] = {}   # frames of one encoder share tables


def _tables(marker: int, seg: bytes) -> tuple | None:
    """The table ids a DQT or DHT segment defines, or None when one is bad (remembered)."""
    key = (marker, seg)
    if key not in _TABLE_MEMO:
        found: set = set()
        ok = (_read_dqt if marker == 0xDB else _read_dht)(seg, found)
        if len(_TABLE_MEMO) >= 256:
            _TABLE_MEMO.pop(next(iter(_TABLE_MEMO)))
        _TABLE_MEMO[key] = tuple(found) if ok else None
    return _TABLE_MEMO[key]


def _read_dqt(seg: bytes, quant: set) -> bool:
    j = 0
    while j < len(seg):
        pq, tq = seg[j] >> 4, seg[j] & 15
        size = 64 * (pq + 1)
        if pq > 1 or tq > 3 or j + 1 + size > len(seg):
            return False
        table = seg[j + 1:j + 1 + size]
        values = table if pq == 0 else struct.unpack(">64H", table)
        if 0 in values:
            return False
        quant.add(tq)
        j += 1 + size
    return True


def _read_dht(seg: bytes, huff: set) -> bool:
    j = 0
    while j < len(seg):
        if j + 17 > len(seg):
            return False
        tc, th = seg[j] >> 4, seg[j] & 15
        counts = seg[j + 1:j + 17]
        total = sum(counts)
        if tc > 1 or th > 3 or total > 256 or j + 17 + total > len(seg):
            return False
        code = 0
        for length, count in enumerate(counts, 1):   # libjpeg's jpeg_make_d_derived_tbl check
            code += count
            if code >= 1 << length:
                return False
            code <<= 1
        if tc == 0 and any(s > 15 for s in seg[j + 17:j + 17 + total]):
            return False
        huff.add((tc, th))
        j += 17 + total
    return True


def _check_scan(data: bytes, start: int, sof: tuple) -> JpegHeader | str:
    bad = _MARKER_IN_SCAN.search(data, start, len(data) - 2)
    if bad is not None:
        return f"marker FF{bad.group()[1]:02X} inside the scan data at byte {bad.start()}"
    return JpegHeader(sof[0], sof[1], start)


# In entropy-coded data a 0xFF is followed by 0x00 (stuffing), RST0-7 or another 0xFF (fill);
# a 0xFF right before the final EOI is a fill byte too (the search stops before EOI).
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
