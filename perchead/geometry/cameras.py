"""Pinhole cameras in the OpenCV convention, exactly as gsplat takes them.

Conventions: world = canonical head space, right-handed, +Y up, the face looks toward
+Z, metres. Cameras: x right, y down, z forward; ``viewmats`` are world-to-camera ``[C, 4, 4]``; ``Ks``
are pixel intrinsics ``[C, 3, 3]`` with pixel centres at +0.5 (so the principal point of a W×H image is
(W/2, H/2)).

Orbit angles: azimuth 0 puts the camera on +Z, in front of the face. Azimuth +90 puts it on +X, which is
the head's own LEFT side (a head facing +Z with +Y up has its left hand toward +X). Elevation +30 raises
the camera above the head, looking down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A set of C pinhole cameras sharing one image size.

    Attributes:
        viewmats: world-to-camera transforms, OpenCV axes. ``[C, 4, 4]``
        Ks: intrinsics in pixels. ``[C, 3, 3]``
        width: image width in pixels.
        height: image height in pixels.
    """

    viewmats: Tensor  # [C, 4, 4]
    Ks: Tensor  # [C, 3, 3]
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.viewmats.dim() != 3 or self.viewmats.shape[-2:] != (4, 4):
            raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(self.viewmats.shape)}")
        if self.Ks.shape != (self.viewmats.shape[0], 3, 3):
            raise ValueError(f"Ks must be [C, 3, 3] with C = {self.viewmats.shape[0]}, got {tuple(self.Ks.shape)}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index) -> "Cameras":
        viewmats, Ks = self.viewmats[index], self.Ks[index]
        if viewmats.dim() == 2:
            viewmats, Ks = viewmats[None], Ks[None]
        return Cameras(viewmats, Ks, self.width, self.height)

    def to(self, *args, **kwargs) -> "Cameras":
        return Cameras(self.viewmats.to(*args, **kwargs), self.Ks.to(*args, **kwargs), self.width, self.height)

    @property
    def centers(self) -> Tensor:
        """Camera centres in world space. ``[C, 3]``"""
        return camera_centers(self.viewmats)


def camera_centers(viewmats: Tensor) -> Tensor:
    """World-space centres of world-to-camera transforms ``[..., 4, 4]`` → ``[..., 3]``."""
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3]  # [..., 3, 3], [..., 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def look_at(eye: Tensor, target: Tensor, up: Tensor | Sequence[float] = (0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera matrices (OpenCV axes) for cameras at ``eye`` looking at ``target``.

    Args:
        eye: camera centres. ``[..., 3]``
        target: points looked at. ``[..., 3]``
        up: world direction that appears upward in the image. ``[..., 3]`` or a 3-sequence.

    Returns:
        viewmats. ``[..., 4, 4]``

    Raises:
        ValueError: if eye and target coincide or ``up`` is parallel to the viewing direction.
    """
    eye, target = torch.as_tensor(eye, dtype=torch.float32), torch.as_tensor(target, dtype=torch.float32)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    forward = target - eye  # [..., 3]  camera +z
    if (forward.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: eye and target coincide")
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(forward, up, dim=-1)  # [..., 3]  camera +x
    if (right.norm(dim=-1) < 1e-6).any():
        raise ValueError("look_at: `up` is parallel to the viewing direction; pass another up vector")
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right, dim=-1)  # [..., 3]  camera +y
    R = torch.stack([right, down, forward], dim=-2)  # [..., 3, 3]  rows are the camera axes
    viewmat = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    viewmat[..., :3, :3] = R
    viewmat[..., :3, 3] = -(R @ eye[..., None])[..., 0]
    viewmat[..., 3, 3] = 1.0
    return viewmat


def intrinsics(fov_deg: float, width: int, height: int | None = None) -> Tensor:
    """Pinhole intrinsics with square pixels and the principal point at the image centre.

    Args:
        fov_deg: horizontal field of view in degrees, in (0, 180).
        width: image width in pixels.
        height: image height in pixels (default: ``width``).

    Returns:
        K. ``[3, 3]``
    """
    height = width if height is None else height
    if not 0 < fov_deg < 180:
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])


def orbit_eyes(azimuths_deg: Tensor, elevations_deg: Tensor, radius: float | Tensor) -> Tensor:
    """Camera centres on a sphere around the origin (azimuth 0 = +Z, +90 = +X, elevation + = above). ``[C, 3]``"""
    az, el = torch.deg2rad(azimuths_deg), torch.deg2rad(elevations_deg)  # [C], [C]
    return torch.as_tensor(radius, dtype=az.dtype)[..., None] * torch.stack(
        [torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], dim=-1
    )


def orbit_cameras(
    azimuths_deg: Sequence[float] | Tensor,
    elevations_deg: Sequence[float] | Tensor | float = 0.0,
    radius: float = 0.7,
    fov_deg: float = 30.0,
    size: int | tuple[int, int] = 256,
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> Cameras:
    """Cameras on a sphere around ``target``, looking at it, upright (no roll).

    Args:
        azimuths_deg: per camera; 0 = in front of the face (+Z), +90 = the head's own left side (+X).
        elevations_deg: per camera (or one value for all); +30 looks down from above. Any value in
            [-90, 90] works, including straight above and below.
        radius: distance from the target in metres.
        fov_deg: horizontal field of view in degrees.
        size: image size, ``S`` or ``(W, H)``.
        target: the point looked at.

    Returns:
        Cameras with C = len(azimuths_deg).
    """
    az = torch.as_tensor(azimuths_deg, dtype=torch.float32).reshape(-1)  # [C]
    el = torch.as_tensor(elevations_deg, dtype=torch.float32).reshape(-1).expand_as(az)  # [C]
    if (el.abs() > 90).any():
        raise ValueError(f"elevations must lie in [-90, 90], got {el.tolist()}")
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    width, height = (size, size) if isinstance(size, int) else size
    target_t = torch.tensor(target, dtype=torch.float32)
    eyes = orbit_eyes(az, el, radius) + target_t  # [C, 3]
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    # The sphere's tangent toward increasing elevation is "up" in the image: never parallel to the view.
    up = torch.stack([-torch.sin(e) * torch.sin(a), torch.cos(e), -torch.sin(e) * torch.cos(a)], dim=-1)  # [C, 3]
    viewmats = look_at(eyes, target_t.expand_as(eyes), up)  # [C, 4, 4]
    Ks = intrinsics(fov_deg, width, height).expand(len(az), 3, 3).clone()  # [C, 3, 3]
    return Cameras(viewmats, Ks, width, height)


def project_points(points: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """Projects world points into every camera.

    Args:
        points: ``[N, 3]``
        viewmats: ``[C, 4, 4]``
        Ks: ``[C, 3, 3]``

    Returns:
        (pixels ``[C, N, 2]`` with pixel centres at +0.5, depths ``[C, N]`` along camera z).
    """
    cam = points @ viewmats[:, :3, :3].transpose(-1, -2) + viewmats[:, None, :3, 3]  # [C, N, 3]
    depth = cam[..., 2]  # [C, N]
    uv = cam @ Ks.transpose(-1, -2)  # [C, N, 3]
    return uv[..., :2] / depth[..., None], depth
