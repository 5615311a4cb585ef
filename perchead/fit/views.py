"""What the fit's stages share: rendering a head into given views, the ring of distillation views around the
input camera, how squarely a camera sees each Gaussian, and whether the camera sees it past the Gaussians in
front (:func:`visibility`, :func:`seen_share`)."""

from __future__ import annotations

import math

import torch
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




def visibility(model, g: Gaussians, viewmats: Tensor, Ks: Tensor, size: int, depth_tolerance: float
               ) -> tuple[Tensor, Tensor]:
    """How one camera sees each Gaussian past the others, two ways from one render and its backward pass.

    * **Depth test**: the head's depth rendered from the camera (the renderer's alpha-weighted depth over its
      alpha) is read at each Gaussian's projected centre and compared with the Gaussian's own depth; 1 up to
      ``depth_tolerance`` behind the rendered surface, falling to 0 at twice that, 0 off the image or where the
      render is mostly transparent.
    * **Transmittance**: the Gaussian's blend weight summed over the image (the renderer's own ``alpha_i · T_i``
      per pixel, read as the gradient of the rendered sum of a constant per-Gaussian channel) over what it would
      be unoccluded (its opacity times its projected footprint's area): the share of it the picture shows.
      The splats of one surface overlap so much that most are largely covered by their neighbours, so this is
      small for most of a surface; it is large where a Gaussian itself makes the picture, e.g. an eye seen
      through the lens of a pair of glasses, which the depth test (reading the glasses' depth) misses.

    Args:
        model: renders (``model.render_at``).
        g: ``[N, …]``.
        viewmats: one camera. ``[1, 4, 4]``
        Ks: its intrinsics at ``size``. ``[1, 3, 3]``
        size: the render's side, pixels.
        depth_tolerance: metres behind the rendered surface still counted as on it (> 0).

    Returns:
        (depth test ``[N]``, transmittance ``[N]``), both in [0, 1].
    """
    from perchead.render import project_gaussians

    g = g.detach().float()
    with torch.enable_grad():
        ones = torch.ones(g.num_gaussians, 1, device=g.means.device, requires_grad=True)  # [N, 1]
        out = model.render_at(g, viewmats, Ks, size, size, refine=False, features=ones, return_depth=True)
        (weight,) = torch.autograd.grad(out.features.sum(), ones)  # [N, 1] sum over pixels of alpha_i · T_i
    with torch.no_grad():
        alpha = out.alpha[0, 0].detach()  # [1, s, s]
        depth = out.depth[0, 0].detach() / alpha.clamp_min(1e-6)  # [1, s, s] expected camera z
        cam = g.means @ viewmats[0, :3, :3].T.to(g.means) + viewmats[0, :3, 3].to(g.means)  # [N, 3] camera space
        z = cam[:, 2].clamp_min(1e-6)  # [N]
        K = Ks[0].to(g.means)
        pix = torch.stack([K[0, 0] * cam[:, 0] / z + K[0, 2], K[1, 1] * cam[:, 1] / z + K[1, 2]], dim=-1)  # [N, 2]
        grid = (pix / size * 2 - 1)[None, :, None]  # [1, N, 1, 2] in [-1, 1] (align_corners=False)
        sample = F.grid_sample(torch.cat([depth, alpha])[None], grid, align_corners=False)[0, :, :, 0]  # [2, N]
        behind = cam[:, 2] - sample[0]  # [N] metres behind the rendered surface
        inside = (grid.abs() <= 1).all(-1)[0, :, 0] & (sample[1] > 0.5) & (cam[:, 2] > 0)  # [N]
        depth_test = (2 - behind / depth_tolerance).clamp(0, 1) * inside  # [N]
        proj = project_gaussians(g.means[None], g.quats[None], g.scales[None], g.opacities[None],
                                 viewmats[None].to(g.means), Ks[None].to(g.means), size, size)
        a, b, c = proj.conics[0, 0].unbind(-1)  # [N] the inverse 2D covariance
        area = 2 * math.pi / (a * c - b * b).clamp_min(1e-12).sqrt()  # [N] pixels: the footprint's integral
        full = g.opacities * area * (proj.radii[0, 0] > 0).all(-1)  # [N] its weight with nothing in front
        shown = (weight[:, 0] / full.clamp_min(1e-6)).where(full > 1e-3, torch.zeros_like(full)).clamp(0, 1)
        return depth_test, shown


def seen_share(model, g: Gaussians, normals: Tensor, viewmats: Tensor, Ks: Tensor, size: int, grazing_cos: float,
               facing_cos: float, depth_tolerance: float, shown_full: float) -> Tensor:
    """How far the photo's pixels can be trusted for each Gaussian's colour: the larger of (a) the depth test of
    :func:`visibility` times a ramp of how squarely the camera sees it (0 at or below ``grazing_cos``, the cosine
    between its normal and the ray, 1 at or above ``facing_cos``), so that a pixel along a grazing ray, which
    smears over many Gaussians of the surface, does not colour them, and (b) its transmittance over
    ``shown_full`` (capped at 1): a Gaussian the picture largely shows was seen, whatever its depth.

    Args:
        model: renders.
        g: ``[N, …]``.
        normals: each Gaussian's (template) normal, in ``g``'s frame. ``[N, 3]``
        viewmats: the input camera. ``[1, 4, 4]``
        Ks: its intrinsics at ``size``. ``[1, 3, 3]``
        size: the render's side, pixels.
        grazing_cos: the cosine below which a Gaussian counts as unseen.
        facing_cos: the cosine above which it counts as wholly seen (> ``grazing_cos``).
        depth_tolerance: :func:`visibility`'s.
        shown_full: the transmittance from which a Gaussian counts as wholly seen (> 0; above 1: never by it).

    Returns:
        ``[N]`` in [0, 1].
    """
    cos = facing(normals, g.means, viewmats)  # [N]
    ramp = ((cos - grazing_cos) / max(facing_cos - grazing_cos, 1e-6)).clamp(0, 1)  # [N]
    depth_test, shown = visibility(model, g, viewmats, Ks, size, depth_tolerance)
    if shown_full > 1:  # the depth test alone
        return depth_test * ramp
    return torch.maximum(depth_test * ramp, (shown / shown_full).clamp(0, 1))
