"""Training-time augmentation (ours): inputs that look like matted real photos, and hair recolouring.

* :func:`augment_inputs` — the INPUT view only (targets stay clean): colour, contrast, gamma and
  saturation jitter, grayscale, lighting changes (a shading gradient), blur, sensor noise, JPEG,
  matte errors (erosion, dilation that lets background show, soft edges) and crop jitter (scale, shift,
  roll) like an imperfect face crop. Real portraits differ from clean renders in all of these.
* :func:`recolor_hair` — repaints the hair of rendered views with another albedo, keeping the shading,
  so that every hair colour is equally common for the editing model (synthetic heads are mostly dark-haired).

All functions are batched, work on ``[0, 1]`` images composited over white, and draw every random number
from the ``torch.Generator`` they are given (reproducible per step).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

HAIR_CLASS = 13  # CelebAMask-HQ id of hair (perchead.geometry.segmentation.CLASSES)
LUMA = (0.299, 0.587, 0.114)
MAX_SHADING = 1.5  # the synthetic lights brighten an albedo by at most about this much


@dataclass
class InputAugmentConfig:
    """Probabilities and ranges of :func:`augment_inputs` (all ours, sized to what phone portraits after
    matting look like).

    Attributes:
        p: probability that a sample is augmented at all (the others stay clean renders).
        brightness, contrast, saturation: multiplicative jitter ranges ``1 ± x``.
        gamma: exponent range ``exp(± gamma)``.
        p_grayscale: probability of a grayscale input.
        p_shading: probability of a directional lighting gradient (strength up to ``shading``).
        shading: maximum darkening at the dark side of the gradient.
        p_blur, blur: probability and maximum Gaussian sigma in pixels.
        p_noise, noise: probability and maximum noise standard deviation.
        p_jpeg, jpeg_quality: probability and quality range of a JPEG round trip.
        p_matte: probability of a matte error: erosion or dilation by up to ``matte_px`` pixels; a dilated
            ring shows a flat background colour, as a matte that keeps a slab of background does.
        p_soft: probability of soft (blurred) matte edges.
        p_crop, scale, shift, roll_deg: probability and ranges of crop jitter (zoom ``1 ± scale``, shift
            ``± shift`` of the frame, roll ``± roll_deg``).
    """

    p: float = 0.8
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.4
    gamma: float = 0.3
    p_grayscale: float = 0.08
    p_shading: float = 0.4
    shading: float = 0.45
    p_blur: float = 0.3
    blur: float = 1.2
    p_noise: float = 0.3
    noise: float = 0.04
    p_jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 90)
    p_matte: float = 0.4
    matte_px: int = 3
    p_soft: float = 0.3
    p_crop: float = 0.6
    scale: float = 0.08
    shift: float = 0.04
    roll_deg: float = 6.0

    def __post_init__(self) -> None:
        for name in ("p", "p_grayscale", "p_shading", "p_blur", "p_noise", "p_jpeg", "p_matte", "p_soft", "p_crop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"jpeg_quality must be an increasing range within 1..100, got {self.jpeg_quality}")


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)  # [n]


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``[C, H, W]`` blurred with a separable Gaussian of ``sigma`` pixels."""
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    c = x.shape[0]
    y = F.conv2d(F.pad(x[None], (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1),
                 groups=c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _jpeg(rgb: Tensor, quality: int) -> Tensor:
    """A JPEG round trip of ``[3, H, W]`` in [0, 1]."""
    from PIL import Image

    array = (rgb.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(2, 0, 1).to(rgb)


def _crop_jitter(image: Tensor, mask: Tensor, zoom: float, shift: tuple[float, float], roll: float
                 ) -> tuple[Tensor, Tensor]:
    """Zooms, shifts (fractions of the frame) and rolls (radians) one sample; white / empty fill."""
    c, s = math.cos(roll) / zoom, math.sin(roll) / zoom
    theta = torch.tensor([[c, -s, 2 * shift[0]], [s, c, 2 * shift[1]]], dtype=image.dtype)[None]  # [1, 2, 3]
    grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False).to(image.device)
    warped = F.grid_sample(torch.cat([1.0 - image, mask])[None], grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)[0]  # white = 0 after the flip, so outside stays white
    return 1.0 - warped[:3], warped[3:]


def augment_inputs(image: Tensor, mask: Tensor, config: InputAugmentConfig, generator: torch.Generator
                   ) -> tuple[Tensor, Tensor]:
    """Makes clean input renders look like matted photos (see the module docstring).

    Args:
        image: ``[B, 3, H, W]`` in [0, 1], composited over white.
        mask: ``[B, 1, H, W]`` in [0, 1].
        config: probabilities and ranges.
        generator: the source of every random number.

    Returns:
        (image ``[B, 3, H, W]`` over white, mask ``[B, 1, H, W]``), new tensors.
    """
    if image.dim() != 4 or image.shape[1] != 3 or mask.shape != (image.shape[0], 1, *image.shape[-2:]):
        raise ValueError(f"image must be [B, 3, H, W] and mask [B, 1, H, W], got {tuple(image.shape)} and "
                         f"{tuple(mask.shape)}")
    out_images, out_masks = [], []
    luma = torch.tensor(LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
    for b in range(image.shape[0]):
        rgb, alpha = image[b].float(), mask[b].float()  # [3, H, W], [1, H, W]
        if float(torch.rand(1, generator=generator)) >= config.p:
            out_images.append(rgb)
            out_masks.append(alpha)
            continue
        r = lambda: float(torch.rand(1, generator=generator))  # noqa: E731
        u = lambda lo, hi: float(_uniform(1, lo, hi, generator))  # noqa: E731
        h, w = rgb.shape[-2:]
        # the head alone (alpha-premultiplied colour), then photometric changes on it
        head = (rgb - (1.0 - alpha)).clamp(0, 1)  # premultiplied: rgb = head + (1 - alpha) · white
        colour = head / alpha.clamp_min(1e-3)  # [3, H, W] straight colour
        if r() < config.p_shading:  # a directional light: a linear gradient across the frame
            angle = u(0, 2 * math.pi)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            ramp = (xs * math.cos(angle) + ys * math.sin(angle)).to(rgb) * 0.5 + 0.5  # [H, W] in [0, 1]
            colour = colour * (1.0 - u(0, config.shading) * ramp)[None]
        colour = colour * u(1 - config.brightness, 1 + config.brightness)
        grey = (colour * luma).sum(0, keepdim=True)  # [1, H, W]
        colour = grey + (colour - grey) * u(1 - config.saturation, 1 + config.saturation)
        mean = (grey * alpha).sum() / alpha.sum().clamp_min(1.0)
        colour = mean + (colour - mean) * u(1 - config.contrast, 1 + config.contrast)
        colour = colour.clamp(0, 1) ** math.exp(u(-config.gamma, config.gamma))
        if r() < config.p_grayscale:
            colour = (colour * luma).sum(0, keepdim=True).expand(3, -1, -1)
        # matte errors: erosion, or dilation that shows a flat background colour in the ring
        if r() < config.p_matte and config.matte_px > 0:
            k = 2 * int(torch.randint(1, config.matte_px + 1, (1,), generator=generator)) + 1
            if r() < 0.5:
                alpha = 1.0 - F.max_pool2d(1.0 - alpha[None], k, stride=1, padding=k // 2)[0]
            else:
                grown = F.max_pool2d(alpha[None], k, stride=1, padding=k // 2)[0]
                ring = (grown - alpha).clamp(0, 1)
                background = _uniform(3, 0.0, 1.0, generator).to(rgb).view(3, 1, 1)
                colour = (colour * alpha + background * ring) / grown.clamp_min(1e-3)
                alpha = grown
        if r() < config.p_soft:
            alpha = _gaussian_blur(alpha, u(0.5, 1.5)).clamp(0, 1)
        rgb = colour * alpha + (1.0 - alpha)  # over white again
        if r() < config.p_crop:
            rgb, alpha = _crop_jitter(rgb, alpha, u(1 - config.scale, 1 + config.scale),
                                      (u(-config.shift, config.shift), u(-config.shift, config.shift)),
                                      math.radians(u(-config.roll_deg, config.roll_deg)))
        if r() < config.p_blur:
            rgb = _gaussian_blur(rgb, u(0.3, config.blur))
        if r() < config.p_noise:
            rgb = rgb + u(0, config.noise) * torch.randn(rgb.shape, generator=generator).to(rgb)
        if r() < config.p_jpeg:
            rgb = _jpeg(rgb, int(torch.randint(config.jpeg_quality[0], config.jpeg_quality[1] + 1, (1,),
                                               generator=generator)))
        out_images.append(rgb.clamp(0, 1))
        out_masks.append(alpha.clamp(0, 1))
    return torch.stack(out_images).to(image.dtype), torch.stack(out_masks).to(mask.dtype)


# ------------------------------------------------------------------------------------------- hair recolour
def recolor_hair(images: Tensor, labels: Tensor, old_rgb: Tensor, new_rgb: Tensor) -> Tensor:
    """Repaints the hair pixels of rendered views with another albedo, keeping the shading.

    The synthetic renders are albedo × shading, so a hair pixel's shading is its luma over the old
    albedo's luma; the new pixel is that shading (at most :data:`MAX_SHADING`) times the new albedo. The
    hair region is eroded by one pixel first: border pixels blend hair with what lies behind it, and
    their shading would be wrong.

    Args:
        images: ``[B, V, 3, H, W]`` in [0, 1].
        labels: ``[B, V, H, W]`` class ids (hair = 13; -1 = unknown, left alone).
        old_rgb: ``[B, 3]`` the hair albedo the heads were rendered with.
        new_rgb: ``[B, 3]`` the albedo to paint; a sample whose row equals ``old_rgb`` is returned unchanged.

    Returns:
        ``[B, V, 3, H, W]`` recoloured images (a new tensor).
    """
    if images.dim() != 5 or labels.shape != (*images.shape[:2], *images.shape[-2:]):
        raise ValueError(f"images must be [B, V, 3, H, W] and labels [B, V, H, W], got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
    old_luma = (old_rgb.to(images) * luma).sum(-1).clamp_min(0.02)  # [B]
    shading = (images * luma.view(1, 1, 3, 1, 1)).sum(2, keepdim=True) / old_luma.view(-1, 1, 1, 1, 1)  # [B,V,1,H,W]
    painted = (shading.clamp(max=MAX_SHADING) * new_rgb.to(images).view(-1, 1, 3, 1, 1)).clamp(0, 1)  # [B,V,3,H,W]
    not_hair = (labels != HAIR_CLASS).flatten(0, 1)[:, None].float()  # [B·V, 1, H, W]
    hair = F.max_pool2d(not_hair, 3, stride=1, padding=1) < 0.5  # eroded by one pixel
    hair = hair.view(*labels.shape[:2], 1, *labels.shape[-2:])  # [B, V, 1, H, W]
    changed = (old_rgb != new_rgb).any(-1).to(hair.device)  # [B]
    hair = hair & changed.view(-1, 1, 1, 1, 1)
    return torch.where(hair, painted, images)
