"""3D Gaussians as named tensors, with validation and file I/O (.ply in the 3DGS layout, .splat).

The Gaussian set is the product of PercHead (paper §3.3): 4,096 patches × 16 Gaussians, each with a
position, scale, rotation, opacity and colour. Every stage passes a :class:`Gaussians` around instead of
a packed ``[N, 14]`` tensor.
"""

from __future__ import annotations

import math
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
