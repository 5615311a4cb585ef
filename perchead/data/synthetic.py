"""Procedural synthetic heads built directly as labelled 3D Gaussians (training data, paper §3.4 / §4.1).

The paper trains on multi-view captures (NeRSemble, Cafca) and FFHQ; none can be downloaded here, so the
project makes its own multi-view heads. Each head is a seeded composition of *star-shaped solids* (a solid
described by a centre and a radius for every direction: head, nose, ears, eyeballs, neck, torso, hair
volume, hat, bun) whose surfaces are sampled uniformly by area and covered with flat Gaussian discs.
Points of one part that fall inside another solid are culled, so only visible surfaces carry Gaussians.
Face details (brows, lips, open mouth, eye openings) are relabelled / displaced skin points. Shading
(Lambert from a fixed light) and strand-like hair noise are baked into the colours so views differ.

The heads are deliberately *not* built from the model's template: the model has to learn to deform.

Canonical head space: +Y up, the face looks toward +Z, origin at the head centre, metres;
the head's own left is +X (``l_eye``, ``l_ear``, ``l_brow`` lie at x > 0). Every head fits in a sphere
of radius :data:`CLIP_RADIUS`, so ``orbit_cameras(radius=0.7, fov_deg=30)`` frames it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from perchead.geometry.cameras import Cameras, orbit_cameras
from perchead.data.views import sample_input_view, sample_target_views
from perchead.geometry.gaussians import Gaussians
from perchead.geometry.segmentation import CLASSES, NUM_CLASSES

CLASS_NAMES = CLASSES  # the 19 CelebAMask-HQ classes, in their standard order (perchead.geometry.segmentation)
C = {name: i for i, name in enumerate(CLASS_NAMES)}  # class name -> id

SPLITS: dict[str, range] = {
    "train": range(0, 100_000),  # 100k distinct training heads (ours)
    "val": range(1_000_000, 1_001_000),  # 1k validation heads
    "test": range(2_000_000, 2_001_000),  # 1k held-out test heads (evaluation protocol)
}
CLIP_RADIUS = 0.2  # metres; every Gaussian centre lies inside this sphere around the origin
LIGHT_DIR = np.array([0.35, 0.55, 0.76], dtype=np.float32) / np.linalg.norm([0.35, 0.55, 0.76])  # fixed key light

HAIR_STYLES = ("bald", "buzz", "short", "fringe", "long", "bun", "curly")
HAIR_COLORS = {
    "black": (0.05, 0.045, 0.04), "dark brown": (0.17, 0.10, 0.06), "brown": (0.33, 0.21, 0.12),
    "blonde": (0.86, 0.70, 0.42), "red": (0.62, 0.24, 0.09), "grey": (0.55, 0.55, 0.56),
    "white": (0.92, 0.91, 0.88), "blue": (0.12, 0.30, 0.80), "pink": (0.95, 0.45, 0.70),
    "green": (0.15, 0.60, 0.30), "purple": (0.45, 0.20, 0.65),
}
DYED = ("blue", "pink", "green", "purple")
SKIN_TONES = (  # (caption word, albedo) — a light-to-deep range of human skin
    ("pale", (0.98, 0.84, 0.76)), ("light", (0.93, 0.76, 0.64)), ("medium", (0.80, 0.60, 0.45)),
    ("tan", (0.66, 0.46, 0.31)), ("brown", (0.48, 0.32, 0.21)), ("dark", (0.33, 0.21, 0.14)),
)
EYE_COLORS = {"brown": (0.30, 0.17, 0.08), "dark": (0.12, 0.07, 0.04), "blue": (0.25, 0.45, 0.75),
              "green": (0.30, 0.50, 0.30), "hazel": (0.50, 0.38, 0.18), "grey": (0.50, 0.55, 0.58)}
CLOTH_COLORS = {"white": (0.93, 0.93, 0.92), "black": (0.08, 0.08, 0.09), "grey": (0.5, 0.5, 0.52),
                "navy": (0.10, 0.14, 0.35), "red": (0.75, 0.12, 0.12), "green": (0.18, 0.45, 0.25),
                "yellow": (0.92, 0.78, 0.20), "blue": (0.25, 0.45, 0.80), "beige": (0.80, 0.70, 0.55),
                "purple": (0.45, 0.25, 0.60), "orange": (0.92, 0.48, 0.15)}


@dataclass
class SyntheticHead:
    """One procedurally generated head.

    Attributes:
        gaussians: the head as unbatched Gaussians in canonical head space. ``[N, ...]``
        labels: CelebAMask-HQ class id (1..18) of every Gaussian. ``[N]`` long
        caption: a short attribute caption, e.g. ``"long red hair, dark skin, glasses"``.
        attributes: every sampled attribute (style names and shape parameters).
        seed: the seed that built it.
    """

    gaussians: Gaussians
    labels: Tensor  # [N]
    caption: str
    attributes: dict = field(default_factory=dict)
    seed: int = 0


def split_seeds(split: str) -> range:
    """Seeds of a split (``"train"``, ``"val"`` or ``"test"``); the ranges are disjoint."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[split]


# ----------------------------------------------------------------------------------------------- maths
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=np.float64)


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float64)


def _quat_from_frames(m: np.ndarray) -> np.ndarray:
    """Unit quaternions (wxyz) of rotation matrices whose columns are the local axes. ``[n,3,3]`` → ``[n,4]``"""
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    cand = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], 1)
    k = cand.argmax(1)  # numerically safest branch per matrix (Shepperd)
    q = np.empty((len(m), 4))
    s = np.sqrt(np.maximum(cand[np.arange(len(m)), k], 1e-12)) * 2  # = 4 * |largest component|
    w = k == 0
    q[w] = np.stack([s[w] / 4, (m[w, 2, 1] - m[w, 1, 2]) / s[w], (m[w, 0, 2] - m[w, 2, 0]) / s[w],
                     (m[w, 1, 0] - m[w, 0, 1]) / s[w]], 1)
    w = k == 1
    q[w] = np.stack([(m[w, 2, 1] - m[w, 1, 2]) / s[w], s[w] / 4, (m[w, 0, 1] + m[w, 1, 0]) / s[w],
                     (m[w, 0, 2] + m[w, 2, 0]) / s[w]], 1)
    w = k == 2
    q[w] = np.stack([(m[w, 0, 2] - m[w, 2, 0]) / s[w], (m[w, 0, 1] + m[w, 1, 0]) / s[w], s[w] / 4,
                     (m[w, 1, 2] + m[w, 2, 1]) / s[w]], 1)
    w = k == 3
    q[w] = np.stack([(m[w, 1, 0] - m[w, 0, 1]) / s[w], (m[w, 0, 2] + m[w, 2, 0]) / s[w],
                     (m[w, 1, 2] + m[w, 2, 1]) / s[w], s[w] / 4], 1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _superellipsoid_radius(d: np.ndarray, ax, ay, az, e: float = 2.0) -> np.ndarray:
    """Radius of a superellipsoid ``|x/ax|^e + |y/ay|^e + |z/az|^e = 1`` along unit directions ``[n,3]``."""
    s = np.abs(d[:, 0] / ax) ** e + np.abs(d[:, 1] / ay) ** e + np.abs(d[:, 2] / az) ** e
    return np.maximum(s, 1e-12) ** (-1.0 / e)


def _bump(d: np.ndarray, centre, width: float, sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """Smooth bump in direction space around the unit direction ``centre`` (anisotropic via sx, sy)."""
    c = _normalize(np.asarray(centre, dtype=np.float64))
    diff = d - c
    q = (diff[:, 0] / sx) ** 2 + (diff[:, 1] / sy) ** 2 + diff[:, 2] ** 2
    return np.exp(-q / (2 * width**2))


def _wave_noise(rng: np.random.Generator, n_waves: int, freq: float) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random function of 3D points: a sum of random plane waves, values roughly in [-1, 1]."""
    k = rng.normal(size=(n_waves, 3))
    k = k / np.linalg.norm(k, axis=1, keepdims=True) * freq * rng.uniform(0.6, 1.4, size=(n_waves, 1))
    phase = rng.uniform(0, 2 * np.pi, size=n_waves)
    amp = 1.0 / math.sqrt(n_waves / 2)
    return lambda p: amp * np.sin(p @ k.T + phase).sum(1)


# ------------------------------------------------------------------------------------------ star solids
class _Star:
    """A star-shaped solid: ``centre`` plus a radius for every unit direction (in the solid's local frame).

    ``rotation`` maps local to world coordinates (its columns are the local axes in world space).
    """

    def __init__(self, centre, radial: Callable[[np.ndarray], np.ndarray], rotation: np.ndarray | None = None):
        self.centre = np.asarray(centre, dtype=np.float64)
        self.radial = radial
        self.rotation = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)

    def signed(self, p: np.ndarray) -> np.ndarray:
        """Radial signed distance (negative inside). ``[n,3]`` → ``[n]``"""
        q = (p - self.centre) @ self.rotation  # [n, 3] local
        r = np.linalg.norm(q, axis=1)
        return r - self.radial(q / np.maximum(r, 1e-12)[:, None])

    def inside(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        return self.signed(p) < -margin

    def point(self, d_local: np.ndarray) -> np.ndarray:
        """Surface points along local unit directions. ``[n,3]`` → ``[n,3]`` world"""
        d_local = _normalize(np.atleast_2d(np.asarray(d_local, dtype=np.float64)))
        return self.centre + (d_local * self.radial(d_local)[:, None]) @ self.rotation.T

    def normals(self, p: np.ndarray, h: float = 2e-4) -> np.ndarray:
        """Outward unit normals from the gradient of :meth:`signed`. ``[n,3]``"""
        g = np.stack([self.signed(p + h * e) - self.signed(p - h * e) for e in np.eye(3)], 1)
        return _normalize(g)

    def sample(self, rng: np.random.Generator, density: float, weight: Callable | None = None,
               nu: int = 160, nv: int = 80, region: Callable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples the surface uniformly by (weighted) area.

        Args:
            rng: random generator.
            density: Gaussians per square metre where ``weight`` is 1.
            weight: optional multiplier of the density, a function of world points ``[n,3]`` → ``[n]``.
            nu, nv: parameter grid (azimuth around local y, polar angle from local +y).
            region: optional predicate on local unit directions ``[n,3]`` → bool ``[n]`` restricting the surface.

        Returns:
            (points ``[n,3]``, outward normals ``[n,3]``, per-point density multiplier ``[n]``).
        """
        def dirs(u, v):  # u azimuth from +z toward +x, v polar angle from +y
            sv = np.sin(v)
            return np.stack([sv * np.sin(u), np.cos(v), sv * np.cos(u)], -1)

        u = np.linspace(0, 2 * np.pi, nu + 1)
        v = np.linspace(1e-3, np.pi - 1e-3, nv + 1)
        uu, vv = np.meshgrid(u, v, indexing="xy")  # [nv+1, nu+1]
        dg = dirs(uu.ravel(), vv.ravel())  # [(nv+1)(nu+1), 3]
        pg = self.point(dg).reshape(nv + 1, nu + 1, 3)
        a = np.linalg.norm(np.cross(pg[1:, :-1] - pg[:-1, :-1], pg[:-1, 1:] - pg[:-1, :-1]), axis=-1)
        b = np.linalg.norm(np.cross(pg[1:, 1:] - pg[1:, :-1], pg[1:, 1:] - pg[:-1, 1:]), axis=-1)
        area = 0.5 * (a + b)  # [nv, nu]
        centres = 0.25 * (pg[1:, :-1] + pg[:-1, :-1] + pg[1:, 1:] + pg[:-1, 1:]).reshape(-1, 3)
        w = np.ones(len(centres)) if weight is None else weight(centres)
        if region is not None:
            dc = dirs((0.5 * (u[1:] + u[:-1]))[None, :].repeat(nv, 0).ravel(),
                      (0.5 * (v[1:] + v[:-1]))[:, None].repeat(nu, 1).ravel())
            w = w * region(dc)
        mass = area.ravel() * w
        total = mass.sum()
        n = int(round(total * density))
        if n == 0:
            z = np.zeros((0, 3))
            return z, z, np.zeros(0)
        cell = rng.choice(len(mass), size=n, p=mass / total)
        iv, iu = np.divmod(cell, nu)
        us = u[iu] + rng.random(n) * (u[1] - u[0])
        vs = v[iv] + rng.random(n) * (v[1] - v[0])
        dl = dirs(us, vs)
        if region is not None:  # cells straddle the region border: keep only the inside
            keep = region(dl)
            dl = dl[keep]
        pts = self.point(dl)
        mult = np.ones(len(pts)) if weight is None else weight(pts)
        return pts, self.normals(pts), np.maximum(mult, 1e-3)


# ----------------------------------------------------------------------------------------------- parts
@dataclass
class _Part:
    """Surface samples of one part before they become Gaussians."""

    name: str
    points: np.ndarray  # [n, 3]
    normals: np.ndarray  # [n, 3]
    albedo: np.ndarray  # [n, 3]
    labels: np.ndarray  # [n] int
    sigma: np.ndarray  # [n] disc standard deviation in metres
    flow: np.ndarray | None = None  # [n, 3] preferred in-plane direction (hair strands), optional
    stretch: float = 1.0  # elongation of the disc along `flow`
    opacity: float = 0.98
    shade: bool = True  # bake Lambert shading

    def keep(self, mask: np.ndarray) -> "_Part":
        return _Part(self.name, self.points[mask], self.normals[mask], self.albedo[mask], self.labels[mask],
                     self.sigma[mask], None if self.flow is None else self.flow[mask], self.stretch,
                     self.opacity, self.shade)


def _surface_part(name: str, solid: _Star, rng, density: float, label: int, color, sigma_k: float,
                  weight=None, region=None, nu=160, nv=80) -> _Part:
    pts, nrm, mult = solid.sample(rng, density, weight=weight, region=region, nu=nu, nv=nv)
    sigma = sigma_k / np.sqrt(density * mult)
    albedo = np.broadcast_to(np.asarray(color, dtype=np.float64), pts.shape).copy()
    return _Part(name, pts, nrm, albedo, np.full(len(pts), label), sigma)


def _curve_part(name: str, pts: np.ndarray, radius: float, label: int, color, opacity: float = 0.98) -> _Part:
    """Gaussians strung along a polyline ``[n,3]`` (glasses rims, chains), elongated along it."""
    tang = np.gradient(pts, axis=0)
    tang = _normalize(tang)
    spacing = np.linalg.norm(np.diff(pts, axis=0), axis=1).mean() if len(pts) > 1 else radius
    # a normal perpendicular to the tangent, facing outward from the head centre where possible
    nrm = _normalize(pts - np.einsum("ni,ni->n", pts, tang)[:, None] * tang)
    albedo = np.broadcast_to(np.asarray(color, dtype=np.float64), pts.shape).copy()
    part = _Part(name, pts, nrm, albedo, np.full(len(pts), label), np.full(len(pts), radius), flow=tang,
                 stretch=max(1.0, 0.8 * spacing / radius), opacity=opacity)
    return part


# ----------------------------------------------------------------------------------------- attributes
def _sample_attributes(rng: np.random.Generator) -> dict:
    """Draws every discrete and continuous attribute of one head."""
    a: dict = {}
    a["hair_style"] = str(rng.choice(HAIR_STYLES, p=[0.08, 0.1, 0.22, 0.14, 0.24, 0.1, 0.12]))
    older = rng.random() < 0.15
    if older:
        a["hair_color"] = str(rng.choice(["grey", "white"]))
    elif rng.random() < 0.1:
        a["hair_color"] = str(rng.choice(DYED))
    else:
        a["hair_color"] = str(rng.choice(["black", "dark brown", "brown", "blonde", "red"],
                                         p=[0.3, 0.25, 0.2, 0.15, 0.1]))
    tone = rng.uniform(0, len(SKIN_TONES) - 1)  # continuous across the palette
    i = int(min(math.floor(tone), len(SKIN_TONES) - 2))
    t = tone - i
    a["skin_rgb"] = tuple(float((1 - t) * x + t * y) for x, y in zip(SKIN_TONES[i][1], SKIN_TONES[i + 1][1]))
    a["skin_tone"] = SKIN_TONES[int(round(tone))][0]
    a["eye_color"] = str(rng.choice(list(EYE_COLORS)))
    a["expression"] = str(rng.choice(["neutral", "smile", "open mouth"], p=[0.55, 0.25, 0.2]))
    a["glasses"] = str(rng.choice(["none", "glasses", "sunglasses"], p=[0.75, 0.18, 0.07]))
    a["hat"] = str(rng.choice(["none", "beanie", "cap"], p=[0.84, 0.08, 0.08]))
    a["earrings"] = bool(rng.random() < 0.2)
    a["necklace"] = bool(rng.random() < 0.15)
    a["cloth_color"] = str(rng.choice(list(CLOTH_COLORS)))
    a["cloth_style"] = str(rng.choice(["crew", "collar", "turtleneck", "striped"], p=[0.45, 0.2, 0.15, 0.2]))
    a["beard"] = bool(rng.random() < 0.12)
    # continuous shape parameters (metres)
    a["head_half_width"] = float(rng.uniform(0.068, 0.08))
    a["jaw_half_width"] = float(rng.uniform(0.048, 0.066))
    a["face_length"] = float(rng.uniform(0.105, 0.122))  # centre to chin
    a["crown_height"] = float(rng.uniform(0.112, 0.125))
    a["head_depth"] = float(rng.uniform(0.092, 0.104))
    a["chin"] = float(rng.uniform(0.0, 0.012))
    a["cheeks"] = float(rng.uniform(0.0, 0.008))
    a["nose_length"] = float(rng.uniform(0.042, 0.058))
    a["nose_width"] = float(rng.uniform(0.013, 0.02))
    a["nose_protrusion"] = float(rng.uniform(0.016, 0.026))
    a["eye_spacing"] = float(rng.uniform(0.058, 0.068))
    a["eye_size"] = float(rng.uniform(0.85, 1.15))
    a["ear_size"] = float(rng.uniform(0.85, 1.15))
    a["ear_flare"] = float(rng.uniform(0.15, 0.45))
    a["lip_fullness"] = float(rng.uniform(0.7, 1.3))
    a["mouth_width"] = float(rng.uniform(0.022, 0.028))
    a["neck_radius"] = float(rng.uniform(0.046, 0.058))
    a["shoulder_width"] = float(rng.uniform(0.17, 0.22))
    a["brow_thickness"] = float(rng.uniform(0.004, 0.008))
    a["head_yaw"] = float(rng.uniform(-0.05, 0.05))  # small pose variation (radians)
    a["head_pitch"] = float(rng.uniform(-0.06, 0.06))
    return a


def _caption(a: dict) -> str:
    hair = {"bald": "bald", "buzz": f"buzz-cut {a['hair_color']} hair", "short": f"short {a['hair_color']} hair",
            "fringe": f"{a['hair_color']} hair with a fringe", "long": f"long {a['hair_color']} hair",
            "bun": f"{a['hair_color']} hair in a bun", "curly": f"curly {a['hair_color']} hair"}[a["hair_style"]]
    parts = [hair, f"{a['skin_tone']} skin"]
    if a["beard"]:
        parts.append("beard")
    if a["glasses"] != "none":
        parts.append(a["glasses"])
    if a["hat"] != "none":
        parts.append(f"{a['hat']}")
    if a["expression"] == "smile":
        parts.append("smiling")
    elif a["expression"] == "open mouth":
        parts.append("open mouth")
    if a["earrings"]:
        parts.append("earrings")
    if a["necklace"]:
        parts.append("necklace")
    cloth = {"crew": "shirt", "collar": "collared shirt", "turtleneck": "turtleneck", "striped": "striped shirt"}
    parts.append(f"{a['cloth_color']} {cloth[a['cloth_style']]}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------- the head
@dataclass
class _Solids:
    """The star-shaped solids of one head (canonical space) and the facial anchors the later steps need."""

    head: _Star  # skull and face
    head_radial: Callable[[np.ndarray], np.ndarray]  # its radius per unit direction
    ex: float  # half the eye spacing (m)
    eye_y: float  # eye height (m)
    eye_r: float  # eyeball radius (m)
    eyes: list  # [left, right] eyeball solids
    nose: _Star
    ears: list  # [(solid, side)] with side +1 = the head's left
    neck: _Star
    neck_rx: float
    neck_rz: float
    torso: _Star
    hair: _Star | None = None  # hair volume (step 3)
    hair_radial: Callable[[np.ndarray], np.ndarray] | None = None
    hat: _Star | None = None
    bun: _Star | None = None

    def face_point(self, x: float, y: float) -> np.ndarray:
        """The face surface point near (x, y). ``[3]``"""
        return self.head.point(np.array([[x, y, 0.09]]))[0]


def make_head(seed: int, density: float = 1.0) -> SyntheticHead:
    """Builds one synthetic head, deterministically from ``seed``.

    Args:
        seed: any non-negative integer; see :data:`SPLITS` for the train / val / test ranges.
        density: multiplier of the Gaussian budget (1.0 gives roughly 20k–35k Gaussians).

    Returns:
        a :class:`SyntheticHead` in canonical head space.
    """
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if density <= 0:
        raise ValueError(f"density must be positive, got {density}")
    rng = np.random.default_rng(seed)  # every step draws from it in this order
    a = _sample_attributes(rng)
    rho = 95_000.0 * density  # Gaussians per m² of plain surface (ours)
    s = _face_solids(a)  # 1.-2.
    _hair_solids(s, a, rng)  # 3.
    parts = _surface_parts(s, a, rng, rho)  # 4.
    _face_decals(parts, s, a, rng)  # 5.
    extra = _accessories(parts, s, a, rng, rho)  # 6.
    final = _cull(parts, s, extra, a, rng, rho)  # 7.
    _hair_texture(final, a["hair_style"], rng)  # 8.
    pose = _rot_y(a["head_yaw"]) @ _rot_x(a["head_pitch"])  # 9. small global pose variation, then Gaussians
    g, labels = _to_gaussians(final, pose, rng)
    return SyntheticHead(g, labels, _caption(a), a, seed)


SIGMA_K = 0.85  # disc sigma = SIGMA_K × mean spacing: overlapping discs render as a closed surface (ours)


def _face_solids(a: dict) -> _Solids:
    """Steps 1-2: the head solid (a superellipsoid with direction-dependent semi-axes plus smooth bumps) and
    the features anchored on the face: eyes, nose, ears, neck, torso."""
    hw, jw, fl, ch, hd = a["head_half_width"], a["jaw_half_width"], a["face_length"], a["crown_height"], a["head_depth"]
    ex = a["eye_spacing"] / 2
    smile = 1.0 if a["expression"] == "smile" else 0.0

    def head_radial(d: np.ndarray) -> np.ndarray:
        lower = _smoothstep(0.1, -0.8, d[:, 1])
        ax = hw + (jw - hw) * lower
        ay = np.where(d[:, 1] > 0, ch, fl)
        az = hd - 0.006 * _smoothstep(0.0, -0.8, d[:, 2])  # slightly flatter back
        r = _superellipsoid_radius(d, ax, ay, az, e=2.35)
        r = r + a["chin"] * _bump(d, (0, -0.8, 0.6), 0.16, sx=1.6)  # chin
        r = r + (a["cheeks"] + 0.004 * smile) * (_bump(d, (0.55, -0.15, 0.8), 0.14) + _bump(d, (-0.55, -0.15, 0.8), 0.14))
        r = r + 0.006 * _bump(d, (0, 0.3, 0.95), 0.12, sx=3.0, sy=0.5)  # brow ridge
        r = r - 0.007 * (_bump(d, (ex / 0.09, 0.02, 1.0), 0.1, sx=1.3) + _bump(d, (-ex / 0.09, 0.02, 1.0), 0.1, sx=1.3))
        r = r + 0.004 * _bump(d, (0, -0.55, 0.85), 0.07, sx=3.0)  # mouth muzzle
        return r

    head = _Star((0, 0, 0), head_radial)
    fz = lambda x, y: head.point(np.array([[x, y, 0.09]]))[0]  # noqa: E731  face surface point near (x, y)
    eye_y = 0.004
    eye_r = 0.0118
    eyes = []
    for side in (1, -1):
        s = fz(side * ex, eye_y)
        centre = s - np.array([0, 0, eye_r - 0.0035])
        eyes.append(_Star(centre, lambda d: np.full(len(d), eye_r)))
    nose_top = fz(0, -0.002)
    nose_len, nose_w, nose_pro = a["nose_length"], a["nose_width"], a["nose_protrusion"]
    tilt = 0.32
    nose_centre = nose_top + np.array([0, -nose_len * 0.55, -0.012])

    def nose_radial(d):
        top = _smoothstep(-0.6, 0.8, d[:, 1])
        ax = nose_w * (1.0 - 0.45 * top) * 0.5 + 0.001
        r = _superellipsoid_radius(d, ax, nose_len * 0.55, nose_pro * 0.85, e=2.2)
        return r + 0.004 * _bump(d, (0, -0.5, 0.85), 0.2)  # rounded tip

    nose = _Star(nose_centre, nose_radial, _rot_x(-tilt))
    ear_s = a["ear_size"]
    ears = []
    for side in (1, -1):
        ec = np.array([side * (hw - 0.004), -0.018, -0.012])
        rot = _rot_y(side * (math.pi / 2 - a["ear_flare"]))  # local +z points outward-ish, back edge flares
        ears.append((_Star(ec + rot @ np.array([0, 0, 0.004]),
                           lambda d: _superellipsoid_radius(d, 0.017 * ear_s, 0.03 * ear_s
                                                            * (1 + 0.12 * (d[:, 1] > 0)), 0.006, e=2.2), rot), side))
    neck_rx, neck_rz = a["neck_radius"], a["neck_radius"] * 0.92

    def neck_radial(d):
        side = 1.0 / np.sqrt((d[:, 0] / neck_rx) ** 2 + (d[:, 2] / neck_rz) ** 2 + 1e-12)
        cap = 0.13 / np.maximum(np.abs(d[:, 1]), 1e-6)
        return np.minimum(side, cap)

    neck = _Star((0, -0.125, -0.018), neck_radial, _rot_x(-0.12))
    sw = a["shoulder_width"]
    torso = _Star((0, -0.315, -0.02), lambda d: _superellipsoid_radius(d, sw, 0.165, 0.105, e=2.6))
    return _Solids(head, head_radial, ex, eye_y, eye_r, eyes, nose, ears, neck, neck_rx, neck_rz, torso)


def _hair_solids(s: _Solids, a: dict, rng: np.random.Generator) -> None:
    """Step 3: the hair volume (head radius + thickness × coverage, a hanging curtain for long hair), the hat
    and the bun, stored on ``s``."""
    hw, hd = a["head_half_width"], a["head_depth"]
    head_radial = s.head_radial
    style = a["hair_style"]
    hat = a["hat"]
    hairline = rng.uniform(0.42, 0.55)  # direction-space elevation of the frontal hairline
    noise_c = _wave_noise(rng, 12, 9.0)

    def boundary(d):  # hairline elevation (in d.y) as a function of azimuth around the head
        az = np.abs(np.arctan2(d[:, 0], d[:, 2]))
        xs = [0.0, 0.45, 0.85, 1.2, 1.42, 1.62, 1.95, 2.4, np.pi]
        if style == "fringe":
            ys = [0.22, 0.24, 0.2, -0.1, 0.15, 0.12, -0.25, -0.5, -0.6]
        else:
            ys = [hairline, hairline - 0.06, 0.3, -0.1, 0.15, 0.12, -0.25, -0.5, -0.6]
        return np.interp(az, xs, ys)

    def thickness(d):
        top = _smoothstep(-0.2, 0.9, d[:, 1])
        if style == "buzz":
            t = np.full(len(d), 0.0025)
        elif style in ("short", "fringe"):
            t = 0.006 + 0.014 * top
        elif style == "bun":
            t = np.full(len(d), 0.005)
        elif style == "long":
            t = 0.008 + 0.008 * top
        elif style == "curly":
            t = (0.02 + 0.02 * top) * (1 + 0.35 * noise_c(d))
        else:
            t = np.zeros(len(d))
        return t

    def coverage(d):
        return _smoothstep(-0.05, 0.05, d[:, 1] - boundary(d))

    az_open = rng.uniform(0.9, 1.25)
    curtain_end = -rng.uniform(0.12, 0.2)

    curtain_noise = _wave_noise(rng, 5, 6.0)

    def curtain(d):  # long hair: a tapering superellipsoid hanging behind / beside the head, open in front
        r = _superellipsoid_radius(d, hw + 0.024, 0.26, hd + 0.018, e=2.5)
        end = curtain_end * (1 + 0.12 * curtain_noise(d))  # ragged ends
        floor = np.where(d[:, 1] < 0, end / np.minimum(d[:, 1], -1e-6), 10.0)
        az = np.abs(np.arctan2(d[:, 0], d[:, 2]))
        open_mask = _smoothstep(az_open - 0.3, az_open + 0.3, az) * _smoothstep(0.75, 0.45, d[:, 1])
        return np.minimum(r, floor) * open_mask

    def hair_radial(d):
        r = head_radial(d) + thickness(d) * coverage(d)
        if style == "long":
            r = np.maximum(r, curtain(d))
        return r

    s.hair_radial = hair_radial
    s.hair = _Star((0, 0, 0), hair_radial)
    if hat != "none":
        brim_y = rng.uniform(0.3, 0.45)

        def hat_radial(d):
            base = head_radial(d) + np.maximum(0.012, thickness(d) * coverage(d) + 0.006)
            return base * (1 - 0.5 * _smoothstep(brim_y + 0.02, brim_y - 0.02, d[:, 1] + 0.08 * (d[:, 2] < 0)))

        s.hat = _Star((0, 0, 0), hat_radial)
    if style == "bun" and hat == "none":  # under a hat the bun is hidden
        bd = _normalize(np.array([0, 0.55 + rng.uniform(-0.2, 0.3), -0.8]))
        br = rng.uniform(0.026, 0.036)
        bc = bd * (head_radial(bd[None])[0] + br * 0.6)
        s.bun = _Star(bc, lambda d: np.full(len(d), br))


def _almond(p: np.ndarray, side: int, s: _Solids, a: dict) -> np.ndarray:
    """Inside the eye opening, in projected (x, y) relative to the eye centre. ``[n,3]`` → bool ``[n]``"""
    eye_w, eye_h = 0.0135 * a["eye_size"], 0.0062 * a["eye_size"]
    cx = side * s.ex
    u = (p[:, 0] - cx) / eye_w
    v = (p[:, 1] - s.eye_y) / eye_h
    upper = np.sqrt(np.clip(1 - u**2, 0, 1)) * (1 + 0.15 * side * u)
    return (np.abs(u) < 1) & (v < upper) & (v > -0.8 * upper) & (p[:, 2] > 0.03)


def _surface_parts(s: _Solids, a: dict, rng: np.random.Generator, rho: float) -> list[_Part]:
    """Step 4: samples every solid's surface (skin first, then nose, ears, neck, clothes, hair, bun, hat,
    eyes) into labelled, coloured parts."""
    sk = SIGMA_K
    hw = a["head_half_width"]
    skin = np.asarray(a["skin_rgb"])
    hair_rgb = np.asarray(HAIR_COLORS[a["hair_color"]])
    style, head, head_radial = a["hair_style"], s.head, s.head_radial
    face_w = lambda p: 1.0 + 2.5 * _smoothstep(0.02, 0.07, p[:, 2]) * _smoothstep(0.07, 0.02, np.abs(p[:, 1] + 0.03))  # noqa: E731
    parts: list[_Part] = []
    parts.append(_surface_part("skin", head, rng, rho, C["skin"], skin, sk, weight=face_w, nu=200, nv=100))
    parts.append(_surface_part("nose", s.nose, rng, rho * 3.0, C["nose"], skin * np.array([1.0, 0.97, 0.96]), sk,
                               nu=64, nv=40))
    for star, side in s.ears:
        p = _surface_part("ear", star, rng, rho * 2.5, C["l_ear" if side > 0 else "r_ear"], skin * np.array([1, 0.95, 0.93]),
                          sk, nu=64, nv=40)
        q = (p.points - star.centre) @ star.rotation  # local: +z out of the head
        concha = _smoothstep(0.9, 0.3, np.sqrt((q[:, 0] / 0.012) ** 2 + (q[:, 1] / 0.02) ** 2)) * (q[:, 2] > 0)
        p.albedo *= (1 - 0.35 * concha)[:, None]
        parts.append(p)
    parts.append(_surface_part("neck", s.neck, rng, rho, C["neck"], skin * 0.95, sk, nu=96, nv=60))
    parts.append(_surface_part("cloth", s.torso, rng, rho, C["cloth"], CLOTH_COLORS[a["cloth_color"]], sk, nu=160, nv=80))
    if style != "bald":
        hp = _surface_part("hair", s.hair, rng, rho * 1.4, C["hair"], hair_rgb, sk, nu=220, nv=120)
        d = _normalize(hp.points)
        t_here = s.hair_radial(d) - head_radial(d)
        hp = hp.keep(t_here > 0.0012)
        if style == "buzz":
            hp.albedo = 0.55 * hp.albedo + 0.45 * skin * 0.8
        parts.append(hp)
    if s.bun is not None:
        parts.append(_surface_part("bun", s.bun, rng, rho * 1.5, C["hair"], hair_rgb, sk, nu=48, nv=32))
    if s.hat is not None:
        hp = _surface_part("hat", s.hat, rng, rho, C["hat"], CLOTH_COLORS[str(rng.choice(list(CLOTH_COLORS)))], sk)
        d = _normalize(hp.points)
        hp = hp.keep(s.hat.radial(d) > head_radial(d) + 0.004)
        parts.append(hp)
        if a["hat"] == "cap":  # a brim: a flat half-disc in front of the forehead
            n_b = int(rho * 0.004 * 2)
            ang = rng.uniform(-1.3, 1.3, n_b)
            rad = np.sqrt(rng.uniform(0, 1, n_b))
            front = head.point(np.array([[0, 0.45, 0.9]]))[0]
            by = front[1] - 0.005
            pts = np.stack([np.sin(ang) * (hw + 0.012), np.full(n_b, by), np.cos(ang) * (0.03 + rad * 0.075)], 1)
            pts[:, 2] += front[2] - 0.03 - 0.01
            pts[:, 1] -= 0.02 * (pts[:, 2] - front[2]).clip(0) / 0.07  # slight downward curve
            brim = _Part("brim", pts, np.tile([0.0, 1.0, 0.0], (n_b, 1)), np.tile(hp.albedo[:1] * 0.9, (n_b, 1)),
                         np.full(n_b, C["hat"]), np.full(n_b, sk / math.sqrt(rho)))
            parts.append(brim)

    # eyes: sphere points restricted to an almond opening; skin in front of the opening is cut away (step 5)
    eye_h = 0.0062 * a["eye_size"]
    gaze = _normalize(np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1), 1.0]))
    iris_rgb = np.asarray(EYE_COLORS[a["eye_color"]])
    for (eye, side) in zip(s.eyes, (1, -1)):
        ep = _surface_part("eye", eye, rng, rho * 12, C["l_eye" if side > 0 else "r_eye"], (0.93, 0.92, 0.9), 0.9,
                           nu=48, nv=32)
        ep = ep.keep(_almond(ep.points, side, s, a) & (ep.points[:, 2] > eye.centre[2]))
        cosg = _normalize(ep.points - eye.centre) @ gaze
        iris = cosg > math.cos(0.52)
        pupil = cosg > math.cos(0.2)
        ep.albedo[iris] = iris_rgb * (0.8 + 0.4 * rng.random((iris.sum(), 1)))
        ep.albedo[pupil] = 0.03
        v = (ep.points[:, 1] - s.eye_y) / eye_h
        ep.albedo[v > 0.55] *= 0.25  # upper lash line shadow
        parts.append(ep)
    return parts


def _face_decals(parts: list[_Part], s: _Solids, a: dict, rng: np.random.Generator) -> None:
    """Step 5: paints the skin part (``parts[0]``): eye openings cut, brows, lips and mouth, blush, beard."""
    hw, ex, eye_y = a["head_half_width"], s.ex, s.eye_y
    smile = 1.0 if a["expression"] == "smile" else 0.0
    skin = np.asarray(a["skin_rgb"])
    hair_rgb = np.asarray(HAIR_COLORS[a["hair_color"]])
    style = a["hair_style"]
    sp = parts[0]
    P = sp.points
    front = P[:, 2] > 0.02
    for side in (1, -1):
        cut = _almond(P, side, s, a)
        sp = sp.keep(~cut)
        P = sp.points
    front = P[:, 2] > 0.02
    labels = sp.labels
    # brows
    bt = a["brow_thickness"]
    arch = rng.uniform(0.002, 0.006)
    brow_col = hair_rgb * 0.7 if a["hair_color"] not in ("white", "grey") else hair_rgb * 0.8
    if a["hair_color"] in DYED or style == "bald":
        brow_col = np.asarray(HAIR_COLORS["dark brown"])
    for side in (1, -1):
        u = (P[:, 0] - side * ex) / 0.02
        yb = eye_y + 0.014 + arch * (1 - u**2) - 0.002 * side * u
        m = front & (u > -1.05) & (u < 1.1) & (P[:, 1] > yb) & (P[:, 1] < yb + bt * (1.1 - 0.35 * side * u))
        labels[m] = C["l_brow" if side > 0 else "r_brow"]
        sp.albedo[m] = brow_col
        sp.points[m] += sp.normals[m] * 0.0012
        sp.sigma[m] *= 0.8
    # lips and mouth
    mw = a["mouth_width"]
    mouth_y = -0.064 - 0.1 * (a["nose_length"] - 0.05)
    opening = rng.uniform(0.006, 0.013) if a["expression"] == "open mouth" else 0.0
    u = P[:, 0] / mw
    line = mouth_y + smile * 0.006 * u**2
    hu = 0.0055 * a["lip_fullness"] * np.sqrt(np.clip(1 - u**2, 0, 1)) * (1 - 0.25 * np.exp(-(u / 0.15) ** 2))
    hl = 0.0075 * a["lip_fullness"] * np.sqrt(np.clip(1 - u**2, 0, 1))
    inside = front & (np.abs(u) < 1)
    upper = inside & (P[:, 1] > line + opening / 2) & (P[:, 1] < line + opening / 2 + hu)
    lower = inside & (P[:, 1] < line - opening / 2) & (P[:, 1] > line - opening / 2 - hl)
    gap = inside & (np.abs(P[:, 1] - line) <= opening / 2) & (np.abs(u) < 0.92)
    lip_rgb = skin * np.array([0.85, 0.55, 0.55]) + np.array([0.08, 0.0, 0.0])
    labels[upper], labels[lower] = C["u_lip"], C["l_lip"]
    sp.albedo[upper] = lip_rgb
    sp.albedo[lower] = lip_rgb * 1.05
    bulge_u = np.sqrt(np.clip((P[upper, 1] - line[upper] - opening / 2) / np.maximum(hu[upper], 1e-6), 0, 1))
    sp.points[upper] += sp.normals[upper] * (0.0025 * np.sin(np.pi * bulge_u))[:, None]
    bulge_l = np.clip((line[lower] - opening / 2 - P[lower, 1]) / np.maximum(hl[lower], 1e-6), 0, 1)
    sp.points[lower] += sp.normals[lower] * (0.003 * np.sin(np.pi * bulge_l))[:, None]
    if opening > 0:
        labels[gap] = C["mouth"]
        teeth = gap & (P[:, 1] > line + opening / 2 - 0.004) & (np.abs(u) < 0.6)
        sp.albedo[gap] = (0.22, 0.05, 0.06)
        sp.albedo[teeth] = (0.92, 0.9, 0.85)
        sp.points[gap] -= sp.normals[gap] * 0.004
    else:  # a thin dark line between the lips
        seam = inside & (np.abs(P[:, 1] - line) < 0.0009)
        sp.albedo[seam] *= 0.45
    # skin variation: blush on cheeks, slight noise
    cheek = np.exp(-(((np.abs(P[:, 0]) - 0.045) / 0.02) ** 2 + ((P[:, 1] + 0.03) / 0.02) ** 2)) * front
    sp.albedo = sp.albedo * (1 - 0.08 * cheek[:, None] * np.array([0, 1, 1]))
    if a["beard"]:
        beard_col = np.asarray(HAIR_COLORS[a["hair_color"] if a["hair_color"] not in DYED else "brown"]) * 0.8
        low = (P[:, 1] < mouth_y + 0.012) & (P[:, 2] > 0.0) & (labels == C["skin"]) & (np.abs(P[:, 0]) < hw - 0.008)
        low &= ~((np.abs(u) < 1.15) & (P[:, 1] > line - 0.012) & (P[:, 1] < line + 0.004))  # keep lips free
        low |= (labels == C["skin"]) & (np.abs(P[:, 0]) < mw * 1.1) & (P[:, 1] > line + 0.004) & (P[:, 1] < line + 0.013) & front
        labels[low] = C["hair"]
        sp.albedo[low] = beard_col
        sp.points[low] += sp.normals[low] * 0.002
    sp.labels = labels
    parts[0] = sp


def _accessories(parts: list[_Part], s: _Solids, a: dict, rng: np.random.Generator, rho: float) -> list[_Star]:
    """Step 6: glasses, earrings, necklace and the clothing style. Returns the extra solids (a turtleneck)."""
    hw, ex, eye_y, eye_r, neck_rx, neck_rz = a["head_half_width"], s.ex, s.eye_y, s.eye_r, s.neck_rx, s.neck_rz
    sk = SIGMA_K
    if a["glasses"] != "none":
        frame_rgb = np.asarray([(0.05, 0.05, 0.05), (0.45, 0.25, 0.1), (0.75, 0.7, 0.6), (0.6, 0.1, 0.1)][rng.integers(4)])
        rw, rh = rng.uniform(0.021, 0.026), rng.uniform(0.014, 0.019)
        gz = max(s.eyes[0].centre[2] + eye_r + 0.014, s.face_point(0, eye_y)[2] + 0.006)
        th = np.linspace(0, 2 * np.pi, 90, endpoint=False)
        for side in (1, -1):
            cx = side * (ex + 0.002)
            ring = np.stack([cx + rw * np.sign(np.cos(th)) * np.abs(np.cos(th)) ** 0.8,
                             eye_y + rh * np.sign(np.sin(th)) * np.abs(np.sin(th)) ** 0.8,
                             np.full_like(th, gz) - 0.004 * np.cos(th) ** 2 * side * np.sign(np.cos(th))], 1)
            parts.append(_curve_part("glasses", ring, 0.0012, C["eyeglasses"], frame_rgb))
            m = int(rho * math.pi * rw * rh * 3)
            rr, aa = np.sqrt(rng.random(m)), rng.uniform(0, 2 * np.pi, m)
            lens = np.stack([cx + rw * 0.95 * rr * np.cos(aa), eye_y + rh * 0.95 * rr * np.sin(aa), np.full(m, gz)], 1)
            sun = a["glasses"] == "sunglasses"
            lp = _Part("lens", lens, np.tile([0.0, 0.0, 1.0], (m, 1)),
                       np.tile((0.05, 0.06, 0.08) if sun else (0.85, 0.92, 0.95), (m, 1)), np.full(m, C["eyeglasses"]),
                       np.full(m, 0.9 / math.sqrt(rho * 3)), opacity=0.9 if sun else 0.06, shade=False)
            parts.append(lp)
            temple_start = np.array([side * (ex + 0.002 + rw), eye_y + rh * 0.4, gz - 0.004])
            temple_end = np.array([side * (hw + 0.006), eye_y + 0.004, -0.015])
            tt = np.linspace(0, 1, 40)[:, None]
            temple = temple_start * (1 - tt) + temple_end * tt
            temple[:, 0] += side * 0.006 * np.sin(np.pi * tt[:, 0])
            parts.append(_curve_part("glasses", temple, 0.0011, C["eyeglasses"], frame_rgb))
        bt_ = np.linspace(-1, 1, 20)
        bridge = np.stack([bt_ * (ex - rw + 0.002), eye_y + rh * 0.45 + 0.003 * (1 - bt_**2), np.full_like(bt_, gz + 0.002)], 1)
        parts.append(_curve_part("glasses", bridge, 0.0012, C["eyeglasses"], frame_rgb))
    if a["earrings"]:
        metal = np.asarray([(0.85, 0.7, 0.3), (0.8, 0.8, 0.82)][rng.integers(2)])
        for star, side in s.ears:
            lobe = star.point((star.rotation.T @ np.array([0, -1.0, 0.0]))[None])[0] + np.array([side * 0.002, -0.004, 0])
            if rng.random() < 0.5:  # hoop
                th = np.linspace(0, 2 * np.pi, 50)
                ring = lobe + 0.008 * np.stack([np.zeros_like(th), np.cos(th) - 1, np.sin(th)], 1)
                parts.append(_curve_part("earring", ring, 0.0011, C["earring"], metal))
            else:  # stud / drop
                ball = _Star(lobe + np.array([side * 0.002, -0.004, 0]), lambda d: np.full(len(d), 0.0035))
                parts.append(_surface_part("earring", ball, rng, rho * 20, C["earring"], metal, sk, nu=16, nv=12))
    if a["necklace"]:
        th = np.linspace(0, 2 * np.pi, 160)
        nrx, nrz = neck_rx + 0.006, neck_rx * 0.92 + 0.01
        chain = np.stack([nrx * np.sin(th), -0.165 - 0.03 * np.clip(np.cos(th), 0, 1) ** 2, -0.022 + nrz * np.cos(th)], 1)
        parts.append(_curve_part("necklace", chain, 0.0014, C["necklace"],
                                 np.asarray([(0.85, 0.7, 0.3), (0.8, 0.8, 0.82), (0.9, 0.9, 0.88)][rng.integers(3)])))

    # clothing styles
    tp = parts[[p.name for p in parts].index("cloth")]
    base_cloth = np.asarray(CLOTH_COLORS[a["cloth_color"]])
    if a["cloth_style"] == "striped":
        other = np.asarray(CLOTH_COLORS[str(rng.choice(list(CLOTH_COLORS)))])
        stripe = np.sin(tp.points[:, 1] * 2 * np.pi / rng.uniform(0.015, 0.03)) > 0
        tp.albedo[stripe] = other
    if a["cloth_style"] in ("collar", "turtleneck"):
        rad = np.sqrt(tp.points[:, 0] ** 2 + (tp.points[:, 2] + 0.02) ** 2)
        collar = rad < neck_rx + (0.022 if a["cloth_style"] == "collar" else 0.012)
        tp.albedo[collar] = base_cloth * 0.75 if a["cloth_style"] == "turtleneck" else np.asarray((0.95, 0.95, 0.95))
    if a["cloth_style"] != "turtleneck":
        return []
    tn_top = rng.uniform(-0.12, -0.095)
    sleeve = _Star((0, -0.16, -0.018), lambda d: np.minimum(
        1.0 / np.sqrt((d[:, 0] / (neck_rx + 0.006)) ** 2 + (d[:, 2] / (neck_rz + 0.006)) ** 2 + 1e-12),
        np.where(d[:, 1] > 0, (tn_top + 0.16), 0.1) / np.maximum(np.abs(d[:, 1]), 1e-6)), _rot_x(-0.12))
    parts.append(_surface_part("cloth", sleeve, rng, rho, C["cloth"], base_cloth * 0.9, sk, nu=96, nv=48))
    return [sleeve]


def _cull(parts: list[_Part], s: _Solids, extra: list[_Star], a: dict, rng: np.random.Generator,
          rho: float) -> list[_Part]:
    """Step 7: drops points hidden inside other solids, and closes the clipped torso with a cap."""
    hair = s.hair if a["hair_style"] != "bald" else None
    opt = lambda *solids: [x for x in solids if x is not None]  # noqa: E731
    occluders = {
        "skin": [s.nose, *[e for e, _ in s.ears], s.neck] + opt(hair, s.hat, s.bun),
        "nose": [s.head], "ear": [s.head] + opt(hair, s.hat),
        "neck": [s.head, s.torso] + extra + opt(hair),
        "cloth": [s.neck] + opt(hair), "hair": [s.torso] + opt(s.hat),
        "bun": [s.hair], "hat": [], "brim": [], "eye": [], "glasses": opt(hair), "lens": [],
        "earring": [], "necklace": [s.torso],
    }
    final: list[_Part] = []
    for p in parts:
        keep = np.linalg.norm(p.points, axis=1) < CLIP_RADIUS
        for solid in occluders.get(p.name, []):
            keep &= ~solid.inside(p.points, margin=0.0005)
        final.append(p.keep(keep))
    # bust cut: close the clipped torso with a cap on the clipping sphere
    n_cap = int(rho * 0.35 * 0.06)
    cap_dirs = _normalize(rng.normal(size=(n_cap * 6, 3)))
    cap_pts = cap_dirs * (CLIP_RADIUS - 0.002)
    in_torso = s.torso.inside(cap_pts)
    cap_pts, cap_dirs = cap_pts[in_torso], cap_dirs[in_torso]
    if hair is not None:
        hidden = hair.inside(cap_pts)
        cap_pts, cap_dirs = cap_pts[~hidden], cap_dirs[~hidden]
    cap_lab = np.where(s.neck.inside(cap_pts), C["neck"], C["cloth"])
    skin, base_cloth = np.asarray(a["skin_rgb"]), np.asarray(CLOTH_COLORS[a["cloth_color"]])
    cap_rgb = np.where(cap_lab[:, None] == C["neck"], skin * 0.7, base_cloth * 0.7)
    spacing = math.sqrt(4 * math.pi * CLIP_RADIUS**2 / (n_cap * 6))
    final.append(_Part("cap", cap_pts, cap_dirs, cap_rgb, cap_lab, np.full(len(cap_pts), 0.9 * spacing)))
    return final


def _hair_texture(parts: list[_Part], style: str, rng: np.random.Generator) -> None:
    """Step 8: hair strands along the flow from the crown with per-strand colour noise; skin and cloth noise."""
    crown = np.array([0.0, 0.13, -0.03])
    strand_noise = _wave_noise(rng, 6, 60.0)
    for p in parts:
        if p.name in ("hair", "bun") and len(p.points):
            flow = p.points - crown
            if style == "fringe":
                fr = _smoothstep(0.04, 0.08, p.points[:, 2])[:, None]
                flow = flow * (1 - fr) + np.array([0.0, -1.0, 0.3]) * fr
            if style == "curly":
                flow = flow + 0.05 * np.stack([strand_noise(p.points * k) for k in (1.0, 1.3, 0.7)], 1)
            flow = flow - (flow * p.normals).sum(1, keepdims=True) * p.normals
            p.flow = _normalize(flow + 1e-6 * rng.normal(size=flow.shape))
            across = np.arctan2(p.points[:, 0], p.points[:, 2] + 0.05) * (90 if style != "curly" else 30)
            tex = 0.78 + 0.22 * np.sin(across + 3 * strand_noise(p.points)) + 0.08 * rng.normal(size=len(p.points))
            p.albedo = p.albedo * tex[:, None] + 0.04 * (tex[:, None] - 0.8)
            p.stretch = 1.8 if style != "curly" else 1.3
        elif p.name == "skin":
            p.albedo = p.albedo * (1 + 0.025 * rng.normal(size=(len(p.points), 1)))
        elif p.name == "cloth":
            p.albedo = p.albedo * (1 + 0.04 * strand_noise(p.points * 0.5))[:, None]


def _to_gaussians(parts: list[_Part], pose: np.ndarray, rng: np.random.Generator) -> tuple[Gaussians, Tensor]:
    """Turns surface samples into flat Gaussian discs with baked Lambert shading."""
    pts = np.concatenate([p.points for p in parts])
    nrm = np.concatenate([p.normals for p in parts])
    # the head (not the torso) follows the small pose rotation, about the neck base
    pivot = np.array([0.0, -0.1, -0.02])
    body = np.concatenate([np.full(len(p.points), p.name in ("cloth", "cap", "necklace")) for p in parts])
    w = _smoothstep(-0.16, -0.06, pts[:, 1])[:, None] * (~body)[:, None]
    rotated = (pts - pivot) @ pose.T + pivot
    pts = pts * (1 - w) + rotated * w
    nrm = _normalize(nrm * (1 - w) + (nrm @ pose.T) * w)
    albedo = np.concatenate([p.albedo for p in parts])
    shade = np.concatenate([np.full(len(p.points), p.shade) for p in parts])
    lam = np.clip(nrm @ LIGHT_DIR, 0, 1)
    fill = np.clip(nrm @ np.array([-0.6, 0.1, 0.5]) / np.linalg.norm([-0.6, 0.1, 0.5]), 0, 1)
    light = 0.42 + 0.62 * lam + 0.12 * fill + 0.05 * np.clip(nrm[:, 1], 0, 1)
    colors = np.where(shade[:, None], albedo * light[:, None], albedo)
    # frames: t1 along the flow (or any tangent), t2 = n × t1
    flow = np.concatenate([p.flow if p.flow is not None else np.zeros_like(p.points) for p in parts])
    helper = np.where(np.abs(nrm[:, 1:2]) < 0.9, np.array([[0.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]))
    t1 = flow - (flow * nrm).sum(1, keepdims=True) * nrm
    fallback = np.cross(nrm, helper)
    t1 = np.where(np.linalg.norm(t1, axis=1, keepdims=True) > 1e-6, t1, fallback)
    t1 = _normalize(t1)
    t2 = np.cross(nrm, t1)
    frames = np.stack([t1, t2, nrm], 2)  # [N, 3, 3] columns are the axes
    quats = _quat_from_frames(frames)
    sigma = np.concatenate([p.sigma for p in parts])
    stretch = np.concatenate([np.full(len(p.points), p.stretch) for p in parts])
    scales = np.stack([sigma * np.sqrt(stretch), sigma / np.sqrt(stretch), np.maximum(0.2 * sigma, 2e-4)], 1)
    opac = np.concatenate([np.full(len(p.points), p.opacity) for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    g = Gaussians(
        means=torch.from_numpy(pts.astype(np.float32)),
        quats=torch.from_numpy(quats.astype(np.float32)),
        scales=torch.from_numpy(scales.astype(np.float32)),
        opacities=torch.from_numpy(opac.astype(np.float32)),
        colors=torch.from_numpy(np.clip(colors, 0.0, 1.0).astype(np.float32)),
    )
    return g, torch.from_numpy(labels.astype(np.int64))


def render_head(head: SyntheticHead, cameras: Cameras, background: float = 1.0, backend: str = "auto",
                alpha_threshold: float = 0.5) -> dict[str, Tensor]:
    """Renders a synthetic head: colour over a white background, alpha and a 19-class label map.

    Labels are the argmax of the rendered one-hot class features; pixels whose alpha is below
    ``alpha_threshold`` are background (0).

    Args:
        head: from :func:`make_head`.
        cameras: V cameras (OpenCV, world-to-camera viewmats, pixel Ks).
        background: background grey level of ``rgb`` (1.0 = white, the project convention).
        backend: renderer backend (see :func:`perchead.render.render`).
        alpha_threshold: alpha below which a pixel is labelled background.

    Returns:
        dict with ``rgb`` ``[V, 3, H, W]``, ``alpha`` ``[V, 1, H, W]``, ``labels`` ``[V, H, W]`` long.
    """
    from perchead.render import render

    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a perchead.geometry.cameras.Cameras, got {type(cameras).__name__}")
    onehot = torch.nn.functional.one_hot(head.labels, NUM_CLASSES).float()  # [N, 19]
    with torch.no_grad():
        out = render(head.gaussians, cameras.viewmats, cameras.Ks, cameras.width, cameras.height,
                     background=torch.full((3,), float(background)), backend=backend, features=onehot)
    rgb, alpha, feats = out.rgb[0], out.alpha[0], out.features[0]  # [V, 3, H, W], [V, 1, H, W], [V, 19, H, W]
    labels = feats.argmax(1)  # [V, H, W]
    labels[alpha[:, 0] < alpha_threshold] = 0
    return {"rgb": rgb.clamp(0, 1), "alpha": alpha.clamp(0, 1), "labels": labels.long()}


# ------------------------------------------------------------------------------------ on-the-fly data
class SyntheticHeads(torch.utils.data.Dataset):
    """On-the-fly multi-view samples of synthetic heads, in the sample dict format of :mod:`perchead.data`.

    Every item builds the head of one seed, draws an input view (including extreme ones, see
    :func:`perchead.data.views.sample_input_view`) and ``n_targets`` target views (always starting with
    extreme ones), and renders all of them over white with the fixed input framing (orbit radius 0.7 m,
    30° field of view).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint seed ranges, :data:`SPLITS`).
        image_size: square image side in pixels.
        n_targets: target views per sample.
        length: number of subjects used from the split (default: the whole split).
        radius: camera distance in metres.
        fov_deg: horizontal field of view.
        p_extreme: probability of an extreme input view.
        n_extreme: how many of the targets are extreme w.r.t. the input.
        view_seed: None draws fresh random views on every access; an int makes views a function of
            (view_seed, subject seed), e.g. for validation.
        density: Gaussian budget multiplier for :func:`make_head`.
        backend: renderer backend.
    """

    def __init__(self, split: str = "train", image_size: int = 128, n_targets: int = 4, length: int | None = None,
                 radius: float = 0.7, fov_deg: float = 30.0, p_extreme: float = 0.35, n_extreme: int = 2,
                 view_seed: int | None = None, density: float = 1.0, backend: str = "auto"):
        self.seeds = split_seeds(split)
        if length is not None:
            if not 0 < length <= len(self.seeds):
                raise ValueError(f"length must be in 1..{len(self.seeds)} for split {split!r}, got {length}")
            self.seeds = self.seeds[:length]
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if n_targets < 1:
            raise ValueError(f"n_targets must be at least 1, got {n_targets}")
        self.split, self.image_size, self.n_targets = split, image_size, n_targets
        self.radius, self.fov_deg, self.p_extreme, self.n_extreme = radius, fov_deg, p_extreme, n_extreme
        self.view_seed, self.density, self.backend = view_seed, density, backend

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict:
        seed = self.seeds[index]
        rng = np.random.default_rng(None if self.view_seed is None else [self.view_seed, seed])
        head = make_head(seed, density=self.density)
        view_in = sample_input_view(rng, self.p_extreme)
        views = [view_in] + sample_target_views(rng, view_in, self.n_targets, self.n_extreme)
        az, el = zip(*views)
        cams = orbit_cameras(az, el, radius=self.radius, fov_deg=self.fov_deg, size=self.image_size)
        out = render_head(head, cams, backend=self.backend)
        return {
            "image": out["rgb"][0], "mask": out["alpha"][0],  # [3, H, W], [1, H, W]
            "labels": out["labels"][0],  # [H, W] input view's class ids (editing input, §3.5)
            "input_viewmat": cams.viewmats[0], "input_K": cams.Ks[0],  # [4, 4], [3, 3]
            "target_images": out["rgb"][1:], "target_masks": out["alpha"][1:],  # [V, 3, H, W], [V, 1, H, W]
            "target_viewmats": cams.viewmats[1:], "target_Ks": cams.Ks[1:],  # [V, 4, 4], [V, 3, 3]
            "target_labels": out["labels"][1:],  # [V, H, W]
            "caption": head.caption, "subject": f"synthetic-{seed}",
        }
