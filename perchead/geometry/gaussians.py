"""3D Gaussians as named tensors, with validation and file I/O (.ply in the 3DGS layout, .splat).

The Gaussian set is the product of PercHead (paper §3.3): 4,096 patches × 16 Gaussians, each with a
position, scale, rotation, opacity and colour. Every stage passes a :class:`Gaussians` around instead of
a packed ``[N, 14]`` tensor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # zeroth spherical-harmonic basis constant, colour = 0.5 + SH_C0 * f_dc
PLY_PROPERTIES = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # the standard 3DGS vertex layout (degree-0 SH), read by gsplat, SuperSplat and Gradio's viewer
_TRAILING = {"means": (3,), "quats": (4,), "scales": (3,), "opacities": (), "colors": (3,)}


@dataclass
class Gaussians:
    """A set of 3D Gaussians, optionally batched.

    Shapes are ``[N, ...]`` for one set or ``[B, N, ...]`` for a batch of sets of equal size.

    Attributes:
        means: centres in canonical head space (metres). ``[(B,) N, 3]``
        quats: rotations as unit quaternions, ``(w, x, y, z)``. ``[(B,) N, 4]``
        scales: standard deviations along the rotated axes, positive. ``[(B,) N, 3]``
        opacities: peak opacity in (0, 1). ``[(B,) N]``
        colors: RGB in [0, 1]. ``[(B,) N, 3]``
    """

    means: Tensor  # [(B,) N, 3]
    quats: Tensor  # [(B,) N, 4]
    scales: Tensor  # [(B,) N, 3]
    opacities: Tensor  # [(B,) N]
    colors: Tensor  # [(B,) N, 3]

    def __post_init__(self) -> None:
        lead = self.opacities.shape
        if self.opacities.dim() not in (1, 2):
            raise ValueError(f"opacities must be [N] or [B, N], got shape {tuple(lead)}")
        for name, trailing in _TRAILING.items():
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
            if tuple(value.shape) != tuple(lead) + trailing:
                want = "[" + ", ".join(["B"] * (len(lead) == 2) + ["N"] + [str(t) for t in trailing]) + "]"
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {want} = {tuple(lead) + trailing}"
                )
            if not value.is_floating_point():
                raise ValueError(f"{name} must be a floating-point tensor, got {value.dtype}")

    # ------------------------------------------------------------------ shape
    @property
    def is_batched(self) -> bool:
        """True for ``[B, N, ...]`` fields."""
        return self.opacities.dim() == 2

    @property
    def num_gaussians(self) -> int:
        """N, the number of Gaussians per set."""
        return self.opacities.shape[-1]

    @property
    def batch_size(self) -> int:
        """B, or 1 for an unbatched set."""
        return self.opacities.shape[0] if self.is_batched else 1

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def _map(self, fn) -> "Gaussians":
        return Gaussians(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args, **kwargs) -> "Gaussians":
        """Moves or casts every field, with the arguments of :meth:`torch.Tensor.to`."""
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self._map(Tensor.detach)

    def float(self) -> "Gaussians":
        return self._map(Tensor.float)

    def __getitem__(self, index) -> "Gaussians":
        """Indexes the leading axis of every field: batch elements if batched, else Gaussians."""
        out = self._map(lambda t: t[index])
        return out

    def __len__(self) -> int:
        return self.opacities.shape[0]

    def batched(self) -> "Gaussians":
        """Returns a ``[B, N, ...]`` view (B = 1 for an unbatched set)."""
        return self if self.is_batched else self._map(lambda t: t.unsqueeze(0))

    @staticmethod
    def cat(items: Sequence["Gaussians"]) -> "Gaussians":
        """Concatenates sets along the Gaussian axis N (batch sizes must match)."""
        if not items:
            raise ValueError("Gaussians.cat needs at least one set")
        if len({g.is_batched for g in items}) != 1:
            raise ValueError("Gaussians.cat cannot mix batched and unbatched sets")
        dim = 1 if items[0].is_batched else 0
        return Gaussians(**{f.name: torch.cat([getattr(g, f.name) for g in items], dim=dim) for f in fields(Gaussians)})

    @staticmethod
    def stack(items: Sequence["Gaussians"]) -> "Gaussians":
        """Stacks unbatched sets of equal size into one batch ``[B, N, ...]``."""
        if not items:
            raise ValueError("Gaussians.stack needs at least one set")
        if any(g.is_batched for g in items):
            raise ValueError("Gaussians.stack takes unbatched sets")
        return Gaussians(**{f.name: torch.stack([getattr(g, f.name) for g in items]) for f in fields(Gaussians)})

    def transformed(self, rotation: Tensor, scale: float = 1.0, translation: Tensor | None = None) -> "Gaussians":
        """The Gaussians moved by ``x → scale · rotation · x + translation``: means, orientations and sizes.

        Args:
            rotation: a proper rotation matrix (det +1; a mirror would flip handedness). ``[3, 3]``
            scale: uniform scale factor (> 0).
            translation: added after rotating and scaling, or None. ``[3]``

        Returns:
            new Gaussians (colours and opacities unchanged).

        Raises:
            ValueError: a rotation that is not orthonormal with det +1, or a scale ≤ 0.
        """
        rotation = torch.as_tensor(rotation, dtype=self.dtype, device=self.device)
        eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
        if rotation.shape != (3, 3) or not torch.allclose(rotation @ rotation.T, eye, atol=1e-5) or torch.det(rotation) < 0:
            raise ValueError("rotation must be a proper 3×3 rotation matrix (orthonormal, det +1)")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        means = scale * self.means @ rotation.T  # [(B,) N, 3]
        if translation is not None:
            means = means + torch.as_tensor(translation, dtype=self.dtype, device=self.device)
        q = matrix_to_quaternion(rotation)  # [4] wxyz
        w1, v1 = q[0], q[1:]
        w2, v2 = self.quats[..., :1], self.quats[..., 1:]  # [(B,) N, 1], [(B,) N, 3]
        quats = torch.cat([w1 * w2 - (v2 * v1).sum(-1, keepdim=True),
                           w1 * v2 + w2 * v1 + torch.cross(v1.expand_as(v2), v2, dim=-1)], dim=-1)  # q ⊗ quats
        return Gaussians(means=means, quats=quats, scales=self.scales * scale, opacities=self.opacities,
                         colors=self.colors)

    # ------------------------------------------------------------- validation
    def validate(self) -> "Gaussians":
        """Checks values: finite everywhere, unit quaternions, positive scales, opacities in (0, 1), colours in [0, 1].

        Returns:
            self, so calls can be chained.

        Raises:
            ValueError: naming the first bad field.
        """
        for f in fields(self):
            value = getattr(self, f.name)
            if not torch.isfinite(value).all():
                bad = (~torch.isfinite(value)).sum().item()
                raise ValueError(f"{f.name} contains {bad} NaN or Inf values")
        norms = self.quats.norm(dim=-1)
        if ((norms - 1).abs() > 1e-3).any():
            raise ValueError(f"quats must be unit quaternions (wxyz); norms range {norms.min():.4g}..{norms.max():.4g}")
        if (self.scales <= 0).any():
            raise ValueError(f"scales must be positive; min is {self.scales.min():.4g}")
        if ((self.opacities <= 0) | (self.opacities >= 1)).any():
            raise ValueError(
                f"opacities must lie in (0, 1); range {self.opacities.min():.4g}..{self.opacities.max():.4g}"
            )
        if ((self.colors < 0) | (self.colors > 1)).any():
            raise ValueError(f"colors must lie in [0, 1]; range {self.colors.min():.4g}..{self.colors.max():.4g}")
        return self


def quaternion_to_matrix(quats: Tensor) -> Tensor:
    """Rotation matrices of quaternions (wxyz, normalised here); the columns are the rotated axes.
    ``[..., 4]`` → ``[..., 3, 3]``"""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*quats.shape[:-1], 3, 3)


def matrix_to_quaternion(rotation: Tensor) -> Tensor:
    """The unit quaternion (wxyz, w ≥ 0) of a rotation matrix. ``[3, 3]`` → ``[4]``"""
    m = rotation
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = torch.stack([
        torch.stack([1 + trace, m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]),
        torch.stack([m[2, 1] - m[1, 2], 1 + m[0, 0] - m[1, 1] - m[2, 2], m[0, 1] + m[1, 0], m[0, 2] + m[2, 0]]),
        torch.stack([m[0, 2] - m[2, 0], m[0, 1] + m[1, 0], 1 - m[0, 0] + m[1, 1] - m[2, 2], m[1, 2] + m[2, 1]]),
        torch.stack([m[1, 0] - m[0, 1], m[0, 2] + m[2, 0], m[1, 2] + m[2, 1], 1 - m[0, 0] - m[1, 1] + m[2, 2]]),
    ])  # [4, 4]: each row is 4·q·q_i for one i; use the best-conditioned one
    best = torch.stack([1 + trace, 1 + m[0, 0] - m[1, 1] - m[2, 2], 1 - m[0, 0] + m[1, 1] - m[2, 2],
                        1 - m[0, 0] - m[1, 1] + m[2, 2]]).argmax()
    q = candidates[best] / candidates[best].norm()
    return q if q[0] >= 0 else -q


# -------------------------------------------------------------------------------------------- files
def _single(gaussians: Gaussians, what: str) -> Gaussians:
    if gaussians.is_batched:
        if gaussians.batch_size != 1:
            raise ValueError(f"{what} writes one set of Gaussians; got a batch of {gaussians.batch_size}")
        gaussians = gaussians[0]
    return gaussians.detach().to("cpu", torch.float32)


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> None:
    """Writes Gaussians as a binary little-endian PLY in the standard 3DGS layout (degree-0 SH).

    Properties, in order: x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3, all float32, with
    opacity stored as a logit, scales as logs, colour as SH DC ``(rgb - 0.5) / SH_C0`` and rotation as
    wxyz. gsplat, SuperSplat and Gradio's Model3D splat viewer read this layout.

    Args:
        gaussians: one set (unbatched, or a batch of 1); validated before writing.
        path: output file.
    """
    g = _single(gaussians, "save_ply").validate()
    n = g.num_gaussians
    data = np.zeros((n, len(PLY_PROPERTIES)), dtype="<f4")  # [N, 17]
    data[:, 0:3] = g.means.numpy()
    data[:, 6:9] = (g.colors.numpy() - 0.5) / SH_C0
    data[:, 9] = _logit(g.opacities.double().numpy().clip(1e-7, 1 - 1e-7))
    data[:, 10:13] = np.log(g.scales.numpy())
    data[:, 13:17] = (g.quats / g.quats.norm(dim=-1, keepdim=True)).numpy()
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in PLY_PROPERTIES] + ["end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _read_ply_header(f, path) -> tuple[str, list[tuple[str, int, list[tuple[str, str]]]]]:
    if f.readline().strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (missing 'ply' magic line)")
    fmt, elements = None, []
    for _ in range(10_000):
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no 'end_header'")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            if fmt is None:
                raise ValueError(f"{path}: PLY header has no 'format' line")
            return fmt, elements
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                elements[-1][2].append((words[-1], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise ValueError(f"{path}: unsupported PLY property line {line.strip()!r}")
        else:
            raise ValueError(f"{path}: malformed PLY header line {line.strip()!r}")
    raise ValueError(f"{path}: PLY header is too long")


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Reads a 3DGS PLY (ours or another tool's): binary little-endian or ASCII, float properties.

    Higher-order SH (f_rest_*) and normals are ignored; colours come from the DC term and are clamped to
    [0, 1]; quaternions are normalised.

    Raises:
        ValueError: if the file is not a PLY, lacks a 3DGS property, is truncated or has a list-typed
            vertex property.
    """
    with open(path, "rb") as f:
        fmt, elements = _read_ply_header(f, path)
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: PLY has no leading 'vertex' element")
        _, n, props = elements[0]
        names = [name for name, _ in props]
        missing = [p for p in PLY_PROPERTIES if p not in names and p not in ("nx", "ny", "nz")]
        if missing:
            raise ValueError(f"{path}: PLY lacks the 3DGS properties {missing}")
        if any(kind == "list" for _, kind in props):
            raise ValueError(f"{path}: list-typed vertex properties are not supported")
        if fmt == "binary_little_endian":
            dtype = np.dtype([(name, "<" + kind) for name, kind in props])
            raw = f.read(n * dtype.itemsize)
            if len(raw) < n * dtype.itemsize:
                raise ValueError(f"{path}: truncated PLY ({len(raw)} of {n * dtype.itemsize} vertex bytes)")
            table = np.frombuffer(raw, dtype=dtype)
            column = lambda name: table[name].astype(np.float64)  # noqa: E731
        elif fmt == "ascii":
            rows = [f.readline().split() for _ in range(n)]
            try:
                values = np.array(rows, dtype=np.float64).reshape(n, len(props))
            except ValueError as err:
                raise ValueError(f"{path}: malformed ASCII PLY vertex data ({err})") from None
            column = lambda name: values[:, names.index(name)]  # noqa: E731
        else:
            raise ValueError(f"{path}: unsupported PLY format {fmt!r} (binary_little_endian or ascii)")

    def stack(keys):
        return torch.from_numpy(np.stack([column(k) for k in keys], axis=-1)).float()

    quats = stack([f"rot_{i}" for i in range(4)])  # [N, 4]
    norms = quats.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"{path}: PLY contains zero-length rotations")
    opacity_logits = torch.from_numpy(column("opacity"))
    gaussians = Gaussians(
        means=stack(["x", "y", "z"]),
        quats=quats / norms,
        scales=torch.exp(stack([f"scale_{i}" for i in range(3)])),
        opacities=torch.sigmoid(opacity_logits).clamp(1e-7, 1 - 1e-7).float(),
        colors=(0.5 + SH_C0 * stack([f"f_dc_{i}" for i in range(3)])).clamp(0, 1),
    )
    return gaussians.validate()


def save_splat(gaussians: Gaussians, path: str | os.PathLike) -> None:
    """Writes the ``.splat`` format: 32-byte records, largest and most opaque Gaussians first.

    Each record: position 3×float32, scale 3×float32 (linear), RGBA 4×uint8 (alpha = opacity),
    rotation 4×uint8 (wxyz, ``q * 128 + 128``).
    """
    g = _single(gaussians, "save_splat").validate()
    order = torch.argsort(-(g.scales.prod(dim=-1) * g.opacities), stable=True)  # [N]
    g = g[order]
    record = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    data = np.empty(g.num_gaussians, dtype=record)
    data["position"] = g.means.numpy()
    data["scale"] = g.scales.numpy()
    rgba = torch.cat([g.colors, g.opacities[:, None]], dim=-1)  # [N, 4]
    data["rgba"] = (rgba * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    quats = g.quats / g.quats.norm(dim=-1, keepdim=True)
    data["rot"] = (quats * 128 + 128).round().clamp(0, 255).to(torch.uint8).numpy()
    with open(path, "wb") as f:
        f.write(data.tobytes())


def load_splat(path: str | os.PathLike) -> Gaussians:
    """Reads a ``.splat`` file (see :func:`save_splat`); colours, opacities and rotations come back quantised."""
    raw = open(path, "rb").read()
    if len(raw) == 0 or len(raw) % 32:
        raise ValueError(f"{path}: a .splat file holds 32-byte records; got {len(raw)} bytes")
    record = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    data = np.frombuffer(raw, dtype=record)
    rgba = torch.from_numpy(data["rgba"].astype(np.float32)) / 255  # [N, 4]
    quats = (torch.from_numpy(data["rot"].astype(np.float32)) - 128) / 128  # [N, 4]
    norms = quats.norm(dim=-1, keepdim=True)
    if (norms == 0).any():
        raise ValueError(f"{path}: .splat contains zero-length rotations")
    return Gaussians(
        means=torch.from_numpy(data["position"].copy()),
        quats=quats / norms,
        scales=torch.from_numpy(data["scale"].copy()),
        opacities=rgba[:, 3].clamp(1 / 512, 1 - 1 / 512),
        colors=rgba[:, :3],
    ).validate()


def random_gaussians(n: int, batch: int | None = None, seed: int = 0, extent: float = 0.1) -> Gaussians:
    """Random valid Gaussians for tests and benchmarks (means in a cube of half-size ``extent``)."""
    gen = torch.Generator().manual_seed(seed)
    lead = (n,) if batch is None else (batch, n)
    quats = torch.randn(*lead, 4, generator=gen)
    return Gaussians(
        means=(torch.rand(*lead, 3, generator=gen) * 2 - 1) * extent,
        quats=quats / quats.norm(dim=-1, keepdim=True),
        scales=torch.exp(torch.rand(*lead, 3, generator=gen) * 2 - 6.0),
        opacities=torch.rand(*lead, generator=gen) * 0.9 + 0.05,
        colors=torch.rand(*lead, 3, generator=gen),
    )
