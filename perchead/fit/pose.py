"""The input camera: a render-and-compare search of the head pose when the photo gives none, each candidate
view framed as the photo's crop was; and the bounded camera change the Gaussian stage refines."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.fit.views import render
from perchead.geometry.cameras import Cameras, orbit_cameras
from perchead.geometry.gaussians import Gaussians


def _rotation(yaw: Tensor, pitch: Tensor, roll: Tensor) -> tuple[Tensor, Tensor]:
    """(world rotation Ry(yaw)·Rx(pitch), camera-axis roll Rz(roll)), each ``[3, 3]``, differentiable."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    Ry = torch.stack([torch.stack([cy, zero, sy]), torch.stack([zero, one, zero]), torch.stack([-sy, zero, cy])])
    Rx = torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, cp, -sp]), torch.stack([zero, sp, cp])])
    Rz = torch.stack([torch.stack([cr, -sr, zero]), torch.stack([sr, cr, zero]), torch.stack([zero, zero, one])])
    return Ry @ Rx, Rz


def adjust_camera(camera: Cameras, params: Tensor, config: FitConfig) -> tuple[Tensor, Tensor]:
    """The input camera changed by raw ``params`` ``[6]`` = (yaw, pitch, roll, log focal, shift x, shift y),
    each bounded by ``tanh`` to the config's limits: the head turns about its centre, the camera rolls about
    its axis, zooms and shifts. Returns (viewmats ``[1, 4, 4]``, Ks ``[1, 3, 3]``)."""
    b = torch.tanh(params)  # [6] in (-1, 1)
    ang = b[:3] * math.radians(config.camera.max_deg)
    Rw, Rz = _rotation(ang[0], ang[1], ang[2])
    eye = torch.eye(4, dtype=params.dtype, device=params.device)
    W = eye.clone()
    W[:3, :3] = Rw
    C = eye.clone()
    C[:3, :3] = Rz
    viewmat = C @ camera.viewmats[0].to(params.dtype) @ W  # [4, 4]
    K = camera.Ks[0].to(params.dtype)  # [3, 3]
    focal = torch.exp(b[3] * config.camera.max_log_focal)
    shift = b[4:] * config.camera.max_shift * float(camera.width)  # [2] pixels
    K = torch.stack([
        torch.stack([K[0, 0] * focal, K[0, 1], K[0, 2] + shift[0]]),
        torch.stack([K[1, 0], K[1, 1] * focal, K[1, 2] + shift[1]]),
        K[2],
    ])
    return viewmat[None], K[None]


Framing = Callable[[np.ndarray], tuple[float, float, float, float]]
"""How a photo's crop was chosen from its matte: ``[H, W]`` uint8 alpha → crop box ``(x0, y0, x1, y1)``."""


@torch.no_grad()
def framed_like_the_photo(model, gaussians: Gaussians, cameras: Cameras, framing: Framing,
                          size: int = 128) -> Cameras:
    """``cameras`` as the photo's crop would frame their views: each view of the head is rendered at
    ``size``, ``framing`` finds the crop box in its alpha, and that box becomes the whole image (the
    intrinsics scaled and shifted). A photo cropped by its own silhouette (a profile framed by its
    nose-to-nape width, say) is then compared with the head cropped the same way."""
    Ks_probe = cameras.Ks.clone()  # the same views at ``size``
    Ks_probe[:, :2] *= size / cameras.width
    _, alpha = render(model, gaussians, cameras.viewmats, Ks_probe, size, refine=False)  # [V, 1, size, size]
    masks = (alpha[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # [V, size, size]
    Ks = cameras.Ks.clone()  # [V, 3, 3]
    for v, matte in enumerate(masks):
        try:
            x0, y0, x1, y1 = (c * cameras.width / size for c in framing(matte))
        except ValueError:  # nothing opaque in this view: left as it is
            continue
        sx, sy = cameras.width / (x1 - x0), cameras.height / (y1 - y0)
        Ks[v, 0, 0], Ks[v, 0, 2] = Ks[v, 0, 0] * sx, (Ks[v, 0, 2] - x0) * sx
        Ks[v, 1, 1], Ks[v, 1, 2] = Ks[v, 1, 1] * sy, (Ks[v, 1, 2] - y0) * sy
    return Cameras(cameras.viewmats, Ks, cameras.width, cameras.height)


@torch.no_grad()
def search_pose(model, gaussians: Gaussians, image: Tensor, mask: Tensor, config: FitConfig,
                known: Tensor | None = None, framing: Framing | None = None) -> tuple[float, float]:
    """Render-and-compare: the (yaw, pitch) on ``config``'s grids whose render of the predicted head best
    matches the photo (L1 of rgb and alpha vs matte at ``pose.size``, where ``known`` ``[1, 1, S, S]`` is
    1), coarse to fine: the yaw on the grid at the pitch nearest 0, the pitch at that yaw, then the yaw
    refined by the offsets around it at that pitch. Each view is framed as the photo's crop was when
    ``framing`` is given (:func:`framed_like_the_photo`). Degrees, the yaw in (-180, 180]."""
    s = config.pose.size
    r = model.config.render
    img = F.interpolate(image, size=(s, s), mode="area")  # [1, 3, s, s]
    msk = F.interpolate(mask, size=(s, s), mode="area")  # [1, 1, s, s]
    weight = torch.ones_like(msk) if known is None else F.interpolate(known, size=(s, s), mode="area")  # [1, 1, s, s]

    def best(az: list[float], el: list[float]) -> int:
        cams = orbit_cameras(az, el, radius=r.radius, fov_deg=r.fov_deg, size=s)
        if framing is not None:
            cams = framed_like_the_photo(model, gaussians, cams, framing)
        rgb, alpha = render(model, gaussians, cams.viewmats, cams.Ks, s, refine=False)  # [V, 3, s, s]
        err = (((rgb - img).abs() + (alpha - msk).abs()) * weight).mean(dim=(1, 2, 3))  # [V]
        return int(err.argmin())

    level = min(config.pose.elevations, key=abs)
    yaws = list(config.pose.azimuths)
    yaw = yaws[best(yaws, [level] * len(yaws))]
    pitches = list(config.pose.elevations)
    pitch = pitches[best([yaw] * len(pitches), pitches)] if len(pitches) > 1 else pitches[0]
    if config.pose.azimuth_offsets:
        yaws = [yaw + offset for offset in config.pose.azimuth_offsets]
        yaw = yaws[best(yaws, [pitch] * len(yaws))]
    return -((-yaw + 180.0) % 360.0 - 180.0), pitch  # the yaw in (-180, 180]


def input_camera(model, gaussians: Gaussians, image: Tensor, mask: Tensor, known: Tensor, camera: Cameras | None,
                 config: FitConfig, framing: Framing | None, notes: list[str]) -> Cameras:
    """The fit's input camera at the image's size ``S``: the given one (the pose from landmarks) rescaled, else
    the searched pose (``config.pose.search``: :func:`search_pose`) or the frontal model framing, framed as the
    photo's crop was when ``framing`` is given. Appends a note saying where a camera that was not given came from.

    Args:
        model: the PercHead (its render framing and renderer).
        gaussians: the head to search with. ``[N, …]``
        image: the photo at the fit's size. ``[1, 3, S, S]``
        mask: its matte. ``[1, 1, S, S]``
        known: 1 where the image shows the photo. ``[1, 1, S, S]``
        camera: the given camera (one view, any size) or None.
        config: the fit's settings (``pose``).
        framing: how the photo's crop was chosen from its matte, or None.
        notes: the fit's remarks for the user.

    Returns:
        one view at ``S × S``.
    """
    S = image.shape[-1]
    if camera is None:
        if config.pose.search:
            yaw, pitch = search_pose(model, gaussians, image, mask, config, known, framing)
            notes.append(f"photo-fit: head pose from render-and-compare search (yaw {yaw:+.0f}°, pitch {pitch:+.0f}°)")
        else:
            yaw, pitch = 0.0, 0.0
            notes.append("photo-fit: no head pose, frontal camera")
        r = model.config.render
        camera = orbit_cameras([yaw], [pitch], radius=r.radius, fov_deg=r.fov_deg, size=S)
        if framing is not None:
            camera = framed_like_the_photo(model, gaussians, camera, framing)
    elif camera.width != S or camera.height != S:
        scale = S / camera.width
        Ks = camera.Ks.clone()
        Ks[:, :2] *= scale
        camera = Cameras(camera.viewmats, Ks, S, S)
    return camera
