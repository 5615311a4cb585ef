"""Measures of how alike two images are, shared by the training losses and the evaluation metrics.

SSIM is the standard one of Wang et al. (2004): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01,
K2 = 0.03, data range 1, 'valid' filtering (like the reference MATLAB ``ssim.m``), averaged over pixels
and channels; it is differentiable (the SSIM loss term) and runs in float64 as a metric. PSNR is plain
PyTorch. The frozen networks (DINOv2, SAM 2.1 image encoder, LPIPS) load by id from the local cache
first and raise :class:`MissingWeightsError` naming the model when their weights are absent; loading never
waits on the network when ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.models.hub import hub_offline
from perchead.models.layers import IMAGENET_MEAN, IMAGENET_STD

SSIM_WINDOW = 11  # from Wang et al. 2004
SSIM_SIGMA = 1.5  # from Wang et al. 2004
SSIM_K1 = 0.01  # from Wang et al. 2004
SSIM_K2 = 0.03  # from Wang et al. 2004


class MissingWeightsError(OSError):
    """A loss or metric network's weights are not available locally and cannot be downloaded."""


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(pred.shape)}")


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per image.

    Args:
        pred: ``[B, C, H, W]`` in [0, 1].
        target: ``[B, C, H, W]`` in [0, 1].

    Returns:
        ``[B]``
    """
    _check_pair(pred, target)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB (``inf`` for identical images).

    Args:
        pred: ``[B, C, H, W]``.
        target: ``[B, C, H, W]``.
        data_range: the images' value range (1 for [0, 1] images).

    Returns:
        ``[B]``
    """
    err = mse(pred, target)  # [B]
    return 10.0 * torch.log10(data_range**2 / err)  # err = 0 gives +inf


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, device=None, dtype=torch.float32) -> Tensor:
    """Normalised 1-D Gaussian kernel. ``[size]``"""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd number, got {size}")
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2  # [size]
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filtering of every channel. ``[B, C, H, W]`` → ``[B, C, H-k+1, W-k+1]``"""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)  # vertical pass
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)  # horizontal pass


def ssim_map(
    pred: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """Local SSIM map (differentiable).

    Args:
        pred: ``[B, C, H, W]``.
        target: ``[B, C, H, W]``.
        data_range: the images' value range.
        window: Gaussian window size (odd); images must be at least this large.
        sigma: Gaussian standard deviation in pixels.

    Returns:
        ``[B, C, H - window + 1, W - window + 1]``, float64 when no gradient is needed, else float32.
    """
    _check_pair(pred, target)
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {tuple(pred.shape[-2:])}")
    # Metrics (no gradient needed) run in float64 like the reference implementations; the loss in float32.
    needs_grad = torch.is_grad_enabled() and (pred.requires_grad or target.requires_grad)
    dtype = torch.float32 if needs_grad or pred.device.type == "mps" else torch.float64
    pred, target = pred.to(dtype), target.to(dtype)
    g = gaussian_window(window, sigma, device=pred.device, dtype=dtype)  # [k]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    # (Co)variances are shift-invariant: centring both images first avoids float32 cancellation in E[x²] − μ².
    shift = 0.5 * (pred.mean((2, 3), keepdim=True) + target.mean((2, 3), keepdim=True)).detach()  # [B, C, 1, 1]
    xc, yc = pred - shift, target - shift
    mu_xc, mu_yc = _blur(xc, g), _blur(yc, g)  # [B, C, h, w]
    sxx = _blur(xc * xc, g) - mu_xc**2
    syy = _blur(yc * yc, g) - mu_yc**2
    sxy = _blur(xc * yc, g) - mu_xc * mu_yc
    mu_x, mu_y = mu_xc + shift, mu_yc + shift
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return num / den


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM per image (Wang et al. 2004; 11×11 Gaussian window, σ = 1.5), differentiable.

    Args:
        pred: ``[B, C, H, W]``.
        target: ``[B, C, H, W]``.
        data_range: the images' value range.

    Returns:
        ``[B]``
    """
    return ssim_map(pred, target, data_range).flatten(1).mean(1).float()


def _load_pretrained(cls, model_id: str, what: str):
    """``cls.from_pretrained(model_id)``, local cache first; a clear MissingWeightsError when absent."""
    try:
        return cls.from_pretrained(model_id, local_files_only=True)
    except OSError as local_error:
        if hub_offline() or os.path.isdir(model_id):
            raise MissingWeightsError(
                f"{what} weights '{model_id}' are not in the local Hugging Face cache and downloads are off "
                f"(HF_HUB_OFFLINE=1). Download them on a connected machine, pass a local folder, or set the "
                f"loss weight to 0 (LossConfig.on_missing='skip' drops the term with a warning)."
            ) from local_error
    try:
        return cls.from_pretrained(model_id)
    except OSError as exc:
        raise MissingWeightsError(
            f"{what} weights '{model_id}' could not be downloaded: {exc}. Pass a local folder, or set the loss "
            f"weight to 0 (LossConfig.on_missing='skip' drops the term with a warning)."
        ) from exc


def load_dino(model_id: str = "facebook/dinov2-small") -> nn.Module:
    """Frozen transformers ``Dinov2Model`` by hub id or folder (raises MissingWeightsError if absent)."""
    from transformers import Dinov2Model

    return _load_pretrained(Dinov2Model, model_id, "DINOv2")


def load_sam_vision(model_id: str = "facebook/sam2.1-hiera-tiny") -> nn.Module:
    """The image encoder (``Sam2VisionModel``) of a transformers ``Sam2Model`` by hub id or folder."""
    from transformers import Sam2Model

    return _load_pretrained(Sam2Model, model_id, "SAM 2.1").vision_encoder


def load_lpips(net: str = "vgg") -> nn.Module:
    """LPIPS (the ``lpips`` package) with its backbone; raises MissingWeightsError when unavailable."""
    try:
        import lpips
    except ImportError as exc:
        raise MissingWeightsError("LPIPS needs the `lpips` package (pip install lpips), which is not installed") from exc
    try:
        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as exc:  # torchvision raises URLError/RuntimeError when the backbone cannot be fetched
        raise MissingWeightsError(f"LPIPS backbone '{net}' weights are unavailable: {exc}") from exc
    return freeze(model)


def freeze(module: nn.Module) -> nn.Module:
    """Puts a network in eval mode and turns off gradients to its parameters."""
    module.eval()
    module.requires_grad_(False)
    return module


def imagenet_normalize(x: Tensor, size: int) -> Tensor:
    """Resizes ``[N, 3, H, W]`` images in [0, 1] to ``size``² and applies ImageNet normalisation."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def cosine_distance(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Mean of ``1 - cos`` between l2-normalised feature vectors along ``dim`` (a scalar)."""
    a = F.normalize(a.float(), dim=dim)
    b = F.normalize(b.float(), dim=dim)
    return (1.0 - (a * b).sum(dim)).mean()


class DinoFeatures(nn.Module):
    """Frozen DINOv2 returning the tokens of chosen blocks (paper §3.4: DINOv2-small layers 8 and 11)."""

    def __init__(self, model: nn.Module, layers: tuple[int, ...] = (8, 11), image_size: int = 224) -> None:
        """
        Args:
            model: a transformers ``Dinov2Model``.
            layers: 0-based block indices.
            image_size: input size, a multiple of the patch size.
        """
        super().__init__()
        n_blocks = model.config.num_hidden_layers
        if not layers or any(not 0 <= i < n_blocks for i in layers):
            raise ValueError(f"dino layers {layers} must be 0-based block indices in [0, {n_blocks})")
        if image_size % model.config.patch_size:
            raise ValueError(f"dino image size {image_size} must be a multiple of the patch size {model.config.patch_size}")
        self.model = freeze(model)
        self.layers = tuple(layers)
        self.image_size = image_size

    def train(self, mode: bool = True) -> "DinoFeatures":
        return super().train(False)  # always eval: frozen

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` in [0, 1] → one ``[N, T, C]`` token tensor per layer."""
        out = self.model(pixel_values=imagenet_normalize(images, self.image_size), output_hidden_states=True)
        return [out.hidden_states[i + 1] for i in self.layers]  # hidden_states[0] is the embedding output


class SamFeatures(nn.Module):
    """Frozen SAM 2.1 image encoder returning its image embeddings (lowest-resolution FPN level)."""

    def __init__(self, vision_model: nn.Module, image_size: int = 1024) -> None:
        """
        Args:
            vision_model: a transformers ``Sam2VisionModel`` (``Sam2Model.vision_encoder``).
            image_size: input size.
        """
        super().__init__()
        self.model = freeze(vision_model)
        self.image_size = image_size

    def train(self, mode: bool = True) -> "SamFeatures":
        return super().train(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        """``[N, 3, H, W]`` in [0, 1] → ``[[N, h*w, C]]``."""
        out = self.model(pixel_values=imagenet_normalize(images, self.image_size))
        feats = out.fpn_hidden_states[-1]  # [N, C, h, w]
        return [feats.flatten(2).transpose(1, 2)]  # [N, h*w, C]


def feature_distance(extractor: nn.Module, pred: Tensor, target: Tensor) -> Tensor:
    """Cosine distance between the extractor's features of ``pred`` and ``target``, averaged over layers.

    Target features are computed without gradient; gradients flow to ``pred`` only (the extractor is frozen).
    """
    with torch.no_grad():
        target_feats = extractor(target)
    pred_feats = extractor(pred)
    dists = [cosine_distance(p, t) for p, t in zip(pred_feats, target_feats)]
    return torch.stack(dists).mean()
