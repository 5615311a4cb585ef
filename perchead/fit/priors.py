"""The priors of the Gaussian stage, which keep what the photo does not show close to the prediction: left–right
symmetry (each template vertex's mirror), colour smoothness within each 3D patch, and an anchor on the Gaussians
facing away from the camera."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.fit.head_transform import HeadTransform
from perchead.fit.views import distill_cameras, facing, render
from perchead.geometry.cameras import Cameras, camera_centers
from perchead.geometry.gaussians import Gaussians

PATCH = 16  # Gaussians per 3D patch (paper §3.3)


# ------------------------------------------------------------------------------------------ helpers
_MIRROR_CACHE: dict[tuple, Tensor] = {}


def mirror_index(vertices: Tensor, neighbours: int = 8) -> Tensor:
    """For each template vertex, the index of the vertex nearest its left–right mirror image (x → −x).

    The template's vertices come in compact patches of 16 (patch p owns 16p … 16p+15): each mirrored
    vertex is compared with the vertices of the ``neighbours`` patches whose centres lie nearest the
    mirrored centre of its own patch — O(N) work instead of an N × N distance matrix.

    Args:
        vertices: ``[N, 3]``, N a multiple of 16; the canonical head is symmetric about x = 0.
        neighbours: candidate patches per patch.

    Returns:
        ``[N]`` long (cached per template).
    """
    key = (vertices.shape[0], float(vertices.double().sum()), float(vertices[:, 0].double().abs().sum()))
    if key not in _MIRROR_CACHE:
        v = vertices.detach().float().cpu().view(-1, PATCH, 3)  # [P, 16, 3]
        flip = torch.tensor([-1.0, 1.0, 1.0])
        centres = v.mean(dim=1)  # [P, 3]
        k = min(neighbours, len(centres))
        near = torch.cdist(centres * flip, centres).topk(k, dim=1, largest=False).indices  # [P, k]
        candidates = v[near].reshape(len(v), k * PATCH, 3)  # [P, 16k, 3]
        best = torch.cdist(v * flip, candidates).argmin(dim=-1)  # [P, 16]
        _MIRROR_CACHE[key] = (near.gather(1, best // PATCH) * PATCH + best % PATCH).reshape(-1)  # [N]
    return _MIRROR_CACHE[key].to(vertices.device)


class Priors:
    """The priors of the Gaussian stage for one head: the distillation targets (the stage's starting head rendered
    once from the ring of views), the mirror pairs and the seeded order of the distillation views.

    Args:
        model: the PercHead (renderer, render framing).
        g0: the stage's starting head (after splitting). ``[N, …]``
        camera: the input camera (one view).
        normals: each Gaussian's template normal. ``[N, 3]``
        template_vertices: the template's vertices (its Gaussians come first in ``g0``). ``[T, 3]``
        config: the fit's settings (``priors``, ``head``, ``gaussians``).
    """

    def __init__(self, model, g0: Gaussians, camera: Cameras, normals: Tensor, template_vertices: Tensor,
                 config: FitConfig):
        device = g0.means.device
        self.model, self.g0, self.normals, self.config = model, g0, normals, config
        dcams, dweights = distill_cameras(model, camera, config)
        self.dcams, self.dweights = dcams.to(device), dweights.to(device)
        with torch.no_grad():
            self.d_rgb0, self.d_alpha0 = render(model, g0, self.dcams.viewmats, self.dcams.Ks,
                                                config.priors.distill_size, refine=False)  # [V, 3, s, s]
        self.mirror = mirror_index(template_vertices).to(device)  # [T] (the template's Gaussians come first)
        self.T = len(self.mirror)
        self.flip = torch.tensor([-1.0, 1.0, 1.0], device=device)
        gen = torch.Generator().manual_seed(config.priors.seed)
        self.order = torch.randperm(len(self.dcams), generator=gen).tolist() if len(self.dcams) else []

    def add(self, loss: Tensor, step: int, g: Gaussians, base: HeadTransform, viewmats: Tensor, color0: Tensor,
            opacity0: Tensor) -> Tensor:
        """``loss`` plus every prior at ``step``.

        Args:
            loss: the photo terms so far. ``[]``
            step: the Gaussian stage's step (picks the distillation views).
            g: the current head. ``[N, …]``
            base: the head transform (:class:`~perchead.fit.head_transform.HeadTransform`): the starting head's
                centres and scales through it.
            viewmats: the current input camera. ``[1, 4, 4]``
            color0: the starting colours as the parameters express them. ``[N, 3]``
            opacity0: the starting opacities likewise. ``[N]``

        Returns:
            ``[]``
        """
        config, priors, model, g0, T = self.config, self.config.priors, self.model, self.g0, self.T
        # self-distillation: the (latent stage's) predicted head's own renders from views away from the input
        if priors.w_distill > 0 and priors.distill_per_step > 0 and len(self.order):
            picks = [self.order[(step * priors.distill_per_step + k) % len(self.order)]
                     for k in range(priors.distill_per_step)]
            idx = torch.tensor(picks, device=g.means.device)
            d_rgb, d_alpha = render(model, g, self.dcams.viewmats[idx], self.dcams.Ks[idx], priors.distill_size,
                                    refine=False)
            target_rgb, target_alpha = self.d_rgb0[idx], self.d_alpha0[idx]  # [v, 3, s, s], [v, 1, s, s]
            if config.head.enabled:
                # the prediction through the current head transform: the prior keeps the predicted
                # surface, not the predicted outline that the photo corrects (measured: +0.13 dB novel)
                with torch.no_grad():
                    means, scales = base(g0)
                    target_rgb, target_alpha = render(model, replace(g0, means=means, scales=scales),
                                                      self.dcams.viewmats[idx], self.dcams.Ks[idx],
                                                      priors.distill_size, refine=False)
            per_view = ((d_rgb - target_rgb).abs().mean(dim=(1, 2, 3))
                        + (d_alpha - target_alpha).abs().mean(dim=(1, 2, 3)))
            # × 4: the weights average about 1/4 over a ring of views (ours), so w_distill ≈ the photo's weight
            loss = loss + priors.w_distill * (self.dweights[idx] * per_view).sum() / len(picks) * 4
        # visibility of each Gaussian from the (current) input camera, by its template normal
        with torch.no_grad():
            vis = facing(self.normals, g0.means, viewmats.detach()).clamp(0, 1)  # [N]
            pull = (vis[self.mirror] - vis[:T]).clamp_min(0)  # [T] > 0 where the mirror is better seen
        dcol = g.colors - color0  # [N, 3]
        doff = g.means - base(g0)[0].detach()  # [N, 3] the per-Gaussian offsets
        if priors.w_symmetry > 0:
            sym = (pull[:, None] * (dcol[:T] - dcol[self.mirror].detach()).abs()).mean()
            # offsets in units of their bound, weighted a tenth of the colours (ours)
            sym = sym + (pull[:, None] * (doff[:T] - doff[self.mirror].detach() * self.flip).abs()).mean() / max(
                config.gaussians.max_offset, 1e-8) * 0.1
            loss = loss + priors.w_symmetry * sym
        if priors.w_smooth > 0:
            patch = dcol[:T].view(-1, PATCH, 3)  # [P, 16, 3]
            loss = loss + priors.w_smooth * (patch - patch.mean(dim=1, keepdim=True)).abs().mean()
        if priors.w_anchor > 0:
            away = 1 - vis  # [N]
            anchor = (away[:, None] * dcol.abs()).mean() + (away * (g.opacities - opacity0).abs()).mean()
            loss = loss + priors.w_anchor * anchor
        return loss


SOURCES = ("photo", "mirror", "prediction")  # where each Gaussian's colour comes from, in unseen_colors' order


def unseen_colors(colors: Tensor, start: Tensor, seen: Tensor, mirror: Tensor, parent: Tensor,
                  match: str = "patch") -> tuple[Tensor, Tensor]:
    """Colours for what the photo did not see: each Gaussian keeps its fitted colour as far as the photo saw it
    (``seen``); the rest comes from its left–right mirror, as far as the photo saw that one, and otherwise from
    the stage's starting head (the network's prediction).

    A mirrored colour is matched in local mean colour: the mirror's fitted colour plus the difference between the
    starting head's mean colours of the two 16-Gaussian patches, so that the lighting the network predicts for
    each side (which differs left and right) stays while the photo's detail and tone cross over. With ``match``
    ``"gaussian"`` the difference is taken per Gaussian instead: the mirror's change from its start is added to
    the Gaussian's own start (the starting head's own detail stays).

    Args:
        colors: the fitted colours. ``[N, 3]``
        start: the stage's starting colours. ``[N, 3]``
        seen: how far the photo saw each Gaussian (:func:`~perchead.fit.views.seen_share`). ``[N]`` in [0, 1]
        mirror: each template Gaussian's mirror (:func:`mirror_index`). ``[T]`` long, T a multiple of 16
        parent: the template Gaussian each Gaussian was split from (itself for the first T). ``[N]`` long
        match: ``"patch"`` or ``"gaussian"``, see above.

    Returns:
        (colours ``[N, 3]``, the share of each source per Gaussian ``[N, 3]``: photo, mirror, prediction as in
        :data:`SOURCES`, summing to 1).
    """
    T = len(mirror)
    if T % PATCH or parent.shape != seen.shape or colors.shape != start.shape or len(colors) != len(seen):
        raise ValueError(f"unseen_colors: mismatched shapes: colors {tuple(colors.shape)}, start "
                         f"{tuple(start.shape)}, seen {tuple(seen.shape)}, mirror {tuple(mirror.shape)}, "
                         f"parent {tuple(parent.shape)}")
    if match not in ("patch", "gaussian"):
        raise ValueError(f"unseen_colors: match must be 'patch' or 'gaussian', got {match!r}")
    partner = mirror[parent]  # [N] a template Gaussian
    if match == "patch":
        patch_mean = start[:T].view(-1, PATCH, 3).mean(dim=1)  # [P, 3]
        shift = patch_mean[parent // PATCH] - patch_mean[partner // PATCH]  # [N, 3]
    else:
        shift = start - start[partner]  # [N, 3]
    mirrored = (colors[partner] + shift).clamp(0, 1)  # [N, 3]
    photo = seen  # [N]
    from_mirror = (1 - seen) * seen[partner]  # [N]
    from_start = (1 - seen) * (1 - seen[partner])  # [N]
    out = photo[:, None] * colors + from_mirror[:, None] * mirrored + from_start[:, None] * start  # [N, 3]
    return out, torch.stack([photo, from_mirror, from_start], dim=-1)


def far_front_shares(sources: Tensor, normals: Tensor, vertices: Tensor, viewmats: Tensor) -> list[float]:
    """The mean share of each colour source (:data:`SOURCES`) over the far side of the face: the template's
    Gaussians whose normal lies within 60° of straight ahead (+z), on the side of x = 0 away from the camera.

    Args:
        sources: :func:`unseen_colors`' shares; the template's T Gaussians first. ``[N, 3]``
        normals: the template's normals. ``[T, 3]``
        vertices: the template's vertices. ``[T, 3]``
        viewmats: the input camera. ``[1, 4, 4]``

    Returns:
        [photo, mirror, prediction] shares, summing to 1.
    """
    side = float(camera_centers(viewmats)[0, 0]) or 1.0  # a camera straight ahead: the left (−x) side
    far = (normals[:, 2] > 0.5) & (vertices[:, 0].to(normals) * side < 0)  # [T]
    return sources[: len(normals)][far.to(sources.device)].mean(dim=0).tolist()
