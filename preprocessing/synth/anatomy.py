"""Per-patient parameters and per-frame sweep geometry of the synthetic cohort (pure numpy, no I/O).

Units: millimetres for anatomy, pixels for frame geometry. Frame coordinates have (0, 0) at the
centre of the top-left pixel, x to the right, y down; an angle is the direction of an axis
measured from +x towards +y (clockwise on screen), in radians.

Every random draw comes from a generator seeded by ``[seed, TAG, patient_index, ...]`` so that a
patient is a pure function of (seed, index): the cohort does not depend on how many worker
processes rendered it or in which order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from preprocessing.format import PLANES, ellipse_perimeter

# Seed tags: the second word of every seed, so that streams for different purposes never collide.
TAG_PATIENT, TAG_VIDEO, TAG_NOISE, TAG_SHUFFLE, TAG_HARD = 1, 2, 3, 4, 5

# Curved-array fan, as fractions of the frame size: a virtual apex above the top edge, the probe
# face (near-field arc) just below the top, and the far-field arc sized so the whole sector fits.
FAN_OPENING_DEG = 66.0
FAN_APEX_Y = -0.08
FAN_NEAR_R = 0.15
FAN_FAR_R = 0.915

GA_RANGE_WEEKS = (18.0, 38.0)


def rng_for(seed: int, tag: int, *words: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, *words])


@dataclass(frozen=True)
class Fan:
    """Sector geometry in pixels: apex (x, y), near/far radii from the apex, half opening (rad)."""

    size: int
    apex_x: float
    apex_y: float
    r0: float
    r1: float
    half_angle: float

    @property
    def depth_px(self) -> float:
        return self.r1 - self.r0


def fan_geometry(size: int) -> Fan:
    return Fan(size, (size - 1) / 2.0, FAN_APEX_Y * size, FAN_NEAR_R * size, FAN_FAR_R * size,
               math.radians(FAN_OPENING_DEG) / 2.0)


# ---------------------------------------------------------------------------------------------
# Growth curves: Hadlock et al., Radiology 1984;152:497-501 (menstrual age in weeks from the
# measurement in cm). We need the inverse (size from age); the curves are monotone, so bisect.
# ---------------------------------------------------------------------------------------------
def _invert(ga_of_cm, ga_weeks: float, lo: float = 0.5, hi: float = 60.0) -> float:
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ga_of_cm(mid) < ga_weeks else (lo, mid)
    return 0.5 * (lo + hi) * 10.0  # cm -> mm


def hadlock_hc_mm(ga_weeks: float) -> float:
    return _invert(lambda hc: 8.96 + 0.540 * hc + 0.0003 * hc**3, ga_weeks)


def hadlock_ac_mm(ga_weeks: float) -> float:
    return _invert(lambda ac: 8.14 + 0.753 * ac + 0.0036 * ac**2, ga_weeks)


def hadlock_fl_mm(ga_weeks: float) -> float:
    return _invert(lambda fl: 10.35 + 2.460 * fl + 0.170 * fl**2, ga_weeks, hi=15.0)


@dataclass(frozen=True)
class Patient:
    """One fetus and its mother. Sizes in mm; texture fields are unitless renderer settings."""

    index: int
    patient_id: str
    ga_weeks: float
    hc_mm: float  # true head circumference (outer skull) at the standard plane
    head_a_mm: float  # outer-skull semi-axes: occipito-frontal (a) and biparietal (b)
    head_b_mm: float
    ac_mm: float
    fl_mm: float
    skull_mm: float
    # Appearance that stays with the patient in every video, so "same patient" is learnable.
    speckle_axial: float  # speckle correlation (Gaussian sigma) along the beam, polar samples
    speckle_lateral: float  # ... across the beam
    gain: float
    tissue_level: float  # echogenicity of maternal soft tissue
    attenuation: float  # residual attenuation after TGC, nepers over the full depth
    haze: float  # near-field reverberation clutter
    fat_mm: float
    muscle_mm: float
    myometrium_mm: float
    placenta: str  # "anterior" | "posterior"
    placenta_mm: float
    septa: int  # bright fibrous lines in the subcutaneous fat


def make_patient(seed: int, index: int) -> Patient:
    rng = rng_for(seed, TAG_PATIENT, index)
    u = rng.uniform
    ga = round(float(u(*GA_RANGE_WEEKS)), 1)
    # Biological spread around the growth curves (a few percent, like a population chart).
    spread = np.clip(rng.normal(1.0, [0.03, 0.04, 0.04]), 0.92, 1.08)
    hc = hadlock_hc_mm(ga) * spread[0]
    aspect = u(0.75, 0.85)  # b / a (cephalic index 75-85 %)
    a = hc / ellipse_perimeter(1.0, aspect)
    return Patient(
        index=index, patient_id=f"P{index + 1:04d}", ga_weeks=ga, hc_mm=hc,
        head_a_mm=a, head_b_mm=a * aspect, ac_mm=hadlock_ac_mm(ga) * spread[1],
        fl_mm=hadlock_fl_mm(ga) * spread[2], skull_mm=1.6 + 0.07 * ga,
        speckle_axial=u(0.7, 1.3), speckle_lateral=u(1.2, 2.4), gain=u(0.85, 1.25),
        tissue_level=u(0.8, 1.15), attenuation=u(0.3, 1.0), haze=u(0.05, 0.12),
        fat_mm=u(4.0, 20.0), muscle_mm=u(4.0, 9.0), myometrium_mm=u(4.0, 8.0),
        placenta=("anterior", "posterior")[int(rng.integers(2))], placenta_mm=u(18.0, 32.0),
        septa=int(rng.integers(1, 5)),
    )


def smooth_curve(rng: np.random.Generator, n: int, amplitude: float, cycles: float = 1.5):
    """(n,) smooth random wiggle with max |value| == amplitude (a few sine harmonics)."""
    t = np.linspace(0.0, 1.0, n)
    out = np.zeros(n)
    for k in (1, 2, 3):
        out += rng.normal() / k * np.sin(2 * np.pi * k * cycles * t + rng.uniform(0, 2 * np.pi))
    peak = np.abs(out).max()
    return out * (amplitude / peak) if peak > 0 else out


@dataclass(frozen=True)
class Frame:
    """Geometry of one frame. ``a_px``/``b_px`` are the cross-section's semi-axes in pixels (head:
    outer skull; abdomen: outer wall; femur: half-length and half-width of the bone), zero where
    the slice misses the structure. ``zn`` is the slice offset in units of the structure's
    half-extent across the plane (|zn| >= 1: missed)."""

    plane: str
    index: int
    zn: float
    cx: float
    cy: float
    angle: float
    a_px: float
    b_px: float
    section: float  # sqrt(1 - zn^2) for the head, visibility in [0, 1] for the others

    @property
    def has_head(self) -> bool:
        return self.plane == "head" and self.b_px > 0


@dataclass(frozen=True)
class Video:
    """One sweep: constants of the video plus its frames, in temporal order."""

    patient: Patient
    index: int
    name: str
    plane: str
    size: int
    pixel_size_mm: float
    anterior_mm: tuple  # depths (mm) of the layer boundaries under the probe face
    cavity: tuple  # amniotic cavity, px: (cx, cy, rx, ry, then (size, phase) of 3 harmonics)
    blobs: tuple  # out-of-plane fetal parts floating in the fluid: (x, y, rx, ry, zc, zw)
    wiggle: tuple  # undulation of the maternal layers: (amplitude mm, cycles per rad, phase)
    septa: tuple  # fibrous lines in the fat: (fraction of the fat depth, tilt)
    knee: float  # femur videos: angle (rad) of the lower leg relative to the femur
    frames: list = field(default_factory=list)
    standard_index: int = -1  # frame closest to the head's centre (head videos), else -1


def video_plane(seed: int, patient_index: int, video_index: int) -> str:
    if video_index == 0:
        return "head"  # every patient has at least one head sweep (the segmentation target)
    u = rng_for(seed, TAG_VIDEO, patient_index, video_index, 1).uniform()
    return PLANES[0] if u < 0.5 else PLANES[1] if u < 0.75 else PLANES[2]


def plan_video(seed: int, patient: Patient, video_index: int, n_frames: int, size: int,
               plane: str | None = None) -> Video:
    """The sweep geometry of one video. ``plane`` overrides the drawn plane (for previews)."""
    plane = plane or video_plane(seed, patient.index, video_index)
    rng = rng_for(seed, TAG_VIDEO, patient.index, video_index, 2)
    fan = fan_geometry(size)
    # Half-extent (mm) of the imaged structure: what the depth setting and the cavity fit around.
    half = {"head": patient.head_a_mm, "abdomen": patient.ac_mm / (2 * math.pi) * 1.06,
            "femur": patient.fl_mm * 0.6}[plane]
    # Depth setting ("zoom"): the sonographer fits the structure with room around it, and never
    # less than what the maternal wall plus the structure need.
    placenta = patient.placenta_mm if patient.placenta == "anterior" else 0.0
    wall = np.cumsum([2.0, patient.fat_mm, patient.muscle_mm, patient.myometrium_mm, placenta])
    top = wall[-1] + rng.uniform(3.0, 10.0) + half  # depth of the structure's centre, mm
    depth_mm = max(rng.uniform(1.3, 1.6) * 2 * half + rng.uniform(8, 14), top / 0.62)
    pix = round(depth_mm / fan.depth_px, 6)
    u = max(top / depth_mm, rng.uniform(0.55, 0.6))  # centre as a fraction of the depth
    lateral = rng.uniform(-0.08, 0.08)  # radians off the fan's axis
    rc = fan.r0 + u * fan.depth_px
    cx0, cy0 = fan.apex_x + rc * math.sin(lateral), fan.apex_y + rc * math.cos(lateral)

    n = n_frames
    t = np.arange(n, dtype=float)
    # In-plane drift of the fetus relative to the probe: a few pixels and degrees, smoothly.
    dx = smooth_curve(rng, n, 0.012 * size * rng.uniform(0.5, 1.0))
    dy = smooth_curve(rng, n, 0.008 * size * rng.uniform(0.5, 1.0))
    drot = smooth_curve(rng, n, math.radians(rng.uniform(1.0, 4.0)))
    angle0 = rng.uniform(0.0, math.pi)
    if plane == "femur":  # the femur is imaged roughly across the screen
        angle0 = rng.uniform(-0.35, 0.35)

    standard = -1
    if plane == "head":
        # Linear sweep through the ellipsoid crossing the centre at frame s (middle 60 % of the
        # video), far enough that the slice leaves the head at least at one end.
        lo, hi = math.ceil(0.2 * (n - 1)), math.floor(0.8 * (n - 1))
        s = int(rng.integers(lo, hi + 1)) if lo <= hi else (n - 1) // 2
        dz = rng.uniform(1.15, 1.45) / max(s, n - 1 - s, 1)
        # The phase and the wiggle stay well under one step, so z stays monotone and frame s
        # stays the one closest to the centre.
        z = dz * (t - s - rng.uniform(-0.15, 0.15)) + smooth_curve(rng, n, 0.1 * dz)
        if rng.uniform() < 0.5:
            z = -z  # sweep in either direction
        standard = int(np.argmin(np.abs(z)))
    elif plane == "abdomen":
        z = np.linspace(-1, 1, n) * rng.uniform(0.6, 1.0) + smooth_curve(rng, n, 0.05)
    else:
        z0 = rng.uniform(0.9, 1.4)
        z = np.linspace(-z0, z0, n) + rng.uniform(-0.3, 0.3) + smooth_curve(rng, n, 0.08)

    frames = []
    for i in range(n):
        cx, cy, ang = cx0 + dx[i], cy0 + dy[i], angle0 + drot[i]
        zi = float(z[i])
        if plane == "head":
            sec = math.sqrt(max(0.0, 1.0 - zi * zi))
            a_px = patient.head_a_mm * sec / pix
            b_px = patient.head_b_mm * sec / pix
            if b_px < 2.0:  # a sliver of skull cap is not a measurable head
                a_px = b_px = sec = 0.0
        elif plane == "abdomen":
            # The trunk is nearly a cylinder: the section changes little along the sweep.
            sec = math.sqrt(max(0.0, 1.0 - (0.45 * zi) ** 2))
            r = patient.ac_mm / (2 * math.pi) / pix
            a_px, b_px = r * 1.06 * sec, r * 0.94 * sec
        else:
            sec = math.sqrt(max(0.0, 1.0 - zi * zi))
            a_px, b_px = 0.5 * patient.fl_mm / pix * sec, 1.0 / pix
        frames.append(Frame(plane, i, zi, cx, cy, ang, a_px, b_px, sec))

    # Amniotic cavity: an irregular fluid pocket a few mm to cm around the structure, its top
    # under the uterine wall; off-centre, so the fetus lies against the wall on one side.
    ry = min(u * depth_mm - wall[-1], half + rng.uniform(6.0, 20.0)) / pix
    rx = max(ry, (half + rng.uniform(4.0, 25.0)) / pix)
    bumps = tuple(float(x) for k in (2, 3, 4, 5)
                  for x in (rng.uniform(0, 0.3 / k), rng.uniform(0, 2 * math.pi)))
    shift = rng.uniform(-0.1, 0.4) * ry
    cavity = (cx0 + rng.uniform(-0.3, 0.3) * rx, cy0 + shift, rx, ry + shift, *bumps)
    blobs = []
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(-0.7, 0.7) + math.pi * int(rng.integers(0, 2))  # beside the structure
        room = 1.0 / math.hypot(math.cos(ang) / rx, math.sin(ang) / ry)  # cavity radius there
        r = rng.uniform(0.1, 0.25) * half / pix
        dist = min(rng.uniform(1.2, 1.5) * half / pix, 0.95 * room - r)
        if dist < half / pix + r:
            continue  # no room beside the structure
        blobs.append((cx0 + dist * math.cos(ang), cy0 + dist * math.sin(ang),
                      r * rng.uniform(1.0, 1.8), r, rng.uniform(-1, 1), rng.uniform(0.5, 1.0)))
    wiggle = (rng.uniform(0.5, 2.5), rng.uniform(2.0, 6.0), rng.uniform(0, 2 * math.pi))
    septa = tuple((rng.uniform(0.15, 0.85), rng.uniform(-0.15, 0.15)) for _ in range(patient.septa))
    return Video(patient, video_index, f"sweep_{video_index + 1:02d}", plane, size, pix,
                 tuple(float(w) for w in wall), cavity, tuple(blobs), wiggle, septa,
                 float(rng.choice([-1, 1]) * rng.uniform(0.7, 1.3)), frames, standard)


def frame_labels(frame: Frame, pixel_size_mm: float, standard: bool) -> dict:
    """The LABEL_COLUMNS of one frame; missing values are None. Ellipse values are rounded first
    and the HC is computed from the rounded values, so the CSV is self-consistent."""
    labels = {"plane": frame.plane, "pixel_size_mm": pixel_size_mm, "hc_mm": None,
              "ellipse_cx": None, "ellipse_cy": None, "ellipse_a": None, "ellipse_b": None,
              "ellipse_angle": None, "is_standard_plane": bool(standard)}
    if frame.has_head:
        a, b = round(frame.a_px, 3), round(frame.b_px, 3)
        labels.update(ellipse_cx=round(frame.cx, 3), ellipse_cy=round(frame.cy, 3),
                      ellipse_a=a, ellipse_b=b,
                      ellipse_angle=round(frame.angle % math.pi, 5) % math.pi,
                      hc_mm=round(ellipse_perimeter(a * pixel_size_mm, b * pixel_size_mm), 3))
    return labels
