"""The Gaussian stage of the fit: the Gaussians facing the camera split into finer ones, then bounded changes of
every Gaussian (colour, opacity, position, scale), the head transform and the input camera fitted to the photo
under the priors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.fit.head_transform import HeadTransform
from perchead.fit.pose import adjust_camera
from perchead.fit.priors import Priors
from perchead.fit.views import facing, render
from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians, quaternion_to_matrix
from perchead.progress import Progress


def split_gaussians(g: Gaussians, index: Tensor, spread: float = 0.5, shrink: float = 0.6) -> tuple[Gaussians, Tensor]:
    """Splits each Gaussian in ``index`` into four: offset by ``± spread`` of its standard deviation along its
    two largest axes, those two scales times ``shrink``; colour and opacity kept. The first child takes the
    parent's place, the other three are appended (so the first N keep their template order).

    Args:
        g: ``[N, …]``.
        index: the Gaussians to split. ``[k]`` long

    Returns:
        (``[N + 3k, …]``, the parent of each Gaussian ``[N + 3k]`` long).
    """
    R = quaternion_to_matrix(g.quats[index])  # [k, 3, 3] columns = the axes
    s = g.scales[index]  # [k, 3]
    order = s.argsort(dim=-1, descending=True)  # [k, 3]
    a, b = order[:, 0], order[:, 1]  # [k] the two largest axes
    rows = torch.arange(len(index), device=index.device)
    axis_a = R[rows, :, a] * s[rows, a, None]  # [k, 3] metres
    axis_b = R[rows, :, b] * s[rows, b, None]  # [k, 3]
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], device=index.device)  # [4, 2]
    means = g.means[index][None] + spread * (signs[:, 0, None, None] * axis_a + signs[:, 1, None, None] * axis_b)  # [4, k, 3]
    factor = torch.ones_like(s)  # [k, 3]
    factor[rows, a] = shrink
    factor[rows, b] = shrink
    scales = (s * factor)[None].expand(4, -1, -1)  # [4, k, 3]

    def children(value: Tensor) -> Tensor:
        return value[index][None].expand(4, *value[index].shape)  # [4, k, …]

    first = replace(g, means=g.means.index_copy(0, index, means[0]), scales=g.scales.index_copy(0, index, scales[0]))
    rest = Gaussians(means=means[1:].reshape(-1, 3), quats=children(g.quats)[1:].reshape(-1, 4),
                     scales=scales[1:].reshape(-1, 3), opacities=children(g.opacities)[1:].reshape(-1),
                     colors=children(g.colors)[1:].reshape(-1, 3))
    parent = torch.cat([torch.arange(g.num_gaussians, device=index.device), index.repeat(3)])  # [N + 3k]
    return Gaussians.cat([first, rest]), parent


def lr_factor(step: int, steps: int, final: float) -> float:
    """The step-size factor at ``step`` of ``steps``: a half cosine from 1 at the first step to ``final`` at
    the last."""
    if steps <= 1:
        return 1.0
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / (steps - 1)))


@dataclass
class GaussianStage:
    """What :func:`gaussian_stage` returns.

    Attributes:
        gaussians: the fitted head (detached; turned by the refined rotation with ``camera.rotate_head``).
            ``[N', …]``
        camera: the refined input camera (the given one with ``camera.rotate_head``), one view at ``S × S``.
        losses: the total loss per step (before each update).
        first_photo: the photo term at the first step (NaN without steps).
        notes: remarks for the user (the camera change).
    """

    gaussians: Gaussians
    camera: Cameras
    losses: list[float] = field(default_factory=list)
    first_photo: float = float("nan")
    notes: list[str] = field(default_factory=list)


def split_facing(model, g0: Gaussians, camera: Cameras, config: FitConfig) -> tuple[Gaussians, Tensor]:
    """Finer Gaussians where the photo sees the head most squarely (the face of a frontal photo): the
    ``gaussians.split_share`` of the template's Gaussians facing ``camera`` most squarely, each split in four
    (:func:`split_gaussians`). Returns (the head ``[N', …]``, each Gaussian's template normal ``[N', 3]``)."""
    normals = model.template.normals.to(g0.means.device, torch.float32)  # [T, 3]
    k = int(config.gaussians.split_share * normals.shape[0])
    if k:
        with torch.no_grad():
            chosen = facing(normals, g0.means, camera.viewmats).topk(k).indices  # [k]
        g0, parent = split_gaussians(g0, chosen)
        normals = normals[parent]  # [N, 3]
    return g0, normals


def gaussian_stage(model, g0: Gaussians, camera: Cameras, terms, config: FitConfig, progress: Progress,
                   span: tuple[float, float], on_head: Callable[[Gaussians], None] | None = None,
                   head_every: int = 10) -> GaussianStage:
    """Fits bounded changes of every Gaussian of ``g0`` (split first: :func:`split_facing`), the head transform
    and the input camera to the photo for ``gaussians.steps`` steps, under the priors.

    Colours and opacities move from the first step, positions and scales after ``gaussians.geometry_from`` of
    the steps; each change is ``bound · tanh(·)``; Adam, its step sizes decaying by a half cosine
    (:func:`lr_factor`); the camera is refined in the first ``camera.steps`` steps.

    Args:
        model: the PercHead (renderer, template; weights frozen by the caller).
        g0: the head to fit. ``[N, …]``
        camera: the input camera, one view at the fit's size ``S``.
        terms: the photo terms (:class:`~perchead.fit.driver.PhotoTerms`).
        config: the fit's settings.
        progress: called once per step with a fraction in ``span``; may raise to cancel.
        span: the fractions of the first and last step.
        on_head: called with the head before every ``head_every``-th step (not the first: the caller has
            shown the start; detached, turned as the input view sees it with ``camera.rotate_head``).
        head_every: steps between two calls of ``on_head``.

    Returns:
        :class:`GaussianStage`.
    """
    device = g0.means.device
    S = camera.width
    g0, normals = split_facing(model, g0, camera, config)
    # raw changes on top of the prediction (all zero = the prediction)
    N = g0.num_gaussians
    color_logit0 = torch.logit(g0.colors.clamp(1e-4, 1 - 1e-4))  # [N, 3]
    opacity_logit0 = torch.logit(g0.opacities.clamp(1e-4, 1 - 1e-4))  # [N]
    # the priors compare with the start as the parameters express it: through logit and sigmoid the round
    # trip is off by float rounding, whose sign Adam would follow at full step size
    color0 = torch.sigmoid(color_logit0)  # [N, 3]
    opacity0 = torch.sigmoid(opacity_logit0).clamp(1e-6, 1 - 1e-6)  # [N]
    d_color = torch.zeros(N, 3, device=device, requires_grad=True)  # [N, 3]
    d_opacity = torch.zeros(N, device=device, requires_grad=True)  # [N]
    d_offset = torch.zeros(N, 3, device=device, requires_grad=True)  # [N, 3]
    d_scale = torch.zeros(N, 3, device=device, requires_grad=True)  # [N, 3]
    d_camera = torch.zeros(6, device=device, requires_grad=True)  # [6]
    base = HeadTransform(g0, camera, config)
    stage = config.gaussians
    opt = torch.optim.Adam([
        {"params": base.parameters(), "lr": config.head.lr},
        {"params": [d_color], "lr": stage.lr_color},
        {"params": [d_opacity], "lr": stage.lr_opacity},
        {"params": [d_offset], "lr": stage.lr_offset},
        {"params": [d_scale], "lr": stage.lr_scale},
        {"params": [d_camera], "lr": config.camera.lr},
    ])

    def current() -> Gaussians:
        means, scales = base(g0)
        return Gaussians(
            means=means + stage.max_offset * torch.tanh(d_offset),  # [N, 3] bounded
            quats=g0.quats,
            scales=scales * torch.exp(stage.max_log_scale * torch.tanh(d_scale)),  # [N, 3] bounded
            opacities=torch.sigmoid(opacity_logit0 + d_opacity).clamp(1e-6, 1 - 1e-6),  # [N]
            colors=torch.sigmoid(color_logit0 + d_color),  # [N, 3]
        )

    priors = Priors(model, g0, camera, normals, model.template.vertices, config)
    geometry_step = int(round(stage.geometry_from * stage.steps))
    lo, hi = span
    n = stage.steps
    losses: list[float] = []
    first_photo = float("nan")
    base_lrs = [group["lr"] for group in opt.param_groups]
    for step in range(n):
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * lr_factor(step, n, stage.lr_final)
        progress(lo + (hi - lo) * step / max(n, 1), f"fitting to the photo {step + 1}/{n}")
        refine_cam = step < config.camera.steps
        d_camera.requires_grad_(refine_cam)
        geometry = step >= geometry_step
        d_offset.requires_grad_(geometry)
        d_scale.requires_grad_(geometry)
        g = current()
        viewmats, Ks = adjust_camera(camera, d_camera if refine_cam else d_camera.detach(), config)
        if on_head is not None and step and step % head_every == 0:
            with torch.no_grad():
                shown = g.detach()
                on_head(_turned(shown, camera, viewmats.detach()) if config.camera.rotate_head else shown)
        if config.camera.rotate_head:  # the same view of the head, but the head turns (every other view sees it)
            rgb, alpha = render(model, _turned(g, camera, viewmats), camera.viewmats, Ks, S,
                                refine=config.photo.through_refiner)
        else:
            rgb, alpha = render(model, g, viewmats, Ks, S, refine=config.photo.through_refiner)  # [1, 3, S, S]
        photo = terms.photo_l1(rgb, alpha)
        loss = config.photo.w_photo * photo + config.photo.w_silhouette * terms.silhouette_l1(alpha)
        loss = priors.add(loss, step, g, base, viewmats, color0, opacity0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step == 0:
            first_photo = float(photo.detach())
    progress(hi, "fitted to the photo")
    notes = []
    with torch.no_grad():
        g = current().detach()
        viewmats, Ks = adjust_camera(camera, d_camera.detach(), config)
        if config.camera.rotate_head:
            g = _turned(g, camera, viewmats)
            viewmats = camera.viewmats
        b = torch.tanh(d_camera.detach())
        if config.camera.steps and n:
            what = "head turned by" if config.camera.rotate_head else "camera refined by"
            notes.append("photo-fit: {} yaw {:+.1f}°, pitch {:+.1f}°, roll {:+.1f}°".format(
                what, *(b[:3] * config.camera.max_deg).tolist()))
    return GaussianStage(gaussians=g, camera=Cameras(viewmats.detach(), Ks.detach(), S, S), losses=losses,
                         first_photo=first_photo, notes=notes)


def _turned(g: Gaussians, camera: Cameras, viewmats: Tensor) -> Gaussians:
    """The head turned so that ``camera`` sees it as the refined ``viewmats`` ``[1, 4, 4]`` see the unturned head
    (``camera.rotate_head``: every other view sees the turn too)."""
    motion = torch.linalg.inv(camera.viewmats[0]) @ viewmats[0]  # [4, 4] rigid
    return g.transformed(motion[:3, :3], translation=motion[:3, 3])
