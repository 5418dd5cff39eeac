"""The one mapping between a source frame's pixels and a stored frame's pixels.

``sonostream build`` stores a frame *letterboxed*: resized so that its longer side is the image
size, each axis by its own ratio after rounding (``sx = out_w / src_w``, ``sy = out_h / src_h``),
then centred on a black square (``pad_x``, ``pad_y``). With pixel centres at integer coordinates
((0, 0) is the centre of the top-left pixel), OpenCV's resize (half-pixel centres, for
INTER_AREA and INTER_LINEAR alike) maps a point as

    x_stored = (x_source + 0.5) * sx - 0.5 + pad_x
    y_stored = (y_source + 0.5) * sy - 0.5 + pad_y

and an ellipse through the linear part ``diag(sx, sy)`` (axes and angle change a little when
``sx != sy``, which rounding makes happen on non-square frames). Everything that moves a label
or a measurement between the two frames goes through :class:`Letterbox`: ``build`` (source
labels -> the index), evaluation (stored predictions -> HC18 rows in source millimetres) and
inference on frames of another size. The stored pixel size is the source's divided by the
nominal ``scale = size / max(src_h, src_w)`` (the ratio of the longer axis, exact on it).

Pure Python (no numpy, no OpenCV): the pixel work is ``preprocessing.imaging.letterbox``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SonostreamError


@dataclass(frozen=True)
class Letterbox:
    """How one source frame of ``src_h x src_w`` became a stored frame."""

    size: int   # stored height == width; 0: stored at the source size (identity)
    src_h: int
    src_w: int
    out_h: int  # height and width of the resized frame before padding
    out_w: int
    pad_x: int
    pad_y: int

    @classmethod
    def fit(cls, src_h: int, src_w: int, size: int) -> "Letterbox":
        """The letterbox ``build --image-size size`` applies to a ``src_h x src_w`` frame."""
        if src_h < 1 or src_w < 1:
            raise SonostreamError(f"a frame must be at least 1x1 pixels, got {src_w}x{src_h}")
        if size <= 0:
            return cls(0, src_h, src_w, src_h, src_w, 0, 0)
        scale = size / max(src_h, src_w)
        out_h = min(size, max(1, round(src_h * scale)))
        out_w = min(size, max(1, round(src_w * scale)))
        return cls(size, src_h, src_w, out_h, out_w, (size - out_w) // 2, (size - out_h) // 2)

    @classmethod
    def of_stored(cls, src_h: int, src_w: int, height: int, width: int) -> "Letterbox":
        """The letterbox that turned a ``src_h x src_w`` frame into the stored ``height x width``
        one (an index row's ``src_height, src_width, height, width``)."""
        if (height, width) == (src_h, src_w):
            return cls.fit(src_h, src_w, 0)
        if height != width:
            raise SonostreamError(f"a stored frame of {width}x{height} from a {src_w}x{src_h} "
                                  "source is not a letterbox (resized frames are square)")
        return cls.fit(src_h, src_w, height)

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def identity(self) -> bool:
        return (self.out_h, self.out_w, self.pad_x, self.pad_y) == (self.src_h, self.src_w, 0, 0)

    @property
    def height(self) -> int:
        return self.size or self.src_h

    @property
    def width(self) -> int:
        return self.size or self.src_w

    @property
    def scale(self) -> float:
        """Nominal scale (the longer axis' ratio): the index's ``scale`` column."""
        return self.size / max(self.src_h, self.src_w) if self.size else 1.0

    @property
    def sx(self) -> float:
        return self.out_w / self.src_w

    @property
    def sy(self) -> float:
        return self.out_h / self.src_h

    # -- points --------------------------------------------------------------------------------
    def to_stored(self, x: float, y: float) -> tuple[float, float]:
        """A source pixel position (x = column, y = row) in stored pixels."""
        return (x + 0.5) * self.sx - 0.5 + self.pad_x, (y + 0.5) * self.sy - 0.5 + self.pad_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """A stored pixel position in source pixels (the exact inverse of ``to_stored``)."""
        return (x - self.pad_x + 0.5) / self.sx - 0.5, (y - self.pad_y + 0.5) / self.sy - 0.5

    # -- ellipses (cx, cy, a, b, angle): a >= b semi-axes, angle of a from +x towards +y ---------
    def ellipse_to_stored(self, cx, cy, a, b, angle) -> tuple[float, float, float, float, float]:
        return (*self.to_stored(cx, cy), *_scaled_ellipse(a, b, angle, self.sx, self.sy))

    def ellipse_to_source(self, cx, cy, a, b, angle) -> tuple[float, float, float, float, float]:
        return (*self.to_source(cx, cy), *_scaled_ellipse(a, b, angle, 1 / self.sx, 1 / self.sy))

    # -- pixel sizes (mm per pixel) ------------------------------------------------------------
    def stored_pixel_size(self, source_mm: float) -> float:
        return source_mm / self.scale

    def source_pixel_size(self, stored_mm: float) -> float:
        return stored_mm * self.scale


def _scaled_ellipse(a: float, b: float, angle: float, kx: float, ky: float):
    """(a', b', angle') of the ellipse with semi-axes a, b at ``angle`` after x *= kx, y *= ky.

    The ellipse is ``R(angle) diag(a, b)`` applied to the unit circle; after scaling it is
    ``M = diag(kx, ky) R diag(a, b)``, whose singular values are the new semi-axes and whose
    first left singular vector is the new a axis. Closed form for 2x2 (no numpy here).
    """
    c, s = math.cos(angle), math.sin(angle)
    m00, m01, m10, m11 = kx * c * a, -kx * s * b, ky * s * a, ky * c * b
    # M M^T = [[p, q], [q, r]]: its eigenvalues are the squared semi-axes.
    p, q, r = m00 * m00 + m01 * m01, m00 * m10 + m01 * m11, m10 * m10 + m11 * m11
    mean, half = (p + r) / 2, math.hypot((p - r) / 2, q)
    big, small = mean + half, max(mean - half, 0.0)
    theta = 0.5 * math.atan2(2 * q, p - r) if half > 0 else angle
    return math.sqrt(big), math.sqrt(small), theta % math.pi
