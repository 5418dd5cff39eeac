"""Render one B-mode frame (uint8 HxW grayscale) and its head mask from the sweep geometry.

The image is formed where ultrasound forms it: in beam space, an (n_r, n_t) grid of samples along
n_t beams fanning out from the apex. Echogenicity is evaluated at each sample's (x, y); each beam
is attenuated by what it has crossed (a cumulative sum along r gives shadows behind bone and
enhancement behind fluid for free); the result is multiplied by Rayleigh speckle, log-compressed
to 8 bits, and one cv2.remap scan-converts the beams into the fan. Outside the fan the frame is 0.
"""
from __future__ import annotations

import math
from collections import namedtuple
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np

from preprocessing.synth.anatomy import TAG_NOISE, Frame, Video, fan_geometry, frame_labels, rng_for

# Echogenicity: relative amplitude reflectivity, maternal soft tissue ~ 1.
FLUID, BRAIN, CSF, SCALP, LIVER, LIMB, FAT = 0.04, 0.3, 0.07, 0.6, 0.5, 0.6, 0.42
# Display: log compression, TOP_DB maps to 255 and TOP_DB - RANGE_DB to 0 (a 48 dB window).
TOP_DB, RANGE_DB = 26.0, 48.0
# Tissue attenuation over the full depth (nepers, round trip) before time-gain compensation;
# TGC removes all but the patient's residual, so tissue darkens with depth but never goes black.
TISSUE_NP = 1.6


#: Beam space of one frame size. x, y: (n_r, n_t) float32 image position of each sample;
#: beam_x, beam_y, theta: (1, n_t) beam direction and angle (rad); depth: (n_r, 1) px below the
#: probe face; map_x, map_y: cv2.remap maps (fixed point) from pixels to beam/sample indices;
#: fan_mask: (H, W) uint8, 255 inside the sector and 0 outside.
Grid = namedtuple("Grid", "fan x y beam_x beam_y theta depth map_x map_y fan_mask")


@lru_cache(maxsize=8)
def grid(size: int) -> Grid:
    fan = fan_geometry(size)
    # ~1 sample per pixel along the beam; across it ~1.7 px between beams at the far field
    # (lateral resolution is worse than axial anyway, and it keeps a frame cheap).
    n_r, n_t = int(round(0.8 * size)), int(round(0.6 * size))
    r = np.linspace(fan.r0, fan.r1, n_r, dtype=np.float32)[:, None]
    th = np.linspace(-fan.half_angle, fan.half_angle, n_t, dtype=np.float32)[None, :]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - fan.apex_x, yy - fan.apex_y
    pr, pt = np.hypot(dx, dy), np.arctan2(dx, dy)
    inside = (pr >= fan.r0) & (pr <= fan.r1) & (np.abs(pt) <= fan.half_angle)
    map_y = ((pr - fan.r0) / fan.depth_px * (n_r - 1)).astype(np.float32)
    map_x = ((pt + fan.half_angle) / (2 * fan.half_angle) * (n_t - 1)).astype(np.float32)
    map_x, map_y = cv2.convertMaps(map_x, map_y, cv2.CV_16SC2)  # fixed point: 2x faster remap
    return Grid(fan, fan.apex_x + r * np.sin(th), fan.apex_y + r * np.cos(th), np.sin(th),
                np.cos(th), th, r - fan.r0, map_x, map_y, inside.astype(np.uint8) * 255)


class Speckle:
    """Temporally correlated Rayleigh speckle in beam space, (n_r, n_t) float32, mean 1.

    A complex white field evolves as AR(1), x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t: consecutive
    frames share most of their speckle, distant ones decorrelate. Blurring it with an anisotropic
    Gaussian (the point-spread function, longer across the beam than along it) and taking the
    magnitude gives Rayleigh amplitude with the patient's correlation lengths. Fresh normals per
    frame would dominate the cost, so e_t are random windows of one white-noise bank per video
    (windows at different offsets are uncorrelated, which is all the AR(1) needs)."""

    def __init__(self, rng: np.random.Generator, shape: tuple, sigma_axial: float,
                 sigma_lateral: float, rho: float = 0.8):
        self.rng, self.shape, self.rho = rng, shape, rho
        self.sig = (sigma_lateral, sigma_axial)  # (x = across beams, y = along the beam)
        self.ksize = tuple(2 * math.ceil(3 * s) + 1 for s in self.sig)
        kx, ky = (cv2.getGaussianKernel(k, s) for k, s in zip(self.ksize, self.sig))
        # Std of one blurred component -> Rayleigh mean = std * sqrt(pi / 2); divide it out.
        std = math.sqrt(float((kx**2).sum() * (ky**2).sum()))
        self.norm = np.float32(1.0 / (std * math.sqrt(math.pi / 2)))
        self.bank = rng.standard_normal((2, 2 * shape[0], 2 * shape[1]), dtype=np.float32)
        self.state = self._window().copy()

    def _window(self) -> np.ndarray:
        (i, j), (n, m) = self.rng.integers(0, self.shape), self.shape
        return self.bank[:, i:i + n, j:j + m]

    def next(self) -> np.ndarray:
        """The next frame's (n_r, n_t) float32 amplitude."""
        self.state *= np.float32(self.rho)
        self.state += np.float32(math.sqrt(1 - self.rho**2)) * self._window()
        re, im = (cv2.GaussianBlur(c, self.ksize, self.sig[0], sigmaY=self.sig[1])
                  for c in self.state)
        return cv2.magnitude(re, im) * self.norm


def _roi(g: Grid, cx: float, cy: float, radius: float) -> tuple:
    """Beam-space slices covering the disc (cx, cy, radius): structures are drawn only there."""
    f, (n_r, n_t) = g.fan, g.x.shape
    rc, tc = math.hypot(cx - f.apex_x, cy - f.apex_y), math.atan2(cx - f.apex_x, cy - f.apex_y)
    dt = math.asin(min(1.0, radius / max(rc, 1e-6)))
    i = np.array([rc - radius - f.r0, rc + radius - f.r0]) / f.depth_px * (n_r - 1)
    j = (np.array([tc - dt, tc + dt]) + f.half_angle) / (2 * f.half_angle) * (n_t - 1)
    i, j = np.clip([i[0], i[1] + 2], 0, n_r), np.clip([j[0], j[1] + 2], 0, n_t)
    return slice(int(i[0]), int(i[1])), slice(int(j[0]), int(j[1]))


def _local(g: Grid, roi, cx: float, cy: float, angle: float):
    """Coordinates of the ROI's samples in a structure's frame: u along its axis, w across."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = g.x[roi] - cx, g.y[roi] - cy
    return dx * c + dy * s, dy * c - dx * s


def _ellipse(u, w, a, b):
    """Signed distance (px, < 0 inside) to (u/a)^2 + (w/b)^2 = 1, first order, and unit normal."""
    q = (u / a) ** 2 + (w / b) ** 2
    gu, gw = u / (a * a), w / (b * b)
    gn = np.sqrt(gu * gu + gw * gw) + 1e-6
    return (q - 1.0) / (2 * gn), gu / gn, gw / gn


def _band(d, centre, half_width):
    """Smooth bump (peak 1) of a layer centred at ``centre`` px, about ``half_width`` px wide."""
    x = (d - centre) / half_width
    return cv2.exp(-(x * x).astype(np.float32))


def _facing(g: Grid, roi, nu, nw, angle: float):
    """|cos(normal, beam)|: specular echoes are brightest where the beam meets a surface head-on."""
    c, s = math.cos(angle), math.sin(angle)
    return np.abs((nu * c - nw * s) * g.beam_x[:, roi[1]] + (nu * s + nw * c) * g.beam_y[:, roi[1]])


def _head(g, v, f, echo, spec, alpha):
    pix, a, b = v.pixel_size_mm, f.a_px, f.b_px
    roi = _roi(g, f.cx, f.cy, a + 6.0 / pix)
    u, w = _local(g, roi, f.cx, f.cy, f.angle)
    d, nu, nw = _ellipse(u, w, a, b)
    un, wn = u / a, w / b
    sec = max(f.section, 0.3)
    t = min(v.patient.skull_mm / pix / sec, 0.35 * b)  # an oblique cut through the shell is thicker
    e, sp, al = echo[roi], spec[roi], alpha[roi]
    e[(d > 0) & (d < 3.0 / pix)] = SCALP
    e[d <= 0] = CSF  # a rim of CSF under the skull, then brain
    e[d < -t - 1.5 / pix] = BRAIN
    al[d <= 0] *= 0.5
    # Falx: a ragged, beaded mid-line echo (specular: brightest when the beam is across it).
    k = float(np.clip(1.0 - abs(f.zn) / 0.5, 0.0, 1.0))  # mid-line anatomy fades off-centre
    falx = _band(w, 0.0, 1.1 / pix) * (np.abs(un) < 0.85) * (0.6 + 0.4 * np.cos(un * 23.0) ** 2)
    sp += falx * (0.3 + 0.7 * _facing(g, roi, 0.0, 1.0, f.angle)) * (1.0 + 0.8 * k)
    skull = _band(d, -0.45 * t, 0.45 * t)
    sp += skull * (9.0 * (0.2 + 0.8 * _facing(g, roi, nu, nw, f.angle) ** 2) * sec)
    al += skull * (0.45 / max(t, 1.0))  # ~0.45 Np per crossing of the skull: shadow behind it
    if k <= 0:
        return
    # Near the centre (all well inside the brain, so only that part of the ROI is visited):
    inner = _roi(g, f.cx, f.cy, 0.7 * a)
    u, w = _local(g, inner, f.cx, f.cy, f.angle)
    un, wn, e = u / a, w / b, echo[inner]
    for side in (-1.0, 1.0):
        th = ((un + 0.05) / 0.19) ** 2 + ((wn - side * 0.16) / 0.14) ** 2  # thalami
        e[th < k] = BRAIN * 0.45
        e[np.abs(th - 0.92 * k) < 0.08 * k] = BRAIN * 1.6
        insula = np.abs(wn - side * (0.58 - 0.35 * un**2)) < 0.02  # Sylvian fissure
        e[insula & (np.abs(un + 0.05) < 0.28 * k)] = 0.9
    if k > 0.3:  # cavum septi pellucidi: an anechoic box with bright walls, breaking the falx
        box = ((un - 0.36) / 0.1) ** 4 + (wn / 0.075) ** 4
        e[box < 1.6] = 0.8
        e[box < 1] = CSF
        spec[inner][box < 1] = 0.0


def _abdomen(g, v, f, echo, spec, alpha):
    pix, zn, a, b = v.pixel_size_mm, f.zn, f.a_px, f.b_px
    roi = _roi(g, f.cx, f.cy, a + 4.0 / pix)
    u, w = _local(g, roi, f.cx, f.cy, f.angle)
    d, nu, nw = _ellipse(u, w, a, b)
    un, wn = u / a, w / b
    e, sp, al = echo[roi], spec[roi], alpha[roi]
    inside = d <= 0
    e[inside] = (LIVER * (1.0 + 0.15 * (un < -0.1)))[inside]  # liver in front, bowel behind
    e[inside & (d > -2.5 / pix)] = 0.8  # the wall: a faint outline, nothing like a skull
    facing = _facing(g, roi, nu, nw, f.angle)
    sp += _band(d, -1.0 / pix, 1.0 / pix) * 0.6 * (0.3 + 0.7 * facing**2)
    st = math.sqrt(max(0.0, 1 - ((zn - 0.2) / 0.7) ** 2))  # the stomach bubble comes and goes
    if st > 0:
        e[((un - 0.15) / (0.24 * st)) ** 2 + ((wn - 0.36) / (0.15 * st)) ** 2 < 1] = FLUID * 1.5
    uv = math.sqrt(max(0.0, 1 - ((zn + 0.3) / 0.5) ** 2))  # umbilical vein / portal sinus
    if uv > 0:
        tube = np.abs(wn - 0.1 + 0.35 * (un - 0.3) ** 2) < 0.035 * uv
        e[tube & (np.abs(un - 0.375) < 0.325)] = 0.08
    psi = np.arctan2(wn, un)  # ribs: short bright arcs on both flanks, with shadows
    rib = (np.abs(np.abs(psi) - 1.95) < 0.22) & (d < -0.5 / pix) & (d > -3.0 / pix)
    sp[rib] += 2.5
    al[rib] += 0.14 * pix
    r = 2.2 / pix  # spine: three ossification centres near the back, with their shadow
    for cu, cw, gain in ((-0.7, 0.0, 1.0), (-0.84, -0.13, 0.8), (-0.84, 0.13, 0.8)):
        dot = cv2.exp((-(((un - cu) * a) ** 2 + ((wn - cw) * b) ** 2) / (r * r)).astype(np.float32))
        sp += dot * 18.0 * gain  # bright enough to survive its own attenuation
        al += dot * (0.8 / r)


def _femur(g, v, f, echo, spec, alpha):
    pix, zn, half = v.pixel_size_mm, f.zn, 0.5 * v.patient.fl_mm / v.pixel_size_mm
    roi = _roi(g, f.cx, f.cy, 1.35 * half)
    u, w = _local(g, roi, f.cx, f.cy, f.angle)
    e, sp, al = echo[roi], spec[roi], alpha[roi]
    ts = math.sqrt(max(0.0, 1 - (zn / 2.5) ** 2))  # the thigh is wider than the bone
    if ts > 0:
        # The bone lies in the upper part of the thigh, so its shadow falls on the thigh.
        thigh = (u / (1.2 * half * ts)) ** 2 + ((w - 0.08 * half) / (0.45 * half * ts)) ** 2 < 1
        e[thigh] = LIMB * (1 + 0.2 * np.sin(w[thigh] * (2 * math.pi * pix / 2.5)))  # muscle
        end = 1.0 if v.knee > 0 else -1.0  # the lower leg hangs down from the knee
        bend = f.angle + abs(v.knee) if end > 0 else f.angle + math.pi - abs(v.knee)
        kx = f.cx + end * 1.1 * half * math.cos(f.angle) + 0.75 * half * math.cos(bend)
        ky = f.cy + end * 1.1 * half * math.sin(f.angle) + 0.75 * half * math.sin(bend)
        leg = _roi(g, kx, ky, half)
        lu, lw = _local(g, leg, kx, ky, bend)
        echo[leg][(lu / (0.8 * half * ts)) ** 2 + (lw / (0.26 * half * ts)) ** 2 < 1] = LIMB * 0.9
    if f.a_px > 0:
        centre = 0.06 * half * (1 - (u / half) ** 2)  # the shaft is slightly bowed
        width = f.b_px * (1 + 0.8 * np.clip(np.abs(u) / half, 0, 1) ** 8)  # metaphyses flare
        along = np.clip(1.2 - np.abs(u) / f.a_px, 0, 1) ** 0.5  # the ends fade out of plane
        sp += _band(w - centre, 0.0, width) * along * 10.0 * f.section**0.5 * (
            0.3 + 0.7 * _facing(g, roi, 0.0, 1.0, f.angle) ** 2)
        # Shadow from the bone's far side (+w points away from the probe for a near-horizontal
        # femur), so the bright near surface is not dimmed by the bone itself.
        al += _band(w - centre, 1.2 * width, width) * along * (1.5 / max(f.b_px, 1.0))


def _blobs(g, v, f, echo, spec):
    """Out-of-plane fetal parts (limbs, cord, body) drifting through the fluid with the fetus."""
    for bx, by, rx, ry, zc, zw in v.blobs:
        s = 1 - ((f.zn - zc) / zw) ** 2
        if s > 0.05:
            s, cx, cy = math.sqrt(s), bx + f.cx - v.frames[0].cx, by + f.cy - v.frames[0].cy
            roi = _roi(g, cx, cy, rx * s + 3)
            d, _, _ = _ellipse(*_local(g, roi, cx, cy, f.angle), rx * s, ry * s)
            if d.size == 0:
                continue  # outside the fan (a hard cohort's fetus moved towards its edge)
            echo[roi][d < 0] = LIMB * 0.9
            spec[roi] += _band(d, -1.0, 1.2) * 0.5


class Scene:
    """The mother in beam space for one video, computed once: layers under the probe face (skin,
    fat with fibrous septa, striated muscle), deep tissue with coarse heterogeneity, and the
    amniotic cavity with the uterine wall and placenta around it."""

    def __init__(self, g: Grid, v: Video, rng: np.random.Generator):
        p, pix, (n_r, n_t) = v.patient, v.pixel_size_mm, g.x.shape
        dmm = g.depth * pix + np.float32(v.wiggle[0]) * np.sin(v.wiggle[1] * g.theta + v.wiggle[2])
        skin, fat, muscle, myo, _ = v.anterior_mm
        layer = np.searchsorted(np.array([skin, fat, muscle]), dmm)
        echo = np.array([1.4, FAT, 0.85, 0.85], np.float32)[layer] * np.float32(p.tissue_level)
        echo *= np.where(layer == 2, 1 + 0.25 * np.sin(dmm * 2.5), 1.0).astype(np.float32)
        # Heterogeneity: coarse lumps in the deep tissue (bowel, vessels), finer everywhere.
        lump = cv2.resize(rng.normal(0, 0.3, (9, 7)).astype(np.float32), (n_t, n_r),
                          interpolation=cv2.INTER_CUBIC) * (layer == 3)
        fine = cv2.resize(rng.normal(0, 0.18, (n_r // 6, n_t // 8)).astype(np.float32), (n_t, n_r),
                          interpolation=cv2.INTER_CUBIC)
        echo *= np.exp(lump + fine)
        spec = _band(dmm, fat, 0.6) + _band(dmm, muscle, 0.8) * 0.7  # fascia
        for depth_frac, slope in v.septa:
            spec += 0.6 * _band(dmm, skin + depth_frac * (fat - skin) + slope * g.theta * 40, 0.5)
        # Amniotic cavity: r_cav < 1 inside; just outside it the uterine wall, and the placenta
        # on the side towards (anterior) or away from (posterior) the probe.
        cx, cy, rx, ry, *bumps = v.cavity
        dx, dy = g.x - cx, g.y - cy
        phi = np.arctan2(dy / ry, dx / rx)
        grow = 1 + sum(bumps[i] * (1 + np.cos((i // 2 + 2) * phi + bumps[i + 1])) / 2
                       for i in range(0, len(bumps), 2))
        self.r_cav = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) / grow
        self.deep = dmm > muscle + 1.0  # nothing uterine rises into the abdominal wall
        echo[(self.r_cav < 1 + (myo - muscle) / pix / ry) & self.deep] = 0.7 * p.tissue_level
        side = -dy if p.placenta == "anterior" else dy
        placenta = (self.r_cav < 1 + p.placenta_mm / pix / ry) & (side > 0.35 * np.abs(dx))
        echo[placenta & self.deep] = p.tissue_level
        self.echo, self.spec = echo.astype(np.float32), (spec * p.tissue_level).astype(np.float32)
        self.alpha = np.full((n_r, n_t), TISSUE_NP / n_r, np.float32)
        self.tgc = np.exp((TISSUE_NP - p.attenuation) * g.depth / g.fan.depth_px).astype(np.float32)
        self.clutter = (p.haze * np.exp(-g.depth / (0.3 * n_r))).astype(np.float32)
        # Overall gain; beams near the fan's edges a little weaker (element directivity).
        self.gain = (p.gain * (1 - 0.35 * (g.theta / g.fan.half_angle) ** 4)).astype(np.float32)

    def frame(self, f: Frame):
        """Fresh (echo, spec, alpha) with this frame's fluid (the cavity narrows off-centre)."""
        fluid = (self.r_cav < 1 - 0.08 * min(f.zn * f.zn, 1.0)) & self.deep
        echo, alpha = self.echo.copy(), self.alpha.copy()
        echo[fluid] = FLUID
        alpha[fluid] *= 0.1
        return echo, self.spec.copy(), alpha


def amplitude(v: Video, f: Frame, scene: Scene, speckle: np.ndarray) -> np.ndarray:
    """(n_r, n_t) float32 echo amplitude in beam space (before log compression)."""
    g = grid(v.size)
    echo, spec, alpha = scene.frame(f)
    if f.has_head:
        _head(g, v, f, echo, spec, alpha)
    elif f.plane != "head":
        (_abdomen if f.plane == "abdomen" else _femur)(g, v, f, echo, spec, alpha)
    _blobs(g, v, f, echo, spec)
    # Exclusive sum: a reflector is dimmed by what lies in front of it, not by itself.
    through = cv2.exp(alpha - np.cumsum(alpha, axis=0)) * scene.tgc
    amp = (echo * speckle + spec * (0.6 + 0.4 * speckle)) * through
    amp += scene.clutter * speckle[::-1]  # reverberation haze, strongest near the probe
    return amp * scene.gain


def to_frame(amp: np.ndarray, size: int) -> np.ndarray:
    """Log-compress to 8 bits and scan-convert to the (size, size) fan; exactly 0 outside it."""
    g = grid(size)
    gray = cv2.log(amp + np.float32(1e-4)) * np.float32(20 / math.log(10) * 255 / RANGE_DB)
    gray -= np.float32((TOP_DB - RANGE_DB) * 255 / RANGE_DB)
    polar = np.clip(gray, 0, 255, out=gray).astype(np.uint8)
    out = cv2.remap(polar, g.map_x, g.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return cv2.bitwise_and(out, g.fan_mask)  # exactly 0 outside the sector


def head_mask(size: int, labels: dict) -> np.ndarray:
    """(size, size) uint8, 255 at pixel centres inside the labelled (rounded) ellipse, else 0."""
    mask = np.zeros((size, size), np.uint8)
    if labels["ellipse_a"] is None:
        return mask
    cx, cy, a, b, ang = (labels["ellipse_" + k] for k in ("cx", "cy", "a", "b", "angle"))
    x0, x1, y0, y1 = (int(np.clip(c, 0, size)) for c in (cx - a - 1, cx + a + 2, cy - a - 1,
                                                          cy + a + 2))
    yy, xx = np.mgrid[y0:y1, x0:x1]
    c, s = math.cos(ang), math.sin(ang)
    u, w = (xx - cx) * c + (yy - cy) * s, (yy - cy) * c - (xx - cx) * s
    mask[y0:y1, x0:x1] = np.where((u / a) ** 2 + (w / b) ** 2 <= 1.0, 255, 0)
    return mask


def render_video(seed: int, v: Video) -> Iterator[tuple[Frame, np.ndarray, np.ndarray, dict]]:
    """Yields (frame geometry, B-mode frame, head mask, labels) for every frame, in order."""
    g = grid(v.size)
    rng = rng_for(seed, TAG_NOISE, v.patient.index, v.index)
    scene = Scene(g, v, rng)
    speckle = Speckle(rng, g.x.shape, v.patient.speckle_axial, v.patient.speckle_lateral)
    for f in v.frames:
        labels = frame_labels(f, v.pixel_size_mm, f.index == v.standard_index)
        frame = to_frame(amplitude(v, f, scene, speckle.next()), v.size)
        yield f, frame, head_mask(v.size, labels), labels
