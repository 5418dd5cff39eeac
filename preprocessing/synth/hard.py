"""``--difficulty hard``: what makes real scans hard, on top of the standard render.

The labels, masks and CSV are made exactly as for the standard cohort (the mask is the labelled
skull ellipse, also where it leaves the fan or the frame, as annotators draw it); only the
image changes, and (for heads pushed out of the fan) the head's position. Every draw here comes
from its own seed tag (``TAG_HARD``), so the standard cohort's bytes do not move, and the same
seed gives the same bytes.

Per patient, a scanner preset (:class:`Preset`): overall gain, the display's dynamic range and
top, speckle size, lateral resolution (a blur across the beams) and resolution (the frame made
at a fraction of its size, then resized up), an electronic noise floor, and low contrast (the
fluid and the brain pulled towards the tissue, the skull's echo dimmer).
Per video (:class:`HardVideo`): acoustic shadows (wedges of beams dimmed below a depth, behind a
bright reflector: bowel gas, a fetal limb), dropout of the skull's echo over arcs of it, the head
partly outside the fan (the fetus shifted towards the fan's edge) and head look-alikes (bright
rings: bowel loops, the bladder, a limb in section; the abdomen's wall made skull-like).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator

import cv2
import numpy as np

from preprocessing.synth.anatomy import TAG_HARD, TAG_NOISE, Frame, Video, frame_labels, rng_for
from preprocessing.synth.render import (BRAIN, Scene, Speckle, _abdomen, _band, _blobs, _ellipse,
                                        _femur, _head, _local, _roi, grid, head_mask)

DIFFICULTIES = ("standard", "hard")
OUTSIDE_FAN_P = 0.35   # share of head sweeps whose head is pushed partly out of the fan


@dataclass(frozen=True)
class Preset:
    """One patient's scanner settings (the same in each of their videos)."""
    gain: float          # x the patient's overall gain
    range_db: float      # display dynamic range (standard: 48 dB; wider looks flatter)
    top_db: float        # amplitude shown as white (standard: 26 dB)
    speckle: float       # x the speckle correlation lengths (coarser or finer grain)
    lateral_blur: float  # Gaussian sigma across the beams (worse lateral resolution)
    resolution: float    # the frame is made at this fraction of its size, then resized up
    noise: float         # electronic noise floor (Rayleigh amplitude)
    contrast: float      # exponent (< 1) on echogenicity: fluid and brain closer to tissue
    skull: float         # x the skull's (and falx') echo


@dataclass(frozen=True)
class HardVideo:
    preset: Preset
    shadows: tuple   # (theta rad, half width rad, start as a share of depth, transmission, drift)
    dropouts: tuple  # skull arcs: (angle around the head rad, half width rad, what is left)
    decoys: tuple    # rings: (dx, dy px from the structure, a px, b px, angle, wall, fill, zc, zw)
    shift: tuple     # (dx, dy) px the fetus was moved (0, 0: not moved)


def make_preset(seed: int, patient_index: int) -> Preset:
    u = rng_for(seed, TAG_HARD, patient_index, 0).uniform
    return Preset(gain=u(0.55, 1.6), range_db=u(42.0, 70.0), top_db=u(22.0, 32.0),
                  speckle=u(0.8, 1.9), lateral_blur=u(0.0, 2.0), resolution=u(0.5, 1.0),
                  noise=u(0.01, 0.05), contrast=u(0.45, 0.75), skull=u(0.35, 0.8))


def _shifted(v: Video, dx: float, dy: float) -> Video:
    """The video with the fetus, its fluid pocket and the floating parts moved by (dx, dy)."""
    frames = [dataclasses.replace(f, cx=f.cx + dx, cy=f.cy + dy) for f in v.frames]
    cx, cy, *rest = v.cavity
    blobs = tuple((bx + dx, by + dy, *b) for bx, by, *b in v.blobs)
    return dataclasses.replace(v, frames=frames, cavity=(cx + dx, cy + dy, *rest), blobs=blobs)


def plan_hard(seed: int, v: Video) -> tuple[Video, HardVideo]:
    """The hard version of video ``v`` (its frames may move) and what is added to its images."""
    rng = rng_for(seed, TAG_HARD, v.patient.index, v.index, 1)
    u = rng.uniform
    g = grid(v.size)
    fan, f0 = g.fan, v.frames[0]
    # Head partly outside the fan: the centre moved along its arc until it lies `inside` of the
    # head's half-length within the fan's edge (so up to ~40 % of the head is cut off).
    out, side, inside = u() < OUTSIDE_FAN_P, (-1.0, 1.0)[int(rng.integers(2))], u(0.25, 0.7)
    shift = (0.0, 0.0)
    if v.plane == "head" and out:
        rc = math.hypot(f0.cx - fan.apex_x, f0.cy - fan.apex_y)
        a_px = v.patient.head_a_mm / v.pixel_size_mm
        theta = side * max(0.0, fan.half_angle - inside * a_px / rc)
        shift = (fan.apex_x + rc * math.sin(theta) - f0.cx, fan.apex_y + rc * math.cos(theta) - f0.cy)
        v = _shifted(v, *shift)
    shadows = tuple((u(-fan.half_angle, fan.half_angle), u(0.03, 0.12), u(0.12, 0.6), u(0.1, 0.45),
                     u(-0.004, 0.004)) for _ in range(int(rng.integers(1, 4))))
    dropouts = tuple((u(0, 2 * math.pi), u(0.3, 0.9), u(0.0, 0.3))
                     for _ in range(int(rng.integers(1, 4))))
    head_a = v.patient.head_a_mm / v.pixel_size_mm
    decoys = []
    for _ in range(int(rng.integers(1, 3))):
        a = head_a * u(0.45, 0.95)
        b, phi = a * u(0.7, 0.95), u(-0.5, math.pi + 0.5)  # beside or below, not in the wall
        dist = (head_a + a) * u(0.9, 1.3)
        decoys.append((dist * math.cos(phi), dist * math.sin(phi), a, b, u(0, math.pi),
                       u(3.0, 8.0), u(0.15, 0.5) * BRAIN / 0.3, u(-1.0, 1.0), u(0.5, 1.2)))
    return v, HardVideo(make_preset(seed, v.patient.index), shadows, dropouts, tuple(decoys), shift)


def _ring(g, cx, cy, a, b, angle, wall, fill, echo, spec, alpha) -> None:
    """A bright elliptical wall with a darker fill: what a skull looks like at a glance."""
    roi = _roi(g, cx, cy, a + 4.0)
    d, _, _ = _ellipse(*_local(g, roi, cx, cy, angle), a, b)
    if d.size == 0:   # wholly outside the fan
        return
    if fill is not None:
        echo[roi][d < 0] = fill
    band = _band(d, -1.0, 1.3)
    spec[roi] += band * wall
    alpha[roi] += band * 0.08


def _decoys(g, v: Video, f: Frame, h: HardVideo, echo, spec, alpha) -> None:
    for dx, dy, a, b, angle, wall, fill, zc, zw in h.decoys:
        s = 1 - ((f.zn - zc) / zw) ** 2   # each one comes and goes through the sweep
        if s > 0.05:
            s = math.sqrt(s)
            _ring(g, f.cx + dx, f.cy + dy, a * s, b * s, angle + f.angle, wall * s, fill,
                  echo, spec, alpha)
    if f.plane == "abdomen" and f.a_px > 0:   # a skull-like abdominal wall, its fill unchanged
        _ring(g, f.cx, f.cy, f.a_px, f.b_px, f.angle, 4.0 * f.section, None, echo, spec, alpha)


def _dropout(g, f: Frame, h: HardVideo, added: np.ndarray, roi) -> np.ndarray:
    """What is left of the skull's echo: the preset's share, less over the dropout arcs."""
    u, w = _local(g, roi, f.cx, f.cy, f.angle)
    psi = np.arctan2(w / max(f.b_px, 1e-6), u / max(f.a_px, 1e-6))
    keep = np.full(psi.shape, h.preset.skull, np.float32)
    for centre, half, left in h.dropouts:
        gap = np.angle(np.exp(1j * (psi - centre)))   # wrapped to -pi..pi
        keep *= (1 - (1 - left) * np.exp(-(gap / half) ** 2)).astype(np.float32)
    return added * keep


def _shade(g, f: Frame, h: HardVideo) -> np.ndarray:
    """(n_r, n_t) transmission of the acoustic shadows (1: none), with their reflectors."""
    n_r, _ = g.x.shape
    theta, depth = g.theta, np.arange(n_r, dtype=np.float32)[:, None] / n_r
    shade = np.ones(g.x.shape, np.float32)
    for centre, half, start, through, drift in h.shadows:
        across = np.exp(-(((theta - centre - drift * f.index) / half) ** 4))
        below = 1 / (1 + np.exp(-(depth - start) * 60.0))
        shade *= (1 - (1 - through) * across * below).astype(np.float32)
        shade += (3.0 * across * np.exp(-((depth - start) * 40.0) ** 2)).astype(np.float32)
    return shade


def amplitude(v: Video, f: Frame, h: HardVideo, scene: Scene, speckle: np.ndarray,
              noise: np.random.Generator) -> np.ndarray:
    """The standard render's beam-space amplitude (``render.amplitude``) with the hard effects."""
    g = grid(v.size)
    p = h.preset
    echo, spec, alpha = scene.frame(f)
    if f.has_head:
        roi = _roi(g, f.cx, f.cy, f.a_px + 6.0 / v.pixel_size_mm)
        before = spec[roi].copy()
        _head(g, v, f, echo, spec, alpha)
        spec[roi] = before + _dropout(g, f, h, spec[roi] - before, roi)
    elif f.plane != "head":
        (_abdomen if f.plane == "abdomen" else _femur)(g, v, f, echo, spec, alpha)
    _decoys(g, v, f, h, echo, spec, alpha)
    _blobs(g, v, f, echo, spec)
    echo = cv2.pow(np.maximum(echo, np.float32(1e-3)), p.contrast)   # low contrast
    through = cv2.exp(alpha - np.cumsum(alpha, axis=0)) * scene.tgc
    amp = (echo * speckle + spec * (0.6 + 0.4 * speckle)) * through
    amp += scene.clutter * speckle[::-1]
    amp *= scene.gain * np.float32(p.gain) * _shade(g, f, h)
    if p.lateral_blur > 0.3:
        amp = cv2.GaussianBlur(amp, (2 * math.ceil(3 * p.lateral_blur) + 1, 1), p.lateral_blur)
    n = noise.standard_normal((2, *amp.shape), dtype=np.float32)
    return amp + np.float32(p.noise) * cv2.magnitude(n[0], n[1])


def to_frame(amp: np.ndarray, size: int, p: Preset) -> np.ndarray:
    """``render.to_frame`` with the preset's display window and resolution."""
    g = grid(size)
    gray = cv2.log(amp + np.float32(1e-4)) * np.float32(20 / math.log(10) * 255 / p.range_db)
    gray -= np.float32((p.top_db - p.range_db) * 255 / p.range_db)
    polar = np.clip(gray, 0, 255, out=gray).astype(np.uint8)
    out = cv2.remap(polar, g.map_x, g.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    small = max(16, int(round(size * p.resolution)))
    if small < size:
        out = cv2.resize(cv2.resize(out, (small, small), interpolation=cv2.INTER_AREA),
                         (size, size), interpolation=cv2.INTER_LINEAR)
    return cv2.bitwise_and(out, g.fan_mask)


def render_video(seed: int, v: Video, h: HardVideo) -> Iterator[tuple[Frame, np.ndarray,
                                                                      np.ndarray, dict]]:
    """``render.render_video`` for a video planned by :func:`plan_hard`."""
    g = grid(v.size)
    rng = rng_for(seed, TAG_NOISE, v.patient.index, v.index)   # the standard scene and speckle
    scene = Scene(g, v, rng)
    speckle = Speckle(rng, g.x.shape, v.patient.speckle_axial * h.preset.speckle,
                      v.patient.speckle_lateral * h.preset.speckle)
    noise = rng_for(seed, TAG_HARD, v.patient.index, v.index, 2)
    for f in v.frames:
        labels = frame_labels(f, v.pixel_size_mm, f.index == v.standard_index)
        frame = to_frame(amplitude(v, f, h, scene, speckle.next(), noise), v.size, h.preset)
        yield f, frame, head_mask(v.size, labels), labels
