"""The photo's colours projected onto a head: the cheap first look at the person, before any fit step.

The feed-forward head is an averaged likeness; its shape is right long before its colours are. Every Gaussian
the input camera sees — facing it (its template normal toward the camera), nearest to it along its pixel, and
inside the matte — takes the photo's colour at its centre's pixel, blended in by how squarely it is seen, so
the seam toward the hidden side is soft. No optimisation: one projection, one depth buffer and one lookup,
a few milliseconds on a CPU. What the photo does not show keeps the prediction's colours.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.fit.driver import _checked
from perchead.fit.views import facing
from perchead.geometry.cameras import Cameras, project_points
from perchead.geometry.gaussians import Gaussians


@torch.no_grad()
def project_photo_colors(model, gaussians: Gaussians, image: Tensor, mask: Tensor, camera: Cameras,
                         min_facing: float = -0.1, full_facing: float = 0.3, depth_cells: int = 32,
                         depth_tolerance: float = 0.04) -> tuple[Gaussians, Tensor]:
    """The head with the photo's colours on the Gaussians the input camera sees.

    Args:
        model: the PercHead (its template's normals, one per Gaussian of the predicted head).
        gaussians: the feed-forward head. ``[N, …]`` or ``[1, N, …]`` (N = the template's count)
        image: the model input over white. ``[1, 3, S, S]`` or ``[3, S, S]``
        mask: its matte. ``[1, 1, S, S]``, ``[1, S, S]`` or ``[S, S]``
        camera: the input camera, one view (any size: its intrinsics are scaled to ``S``).
        min_facing: Gaussians seen more obliquely than this cosine keep their colour …
        full_facing: … from this cosine on they take the photo's; linear in between.
        depth_cells: side of the coarse depth buffer over the image that decides which Gaussian is in front.
        depth_tolerance: metres behind the nearest Gaussian of its cell that still count as seen.

    Returns:
        (the head ``[N, …]`` with new colours, each Gaussian's share of the photo's colour ``[N]`` in [0, 1]).

    Raises:
        ValueError: a batch of heads, a head that does not match the template, images / masks / cameras of the
            wrong shape, or ``min_facing ≥ full_facing``.
    """
    gaussians, image, mask, _ = _checked(gaussians, image, mask, None, camera)  # as the fit checks them
    if not min_facing < full_facing:
        raise ValueError(f"min_facing ({min_facing}) must be below full_facing ({full_facing})")
    device = gaussians.means.device
    normals = model.template.normals.to(device, torch.float32)  # [N, 3]
    if normals.shape[0] != gaussians.num_gaussians:
        raise ValueError(f"the head has {gaussians.num_gaussians} Gaussians, the template {normals.shape[0]}: "
                         "project onto the feed-forward head (before any split)")
    S = image.shape[-1]
    image = image.to(device, torch.float32)
    mask = mask.to(device, torch.float32)
    viewmats = camera.viewmats.to(device, torch.float32)  # [1, 4, 4]
    Ks = camera.Ks.to(device, torch.float32).clone()  # [1, 3, 3]
    Ks[:, :2] *= S / camera.width
    means = gaussians.means.float()  # [N, 3]
    uv, depth = project_points(means, viewmats, Ks)  # [1, N, 2], [1, N]
    uv, depth = uv[0], depth[0]
    # nearest along its pixel: a coarse depth buffer of the Gaussian centres (a cheek hides the ear behind it)
    cell = (uv / S * depth_cells).floor().long().clamp(0, depth_cells - 1)  # [N, 2]
    index = cell[:, 1] * depth_cells + cell[:, 0]  # [N]
    front = torch.full((depth_cells * depth_cells,), float("inf"), device=device)
    front = front.scatter_reduce(0, index, depth, reduce="amin")  # [cells]
    in_front = depth <= front[index] + depth_tolerance  # [N]
    # sampled at the centres' pixels (grid_sample: −1 … 1 spans the image's outer edges)
    grid = (uv / S * 2 - 1)[None, None]  # [1, 1, N, 2]
    photo = F.grid_sample(image, grid, mode="bilinear", align_corners=False)[0, :, 0].T  # [N, 3]
    matte = F.grid_sample(mask, grid, mode="bilinear", align_corners=False)[0, 0, 0]  # [N]
    inside = ((uv >= 0) & (uv <= S)).all(dim=-1) & (depth > 0)  # [N]
    squarely = ((facing(normals, means, viewmats) - min_facing) / (full_facing - min_facing)).clamp(0, 1)  # [N]
    share = squarely * matte.clamp(0, 1) * (in_front & inside).float()  # [N]
    colors = gaussians.colors + share[:, None] * (photo.clamp(0, 1) - gaussians.colors)  # [N, 3]
    return replace(gaussians, colors=colors), share
