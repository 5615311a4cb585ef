"""The latent stage of the fit: the network itself is asked for a head that matches the photo better."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.fit.views import distill_cameras, render
from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians
from perchead.progress import Progress


def latent_stage(model, image: Tensor, mask: Tensor, camera: Cameras, photo_l1: Callable[[Tensor, Tensor], Tensor],
                 silhouette_l1: Callable[[Tensor], Tensor], config: FitConfig, progress: Progress,
                 span: tuple[float, float], tokens=None) -> tuple[Gaussians, list[float]]:
    """Optimises an offset to the lift encoder's 2D tokens (the network frozen) so that the decoded head's
    render from ``camera`` matches the photo (``photo_l1`` + ``silhouette_l1`` of the render).

    The decoder reads every 3D patch from all 2D tokens, so what the photo corrects on the visible side
    reaches the hidden side as the network learned it would (hair colour, head shape), which per-Gaussian
    changes cannot do.

    Args:
        model: the PercHead (its encoder, decoder, Gaussian head and renderer; weights frozen by the caller).
        image: the photo at any size ``[1, 3, s, s]`` (encoded at the model's input size).
        mask: its matte ``[1, 1, s, s]``.
        camera: the input camera at the size the losses compare at.
        photo_l1: the photo term of an rgb and alpha render ``[1, 3, S, S]``, ``[1, 1, S, S]``.
        silhouette_l1: the silhouette term of an alpha render ``[1, 1, S, S]``.
        config: the fit's settings (``latent``, ``photo`` weights, ``priors`` views).
        progress: called once per step with a fraction in ``span``; may raise to cancel.
        span: the fractions of the first and last step.
        tokens: the encoder's tokens of ``image`` if the caller has them (else encoded here).

    Returns:
        (the decoded head ``[N, …]``, the loss per step).
    """
    if tokens is None:
        size = model.config.render.image_size
        if image.shape[-1] != size:
            mode = dict(mode="area") if image.shape[-1] > size else dict(mode="bilinear", align_corners=False)
            image = F.interpolate(image, size=(size, size), **mode)  # [1, 3, S, S]
            mask = F.interpolate(mask, size=(size, size), **mode)  # [1, 1, S, S]
        with torch.no_grad():
            tokens = model.encode(image, mask)
    base = tokens.tokens.detach().float()  # [1, K, D]
    offset = torch.zeros_like(base, requires_grad=True)  # [1, K, D]
    opt = torch.optim.Adam([offset], lr=config.latent.lr)
    S = camera.width

    def head() -> Gaussians:
        return model.to_gaussians(model.decode(base + offset, tokens.padding_mask))[0]  # [N, …]

    losses = []
    lo, hi = span
    n = config.latent.steps
    if config.latent.w_alpha > 0:
        # the silhouette prior: the network's own prediction's alpha from the distillation views
        dcams, dweights = distill_cameras(model, camera, config)
        with torch.no_grad():
            _, target_alpha = render(model, head(), dcams.viewmats, dcams.Ks, config.priors.distill_size, refine=False)
    for step in range(n):
        progress(lo + (hi - lo) * step / n, f"fitting the network's view of the photo {step + 1}/{n}")
        g = head()
        rgb, alpha = render(model, g, camera.viewmats, camera.Ks, S, refine=config.photo.through_refiner)
        photo = photo_l1(rgb, alpha)
        loss = config.photo.w_photo * photo + config.photo.w_silhouette * silhouette_l1(alpha)
        if config.latent.w_alpha > 0:
            _, d_alpha = render(model, g, dcams.viewmats, dcams.Ks, config.priors.distill_size, refine=False)  # [V, 1, s, s]
            per_view = (d_alpha - target_alpha).abs().mean(dim=(1, 2, 3))  # [V]
            # × 4 as in the Gaussian stage's distillation: the weights average about 1/4 over the ring
            loss = loss + config.latent.w_alpha * 4 * (dweights * per_view).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        return head().detach().float(), losses
