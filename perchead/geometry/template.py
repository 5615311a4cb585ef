"""The canonical head template that every PercHead prediction starts from (paper §3.2, supplement §7).

PercHead's 3D decoder starts from a fixed head template "upsampled to 65k vertices", grouped into 4,096 3D
patches of 16 vertices; each patch becomes one decoder token and, through the Gaussian head, 16 Gaussians,
so Gaussian ``k`` descends from template vertex ``k``. The paper uses FLAME's template; FLAME's licence
forbids redistribution, so :func:`build_template` builds our own head-and-neck surface in canonical head
space (0.147 m wide, 0.23 m from crown to chin), meshes it with near-uniform vertices and orders them into
spatially compact patches — or takes a FLAME template the user supplies (``flame_path``).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

PATCH_SIZE = 16  # vertices (= Gaussians) per 3D patch; paper §3.2
MIN_GAUSSIANS = 128  # fewer vertices cannot carry the head's features
CROWN_Y = 0.115  # height of the top of the head above the head centre, metres (ours)

# --- Anatomy of the built-in head (all ours; metres, canonical head space) -----------------------------
# Ellipsoids: (centre, radii). Eyes and sockets are mirrored to ±x (the head's own left is +x).
_CRANIUM = ((0.0, 0.012, -0.005), (0.074, 0.103, 0.097))
_FOREHEAD = ((0.0, 0.035, 0.035), (0.062, 0.07, 0.06))
_JAW = ((0.0, -0.055, 0.028), (0.058, 0.06, 0.064))
_CHEEK = ((0.043, -0.022, 0.05), (0.027, 0.028, 0.035))
_CHIN = ((0.0, -0.094, 0.072), (0.021, 0.021, 0.02))
_BROW = ((0.031, 0.035, 0.079), (0.027, 0.009, 0.014))
_SOCKET = ((0.032, 0.016, 0.104), (0.019, 0.014, 0.02))
_EYE = ((0.032, 0.016, 0.077), (0.0125, 0.0125, 0.0125))
_UPPER_LIP = ((0.0, -0.047, 0.094), (0.023, 0.0075, 0.011))
_LOWER_LIP = ((0.0, -0.061, 0.091), (0.02, 0.0085, 0.011))
_NOSTRIL = ((0.0105, -0.025, 0.1), (0.0085, 0.0065, 0.009))
_NOSE = ((0.0, 0.026, 0.091), (0.0, -0.023, 0.113), 0.0065, 0.0105)  # bridge, tip, radii at both ends
_EAR = ((0.079, 0.004, -0.012), (0.014, 0.031, 0.019), math.radians(-12.0))  # tilted back about x
_CONCHA = ((0.093, 0.0, -0.007), (0.006, 0.012, 0.008))
_NECK = (-0.215, 0.0, -0.014, 0.05, 0.054)  # bottom y, top y, centre z, x radius, z radius
_EXTENT = 0.34  # every surface point lies within this distance of the origin


@dataclass
class Template:
    """A canonical head mesh whose vertices are grouped into patches of ``patch_size`` consecutive vertices.

    Attributes:
        vertices: canonical head space, metres; patch ``p`` owns vertices ``16p .. 16p+15``. ``[N, 3]``
        faces: triangles indexing ``vertices``, counter-clockwise seen from outside. ``[F, 3]`` int64
        normals: unit outward vertex normals. ``[N, 3]``
        patch_size: vertices per patch (16).
    """

    vertices: Tensor  # [N, 3]
    faces: Tensor  # [F, 3]
    normals: Tensor  # [N, 3]
    patch_size: int = PATCH_SIZE

    @property
    def n_patches(self) -> int:
        """Number of patches P = N / patch_size."""
        return self.vertices.shape[0] // self.patch_size

    def patch_vertices(self) -> Tensor:
        """The vertices grouped by patch. ``[P, 16, 3]``"""
        return self.vertices.reshape(self.n_patches, self.patch_size, 3)  # [P, 16, 3]


# --- Signed distance-like field of the head --------------------------------------------------------------
def _ellipsoid(p: np.ndarray, centre, radii) -> np.ndarray:
    """Lower bound of the signed distance to an axis-aligned ellipsoid. ``[M, 3]`` → ``[M]``"""
    q = (p - np.asarray(centre)) / np.asarray(radii)  # [M, 3]
    return (np.sqrt((q * q).sum(-1)) - 1.0) * min(radii)


def _mirrored(p: np.ndarray, centre, radii) -> np.ndarray:
    """Ellipsoid placed at ±x (both sides of the face). ``[M]``"""
    q = p.copy()
    q[:, 0] = np.abs(q[:, 0])
    return _ellipsoid(q, centre, radii)


def _smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum with blend width ``k`` (metres)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smooth_subtract(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """``a`` with ``b`` carved out, blended over ``k`` metres."""
    return -_smooth_union(-a, b, k)


def _nose(p: np.ndarray) -> np.ndarray:
    """A rounded cone from the bridge between the eyes to the tip. ``[M]``"""
    a, b, ra, rb = np.asarray(_NOSE[0]), np.asarray(_NOSE[1]), _NOSE[2], _NOSE[3]
    ab = b - a
    h = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)  # [M]
    return np.linalg.norm(p - (a + h[:, None] * ab), axis=-1) - (ra + h * (rb - ra))


def _ear(p: np.ndarray) -> np.ndarray:
    """Ear flaps at ±x, tilted back, with a hollow (concha). ``[M]``"""
    (centre, radii, tilt), q = _EAR, p.copy()
    q[:, 0] = np.abs(q[:, 0])
    q = q - np.asarray(centre)
    c, s = math.cos(tilt), math.sin(tilt)
    q = np.stack([q[:, 0], c * q[:, 1] - s * q[:, 2], s * q[:, 1] + c * q[:, 2]], axis=-1)  # [M, 3]
    return _smooth_subtract(_ellipsoid(q, (0.0, 0.0, 0.0), radii), _mirrored(p, *_CONCHA), 0.004)


def _neck(p: np.ndarray) -> np.ndarray:
    """An elliptic cylinder, closed at the bottom. ``[M]``"""
    bottom, top, cz, rx, rz = _NECK
    q = np.stack([p[:, 0] / rx, (p[:, 2] - cz) / rz], axis=-1)  # [M, 2]
    side = (np.sqrt((q * q).sum(-1)) - 1.0) * min(rx, rz)  # [M]
    cap = np.maximum(bottom - p[:, 1], p[:, 1] - top)  # [M]
    outside = np.sqrt(np.maximum(side, 0.0) ** 2 + np.maximum(cap, 0.0) ** 2)
    return outside + np.minimum(np.maximum(side, cap), 0.0)


def _head_parts(p: np.ndarray) -> dict[str, np.ndarray]:
    """Distance-like value of every primitive at points ``p``. ``[M, 3]`` → name → ``[M]``"""
    return {
        "cranium": _ellipsoid(p, *_CRANIUM),
        "forehead": _ellipsoid(p, *_FOREHEAD),
        "jaw": _ellipsoid(p, *_JAW),
        "cheek": _mirrored(p, *_CHEEK),
        "chin": _ellipsoid(p, *_CHIN),
        "brow": _mirrored(p, *_BROW),
        "socket": _mirrored(p, *_SOCKET),
        "eye": _mirrored(p, *_EYE),
        "upper_lip": _ellipsoid(p, *_UPPER_LIP),
        "lower_lip": _ellipsoid(p, *_LOWER_LIP),
        "nostril": _mirrored(p, *_NOSTRIL),
        "nose": _nose(p),
        "ear": _ear(p),
        "neck": _neck(p),
    }


def _head_field(p: np.ndarray) -> np.ndarray:
    """Signed distance-like field of the head (negative inside, Lipschitz ≤ 1). ``[M, 3]`` → ``[M]``"""
    d = _head_parts(p)
    f = _smooth_union(d["cranium"], d["forehead"], 0.02)
    f = _smooth_union(f, d["jaw"], 0.025)
    f = _smooth_union(f, d["cheek"], 0.02)
    f = _smooth_union(f, d["chin"], 0.015)
    f = _smooth_union(f, d["brow"], 0.012)
    f = _smooth_subtract(f, d["socket"], 0.008)
    f = _smooth_union(f, d["eye"], 0.003)
    f = _smooth_union(f, d["nose"], 0.012)
    f = _smooth_union(f, d["nostril"], 0.01)
    f = _smooth_union(f, _smooth_union(d["upper_lip"], d["lower_lip"], 0.002), 0.007)
    f = _smooth_union(f, d["ear"], 0.008)
    return _smooth_union(f, d["neck"], 0.03)


def _cast(directions: np.ndarray) -> np.ndarray:
    """Outermost surface crossing along rays from the origin, by sphere tracing inward. ``[M, 3]`` → ``[M]``"""
    t = np.full(len(directions), _EXTENT)  # [M]
    active = np.arange(len(directions))
    for _ in range(400):
        g = _head_field(directions[active] * t[active, None])  # [A]
        t[active] -= np.maximum(g, 2e-4)
        active = active[g > 1e-5]
        if active.size == 0:
            break
    for _ in range(3):  # polish: Newton-like steps on the distance-like field, both directions
        t -= _head_field(directions * t[:, None])
    return t


def _directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit vectors; ``theta`` from +Y (crown) to −Y (neck), ``phi`` = 0 toward +Z (face), π/2 toward +X."""
    theta, phi = np.broadcast_arrays(theta, phi)
    s = np.sin(theta)
    return np.stack([s * np.sin(phi), np.cos(theta), s * np.cos(phi)], axis=-1)


# --- Mesh: latitude rings zipped into strips ----------------------------------------------------------------
def _largest_remainder(weights: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing exactly to ``total``, each ≥ ``minimum``."""
    if minimum * len(weights) > total:
        raise ValueError(f"cannot give {len(weights)} rings at least {minimum} vertices each from {total}")
    share = weights / weights.sum() * total
    counts = np.maximum(np.floor(share).astype(np.int64), minimum)
    while counts.sum() != total:
        excess = share - counts
        if counts.sum() < total:
            counts[np.argmax(excess)] += 1
        else:
            excess[counts <= minimum] = np.inf
            counts[np.argmin(excess)] -= 1
    return counts


def _zip_rings(a: np.ndarray, phi_a: np.ndarray, b: np.ndarray, phi_b: np.ndarray) -> np.ndarray:
    """Triangle strip between two closed rings of vertex ids, each sorted by increasing angle. ``[na+nb, 3]``

    Walking both rings by angle, each step advances one ring and emits one triangle, so the strip uses
    every edge of both rings once. Winding: ``a`` is the ring nearer the crown; faces are counter-clockwise
    seen from outside.
    """
    na, nb = len(a), len(b)
    events = np.concatenate([phi_a, phi_b])
    is_a = np.concatenate([np.ones(na, bool), np.zeros(nb, bool)])
    order = np.argsort(events, kind="stable")
    is_a = is_a[order]
    # index of the current vertex on each ring before each event (ring start = its last vertex, cyclic)
    ia = (np.cumsum(is_a) - 1) % na
    ib = (np.cumsum(~is_a) - 1) % nb
    ia_prev, ib_prev = (ia - is_a) % na, (ib - ~is_a) % nb
    tri = np.where(
        is_a[:, None],
        np.stack([a[ia_prev], b[ib_prev], a[ia]], -1),  # advance on a: (a_i-1, b_j, a_i)
        np.stack([a[ia_prev], b[ib_prev], b[ib]], -1),  # advance on b: (a_i, b_j-1, b_j)
    )
    return tri


def _head_mesh(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The built-in head with exactly ``n`` vertices: (vertices ``[n, 3]``, faces ``[2n-4, 3]``)."""
    # 1. Profile: cast a coarse grid of rays to measure meridian arc length and ring perimeters.
    n_theta, n_phi = 257, 128
    theta = np.linspace(0.0, math.pi, n_theta)  # [T]
    phi = np.arange(n_phi) * (2 * math.pi / n_phi)  # [Q]
    dirs = _directions(theta[:, None], phi[None, :]).reshape(-1, 3)  # [T*Q, 3]
    grid = (dirs * _cast(dirs)[:, None]).reshape(n_theta, n_phi, 3)  # [T, Q, 3]
    meridian = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(grid, axis=0), axis=-1).mean(1))])  # [T]
    perimeter = np.linalg.norm(np.roll(grid, -1, axis=1) - grid, axis=-1).sum(1)  # [T]
    area = float((0.5 * (perimeter[1:] + perimeter[:-1]) * np.diff(meridian)).sum())  # trapezoid rule
    # 2. Rings: equilateral-ish triangles with rows d apart and vertices 2d/√3 apart along each row.
    spacing = math.sqrt(math.sqrt(3.0) * area / (2.0 * n))
    n_rings = max(2, int(round(meridian[-1] / spacing)) - 1)
    s_rings = np.arange(1, n_rings + 1) * (meridian[-1] / (n_rings + 1))  # [K]
    theta_rings = np.interp(s_rings, meridian, theta)  # [K]
    counts = _largest_remainder(np.interp(theta_rings, theta, perimeter), n - 2, 3)  # [K]
    # 3. Place each ring's vertices evenly along its length (measured on the coarse grid, interpolated).
    idx = np.clip(np.searchsorted(theta, theta_rings) - 1, 0, n_theta - 2)  # [K]
    w = ((theta_rings - theta[idx]) / (theta[idx + 1] - theta[idx]))[:, None, None]
    ring_curves = (1 - w) * grid[idx] + w * grid[idx + 1]  # [K, Q, 3]
    seg = np.linalg.norm(np.roll(ring_curves, -1, axis=1) - ring_curves, axis=-1)  # [K, Q]
    arc = np.concatenate([np.zeros((n_rings, 1)), np.cumsum(seg, 1)], 1)  # [K, Q+1]
    phi_closed = np.append(phi, 2 * math.pi)  # [Q+1]
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    ring_phis, ring_thetas = [], []
    for k in range(n_rings):
        u = (np.arange(counts[k]) + (k * golden) % 1.0) / counts[k] * arc[k, -1]  # staggered rows
        ring_phis.append(np.interp(u, arc[k], phi_closed))
        ring_thetas.append(np.full(counts[k], theta_rings[k]))
    all_theta = np.concatenate([[0.0], *ring_thetas, [math.pi]])  # [n]
    all_phi = np.concatenate([[0.0], *ring_phis, [0.0]])  # [n]
    dirs = _directions(all_theta, all_phi)  # [n, 3]
    vertices = dirs * _cast(dirs)[:, None]  # [n, 3]
    # 4. Faces: crown fan, strips between consecutive rings, neck-bottom fan.
    starts = np.concatenate([[1], 1 + np.cumsum(counts)])  # [K+1]
    rings = [np.arange(starts[k], starts[k + 1]) for k in range(n_rings)]
    faces = []
    first, last = rings[0], rings[-1]
    faces.append(np.stack([np.zeros_like(first), np.roll(first, 1), first], -1))  # crown
    for k in range(n_rings - 1):
        faces.append(_zip_rings(rings[k], ring_phis[k], rings[k + 1], ring_phis[k + 1]))
    faces.append(np.stack([np.full_like(last, n - 1), last, np.roll(last, 1)], -1))  # neck bottom
    faces = np.concatenate(faces).astype(np.int64)  # [2n-4, 3]
    if _signed_volume(vertices, faces) < 0:
        faces = faces[:, ::-1].copy()
    return vertices, faces


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed mesh, positive when its faces wind counter-clockwise seen from outside."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals. ``[N, 3]``"""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    face_n = np.cross(b - a, c - a)  # [F, 3], length = 2 × area
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, faces[:, i], face_n)
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    fallback = vertices / np.maximum(np.linalg.norm(vertices, axis=-1, keepdims=True), 1e-12)
    return np.where(length > 1e-20, normals / np.maximum(length, 1e-20), fallback)


# --- Patches ---------------------------------------------------------------------------------------------
def _patch_order(vertices: np.ndarray, n_patches: int) -> np.ndarray:
    """Permutation putting each patch's vertices together: recursive balanced median bisection. ``[N]``

    A group of ``m`` patches is split across the longest side of its bounding box into groups of
    ``m // 2`` and ``m - m // 2`` patches (exactly 16 vertices each at the leaves).
    """
    size = len(vertices) // n_patches
    order = np.empty(len(vertices), dtype=np.int64)
    stack = [(np.arange(len(vertices)), n_patches, 0)]  # (vertex ids, patches in the group, first slot)
    while stack:
        ids, m, start = stack.pop()
        if m == 1:
            order[start : start + size] = ids
            continue
        pts = vertices[ids]
        axis = int(np.argmax(pts.max(0) - pts.min(0)))
        left = (m // 2) * size
        part = np.argpartition(pts[:, axis], left - 1)
        stack.append((ids[part[:left]], m // 2, start))
        stack.append((ids[part[left:]], m - m // 2, start + left))
    return order


def patch_radii(template: Template) -> Tensor:
    """Largest distance of a vertex to its patch centroid, per patch (metres). ``[P]``"""
    patches = template.patch_vertices()  # [P, 16, 3]
    return (patches - patches.mean(1, keepdim=True)).norm(dim=-1).amax(1)  # [P]


# --- Optional FLAME template -----------------------------------------------------------------------------
def _load_mesh_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` and faces ``[F, 3]`` of an .npz / .obj / .ply mesh (never a pickle)."""
    if not os.path.isfile(path):
        raise ValueError(f"flame_path {path!r} is not a file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".pkl":
        raise ValueError(
            "flame_path points to a pickle (.pkl); perchead never unpickles files. Export FLAME's "
            "template as .npz (v_template, f) or as an .obj/.ply mesh and pass that instead"
        )
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as data:
            vkey = next((k for k in ("v_template", "vertices") if k in data.files), None)
            fkey = next((k for k in ("f", "faces") if k in data.files), None)
            if vkey is None or fkey is None:
                raise ValueError(
                    f"{path} must hold arrays 'v_template' (or 'vertices') and 'f' (or 'faces'), has {data.files}"
                )
            vertices, faces = np.asarray(data[vkey], np.float64), np.asarray(data[fkey], np.int64)
    elif ext in (".obj", ".ply"):
        import trimesh

        mesh = trimesh.load(path, force="mesh", process=False)
        vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    else:
        raise ValueError(f"flame_path must be an .npz, .obj or .ply file, got {path!r}")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(
            f"{path}: expected vertices [V, 3] and triangle faces [F, 3], got {vertices.shape} and {faces.shape}"
        )
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"{path}: face indices out of range for {len(vertices)} vertices")
    return vertices, faces


def _split_longest_edges(vertices: np.ndarray, faces: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits longest edges at their midpoints until the mesh has exactly ``n`` vertices.

    Each split adds one vertex and turns each of the (one or two) faces on the edge into two. Per round,
    the longest edges whose faces are not touched by another split of the same round are split at once.
    """
    vertices, faces = vertices.copy(), faces.copy()
    while len(vertices) < n:
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)  # [3F, 2]
        edge_face = np.tile(np.arange(len(faces)), 3)  # [3F]
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        length = np.linalg.norm(vertices[unique[:, 0]] - vertices[unique[:, 1]], axis=-1)  # [E]
        faces_of = [[] for _ in range(len(unique))]
        for e, f in zip(inverse.tolist(), edge_face.tolist()):
            faces_of[e].append(f)
        used = np.zeros(len(faces), bool)
        chosen = []
        budget = n - len(vertices)
        for e in np.argsort(-length, kind="stable").tolist():
            fs = faces_of[e]
            if used[fs].any():
                continue
            used[fs] = True
            chosen.append(e)
            if len(chosen) == budget:
                break
        new_faces = [faces[~used]]
        mids = []
        for e in chosen:
            i, j = unique[e]
            m = len(vertices) + len(mids)
            mids.append(0.5 * (vertices[i] + vertices[j]))
            for f in faces_of[e]:
                a, b, c = faces[f]
                # rotate the face so that its edge (i, j) is (a, b), keeping the winding
                while {a, b} != {i, j}:
                    a, b, c = b, c, a
                new_faces.append(np.array([[a, m, c], [m, b, c]]))
        vertices = np.concatenate([vertices, np.asarray(mids)])
        faces = np.concatenate(new_faces)
    return vertices, faces


def _flame_mesh(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A user-supplied FLAME template, centred and upsampled to exactly ``n`` vertices.

    Optional FLAME: ``flame_path`` may point to a FLAME template the user obtained under FLAME's licence,
    exported as ``.npz`` (arrays ``v_template``/``vertices`` and ``f``/``faces``, read with
    ``allow_pickle=False``; FLAME's ``generic_model.pkl`` itself is a pickle and is never opened) or as an
    ``.obj``/``.ply`` mesh (read with trimesh). It is centred (x and z on its bounding-box centre, crown at
    the same height as ours), Loop-subdivided (trimesh) while that stays at or under ``n_gaussians``
    vertices, and then its longest edges are split at their midpoints until it has exactly ``n_gaussians``
    vertices; its topology is kept as FLAME's (open at the neck).
    """
    vertices, faces = _load_mesh_file(path)
    used = np.unique(faces)
    if len(used) != len(vertices):  # drop unreferenced vertices so every vertex belongs to the surface
        remap = np.full(len(vertices), -1)
        remap[used] = np.arange(len(used))
        vertices, faces = vertices[used], remap[faces]
    extent = float((vertices.max(0) - vertices.min(0)).max())
    if not 0.1 <= extent <= 1.0:
        raise ValueError(f"{path}: the mesh spans {extent:.3g} units; expected a head in metres (0.1 to 1.0)")
    if len(vertices) > n:
        raise ValueError(f"{path} has {len(vertices)} vertices, more than n_gaussians = {n}")
    import trimesh.remesh

    while True:  # Loop subdivision adds one vertex per edge
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)  # [3F, 2]
        n_edges = len(np.unique(edges, axis=0))
        if len(vertices) + n_edges > n:
            break
        vertices, faces = trimesh.remesh.subdivide_loop(vertices, faces, iterations=1)
        vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    vertices, faces = _split_longest_edges(vertices, faces, n)
    if _signed_volume(vertices - vertices.mean(0), faces) < 0:  # make the faces wind outward
        faces = faces[:, ::-1].copy()
    lo, hi = vertices.min(0), vertices.max(0)
    return vertices - np.array([(lo[0] + hi[0]) / 2, hi[1] - CROWN_Y, (lo[2] + hi[2]) / 2]), faces


# --- Public API ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _build_arrays(n_gaussians: int, n_patches: int, flame_key: tuple | None) -> tuple[np.ndarray, ...]:
    """Cached (vertices, faces, normals) in patch order, as read-only numpy arrays.

    1. **Shape.** A closed head-and-neck surface defined implicitly as a smooth union of simple primitives
       (cranium, jaw, cheeks, brow ridge, nose, lips, chin, eyes in sockets, ears, neck) in canonical head
       space: right-handed, +Y up, the face looks toward +Z, origin at the head centre, metres. The head is
       0.147 m wide (0.184 m with the ears), 0.23 m from crown to chin, 0.20 m from brow to the back of
       the skull (0.225 m to the nose tip), and the neck reaches 0.1 m below the chin, closed at the bottom.
       The surface is star-shaped around the origin, so it is parametrised by direction: a ray from the
       origin meets it once (outermost crossing, found by sphere tracing).
    2. **Mesh.** Exactly ``n_gaussians`` vertices on latitude rings around the vertical axis, plus one vertex
       at the crown and one at the centre of the neck's bottom. Rings are spaced evenly in surface arc length
       and each ring's vertices evenly along its length, so vertices are near-uniform in surface area
       (edges 1.8 mm long on average at 65,536). Neighbouring rings are zipped into a triangle strip, which
       gives a watertight triangulation using every vertex (F = 2N − 4).
    3. **Patches.** Vertices are reordered by recursive balanced median bisection along the longest axis of
       each group's bounding box, so patch ``p`` owns vertices ``16p .. 16p+15`` and patches are spatially
       compact; faces are remapped accordingly. Because the recursion is a k-d tree, nearby patch indices are
       nearby in space too. Measured patch radius (largest distance of a vertex to its patch centroid):
       65,536 vertices / 4,096 patches: mean 4.3 mm, 99th percentile 6.3 mm, max 19.2 mm (one patch in the
       crease beside the nose wing);
       16,384 vertices / 1,024 patches: mean 8.5 mm, 99th percentile 12.4 mm, max 15.6 mm.
    """
    if flame_key is None:
        vertices, faces = _head_mesh(n_gaussians)
    else:
        vertices, faces = _flame_mesh(flame_key[0], n_gaussians)
    order = _patch_order(vertices, n_patches)  # new slot → old vertex id
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))  # old vertex id → new slot
    vertices, faces = vertices[order], rank[faces]
    normals = _vertex_normals(vertices, faces)
    out = (vertices.astype(np.float32), faces.astype(np.int64), normals.astype(np.float32))
    for a in out:
        a.setflags(write=False)
    return out


def build_template(n_gaussians: int = 65536, n_patches: int = 4096, flame_path: str | None = None) -> Template:
    """The canonical head template (paper §3.2): ``n_gaussians`` vertices in ``n_patches`` patches of 16.

    Deterministic and cached per arguments in-process (65,536 vertices take about a second the first
    time); every call returns fresh tensors, so callers may modify them.

    Args:
        n_gaussians: number of vertices (= Gaussians), ``16 * n_patches``, at least 128.
        n_patches: number of 3D patches (decoder tokens).
        flame_path: optional FLAME template exported as ``.npz`` / ``.obj`` / ``.ply`` (see module
            docstring); ``None`` builds the package's own head.

    Returns:
        A :class:`Template` with vertices, faces and normals, ordered so that patch ``p`` owns vertices
        ``16p .. 16p+15``.
    """
    if isinstance(n_gaussians, bool) or not isinstance(n_gaussians, (int, np.integer)):
        raise ValueError(f"n_gaussians must be an int, got {n_gaussians!r}")
    if isinstance(n_patches, bool) or not isinstance(n_patches, (int, np.integer)):
        raise ValueError(f"n_patches must be an int, got {n_patches!r}")
    if n_patches <= 0 or n_gaussians != PATCH_SIZE * n_patches:
        raise ValueError(
            f"n_gaussians must equal {PATCH_SIZE} * n_patches with n_patches > 0, got n_gaussians={n_gaussians}, "
            f"n_patches={n_patches}"
        )
    if n_gaussians < MIN_GAUSSIANS:
        raise ValueError(f"n_gaussians must be at least {MIN_GAUSSIANS}, got {n_gaussians}")
    flame_key = None
    if flame_path is not None:
        path = os.path.abspath(os.fspath(flame_path))
        if not os.path.isfile(path):
            raise ValueError(f"flame_path {flame_path!r} is not a file")
        stat = os.stat(path)
        flame_key = (path, stat.st_mtime_ns, stat.st_size)
    vertices, faces, normals = _build_arrays(int(n_gaussians), int(n_patches), flame_key)
    return Template(
        vertices=torch.tensor(vertices), faces=torch.tensor(faces), normals=torch.tensor(normals), patch_size=PATCH_SIZE
    )


# --- Semantic labels -------------------------------------------------------------------------------------
def template_labels(template: Template) -> Tensor:
    """A coarse CelebAMask-HQ class per vertex: skin, nose, eyes, brows, ears, lips, neck. ``[N]`` long

    Classes (CelebAMask-HQ order): 1 skin, 2 nose, 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear, 9 r_ear,
    11 u_lip, 12 l_lip, 17 neck. "Left" is the head's own left, +x. Labels come from the distance of each
    vertex to the primitives the built-in head is made of, so they fit that head exactly and a FLAME
    template (in the same canonical space) approximately.

    Args:
        template: a template from :func:`build_template`.

    Returns:
        labels. ``[N]`` int64
    """
    p = template.vertices.detach().cpu().double().numpy()  # [N, 3]
    d = _head_parts(p)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    left = x > 0
    labels = np.ones(len(p), dtype=np.int64)  # skin
    neck = (y < -0.072 - 0.5 * np.maximum(z + 0.01, 0.0)) & (d["neck"] < 0.006)
    labels[neck | (y < _NECK[0] + 0.09)] = 17
    ear = (d["ear"] < 0.004) & (np.abs(x) > 0.07)
    labels[ear] = np.where(left, 8, 9)[ear]
    brow = (np.abs(np.abs(x) - _BROW[0][0]) < 0.024) & (np.abs(y - 0.041) < 0.006) & (z > 0.06)
    labels[brow] = np.where(left, 6, 7)[brow]
    eye = d["eye"] < 0.0015
    labels[eye] = np.where(left, 4, 5)[eye]
    nose = ((d["nose"] < 0.003) | (d["nostril"] < 0.002)) & (y < 0.02) & (z > 0.085)
    labels[nose] = 2
    lips = (np.minimum(d["upper_lip"], d["lower_lip"]) < 0.002) & (z > 0.08)
    labels[lips] = np.where(d["upper_lip"] < d["lower_lip"], 11, 12)[lips]
    return torch.from_numpy(labels)
