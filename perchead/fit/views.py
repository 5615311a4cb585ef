"""What the fit's stages share: rendering a head into given views, the ring of distillation views around the
input camera, and how squarely a camera sees each Gaussian."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.geometry.cameras import Cameras, camera_centers, orbit_cameras
from perchead.geometry.gaussians import Gaussians


def render(model, g: Gaussians, viewmats: Tensor, Ks: Tensor, size: int, refine: bool):
    """Renders ``[N]`` Gaussians into V views over white (``model.render_at``): rgb ``[V, 3, s, s]``, alpha."""
    out = model.render_at(g, viewmats, Ks, size, size, refine=refine)
    return out.rgb[0], out.alpha[0]


def distill_cameras(model, input_camera: Cameras, config: FitConfig) -> tuple[Cameras, Tensor]:
    """Distillation cameras around the head, relative to the input yaw, and their weights
    ``(1 − cos θ) / 2`` (θ: angle between the view and the input view). Returns (cameras, ``[V]``)."""
    center = camera_centers(input_camera.viewmats)[0]  # [3]
    yaw0 = math.degrees(math.atan2(float(center[0]), float(center[2])))
    az = [yaw0 + a for e in config.priors.distill_elevations for a in config.priors.distill_azimuths]
    el = [e for e in config.priors.distill_elevations for _ in config.priors.distill_azimuths]
    r = model.config.render
    cams = orbit_cameras(az, el, radius=r.radius, fov_deg=r.fov_deg, size=config.priors.distill_size)
    d_in = F.normalize(center, dim=0)
    d = F.normalize(camera_centers(cams.viewmats), dim=-1)  # [V, 3]
    weights = (1 - d @ d_in) / 2  # [V]
    return cams, weights


def facing(normals: Tensor, means: Tensor, viewmats: Tensor) -> Tensor:
    """How squarely one camera sees each Gaussian: the cosine between its (template) normal and the direction
    to the camera. ``[N, 3]``, ``[N, 3]``, ``[1, 4, 4]`` → ``[N]`` in [−1, 1]"""
    eye = camera_centers(viewmats)[0]  # [3]
    return (normals * F.normalize(eye - means, dim=-1)).sum(-1)
