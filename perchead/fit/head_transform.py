"""The head transform: one bounded change of the whole head in the input camera's image plane (width and height
scales, tapers, a shift; the depth kept)."""

from __future__ import annotations

import torch
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians


def head_transform(means: Tensor, axes: Tensor, centre: Tensor, half_height: Tensor, scale: Tensor,
                   taper: Tensor, shift: Tensor, config: FitConfig) -> tuple[Tensor, Tensor]:
    """The whole-head change of the fit, in the input camera's frame, from raw (unbounded) parameters.

    With ``u, v`` a centre's coordinates along the camera's image axes and ``ŷ = v / half_height``:
    ``u' = u · exp(s_u + t₁ ŷ + t₂ (ŷ² − 1/3))``, ``v' = v · exp(s_v + t₃ ŷ + t₄ (ŷ² − 1/3))`` (the height
    terms as many as ``taper`` holds beyond two), plus a shift along the two axes;
    the depth along the viewing axis is kept. Scales and taper terms are ``max_head_log_scale · tanh(·)``,
    the shift ``max_head_shift · tanh(·)``; zero parameters are the identity.

    Args:
        means: Gaussian centres. ``[N, 3]``
        axes: rows = the camera's x, y, z axes in the world (the view matrix's rotation). ``[3, 3]``
        centre: the point the head scales about. ``[3]``
        half_height: half the head's extent along the camera's y axis (normalises the taper). ``[]``
        scale: raw log-scales along the camera's x and y. ``[2]``
        taper: raw linear and quadratic width-with-height terms, then 0–2 height-with-height terms.
            ``[2 + d]``
        shift: raw shift along the camera's x and y. ``[2]``
        config: the bounds.

    Returns:
        (centres ``[N, 3]``, the mean size factor ``[]`` for the Gaussians' own scales).
    """
    s = config.head.max_log_scale * torch.tanh(scale)  # [2]
    t = config.head.max_log_scale * torch.tanh(taper)  # [2 + d]
    d = config.head.max_shift * torch.tanh(shift)  # [2]
    local = (means - centre) @ axes.T  # [N, 3] camera x, y, z
    y = local[:, 1] / half_height  # [N] about −1 … 1
    shapes = [y, y * y - 1 / 3]  # [N] each: the taper's shapes, zero-mean over −1 … 1
    log_u = s[0] + t[0] * shapes[0] + t[1] * shapes[1]  # [N]
    log_v = s[1] + sum(t[2 + k] * shapes[k] for k in range(len(t) - 2))  # [N] (or [] without a height taper)
    u = local[:, 0] * torch.exp(log_u) + d[0]  # [N]
    v = local[:, 1] * torch.exp(log_v) + d[1]  # [N]
    moved = torch.stack([u, v, local[:, 2]], dim=-1)  # [N, 3]
    return centre + moved @ axes, torch.exp((s[0] + s[1]) / 3)  # [N, 3], [] (depth unscaled)


class HeadTransform:
    """The head transform's raw parameters for one head seen by one camera (all zero: the identity), and the
    head through it.

    Args:
        g0: the head it changes. ``[N, …]``
        camera: the input camera (its axes are the transform's; the given camera, not a refined one).
        config: the fit's settings (``head``).
    """

    def __init__(self, g0: Gaussians, camera: Cameras, config: FitConfig):
        device, enabled = g0.means.device, config.head.enabled
        self.config = config
        self.scale = torch.zeros(2, device=device, requires_grad=enabled)  # [2]
        self.taper = torch.zeros(2 + config.head.taper_degree, device=device, requires_grad=enabled)  # [2 + d]
        self.shift = torch.zeros(2, device=device, requires_grad=enabled)  # [2]
        self.axes = camera.viewmats[0, :3, :3].to(device, torch.float32)  # [3, 3] the given camera's axes
        self.centre = g0.means.mean(dim=0)  # [3]
        heights = (g0.means - self.centre) @ self.axes[1]  # [N]
        self.half_height = ((heights.max() - heights.min()) / 2).clamp_min(1e-6)

    def parameters(self) -> list[Tensor]:
        """The raw parameters the optimiser changes: scale ``[2]``, taper ``[2 + d]``, shift ``[2]``."""
        return [self.scale, self.taper, self.shift]

    def __call__(self, g0: Gaussians) -> tuple[Tensor, Tensor]:
        """The centres and scales of ``g0`` through the transform (unchanged when it is off). ``[N, 3]`` each."""
        if not self.config.head.enabled:
            return g0.means, g0.scales
        means, size = head_transform(g0.means, self.axes, self.centre, self.half_height, self.scale, self.taper,
                                     self.shift, self.config)
        return means, g0.scales * size  # [N, 3], [N, 3]
