"""Image metrics of the paper's evaluation (PercHead §4.2, Tables 1–2): PSNR, SSIM, and the network metrics.

PSNR and SSIM are computed here in plain PyTorch. SSIM is the standard one of Wang et al. (2004): an
11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1, 'valid' filtering (no padding,
like the reference MATLAB ``ssim.m`` with ``filter2(..., 'valid')``), averaged over pixels and channels.
The same function is differentiable and is reused by :mod:`perchead.losses` for the SSIM loss term.

LPIPS, DreamSim and ArcFace distance need network weights that cannot be downloaded on these machines.
:func:`network_metrics` reports each as available (a callable) or unavailable (``None`` plus the
reason); :mod:`perchead.evaluate` writes ``null`` for unavailable ones — never a made-up number.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW = 11  # from Wang et al. 2004
SSIM_SIGMA = 1.5  # from Wang et al. 2004
SSIM_K1 = 0.01  # from Wang et al. 2004
SSIM_K2 = 0.03  # from Wang et al. 2004


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


@dataclass
class NetworkMetric:
    """A metric that needs network weights.

    Attributes:
        name: "lpips", "dreamsim" or "arcface".
        fn: ``fn(pred [B,3,H,W], target [B,3,H,W]) -> [B]`` (lower is better), or None when unavailable.
        reason: why it is unavailable (empty when available).
    """

    name: str
    fn: Callable[[Tensor, Tensor], Tensor] | None
    reason: str = ""


def _lpips_metric(net: str = "alex") -> NetworkMetric:
    """LPIPS (Zhang et al. 2018) through the ``lpips`` package, if it and its backbone weights are present."""
    if importlib.util.find_spec("lpips") is None:
        return NetworkMetric("lpips", None, "the `lpips` package is not installed")
    try:
        from perchead.losses import load_lpips

        model = load_lpips(net)
    except (OSError, RuntimeError, ImportError) as exc:  # weights absent and not downloadable
        return NetworkMetric("lpips", None, f"LPIPS weights unavailable: {exc}")

    @torch.no_grad()
    def fn(pred: Tensor, target: Tensor) -> Tensor:
        model.to(pred.device)
        return model(pred * 2 - 1, target * 2 - 1).flatten(1).mean(1)  # LPIPS takes [-1, 1]

    return NetworkMetric("lpips", fn)


def network_metrics(names: tuple[str, ...] = ("lpips", "dreamsim", "arcface")) -> dict[str, NetworkMetric]:
    """The perceptual / identity metrics of Tables 1–2 that need network weights.

    DreamSim (Fu et al. 2023) and ArcFace (Deng et al. 2019) are reported unavailable unless their
    packages (``dreamsim``; ``insightface`` with a downloaded ArcFace model) are installed — their
    weights are downloaded at first use, which these machines cannot do, so we never try.

    Args:
        names: which metrics to look up.

    Returns:
        name → :class:`NetworkMetric` (``fn`` None with ``reason`` when unavailable).
    """
    out: dict[str, NetworkMetric] = {}
    for name in names:
        if name == "lpips":
            out[name] = _lpips_metric()
        elif name == "dreamsim":
            if importlib.util.find_spec("dreamsim") is None:
                out[name] = NetworkMetric(name, None, "the `dreamsim` package and its weights are not installed")
            else:
                out[name] = NetworkMetric(name, None, "DreamSim weights download at first use; not wired offline")
        elif name == "arcface":
            if importlib.util.find_spec("insightface") is None:
                out[name] = NetworkMetric(name, None, "the `insightface` package and ArcFace weights are not installed")
            else:
                out[name] = NetworkMetric(name, None, "ArcFace weights download at first use; not wired offline")
        else:
            raise ValueError(f"unknown network metric {name!r}; expected lpips, dreamsim or arcface")
    return out


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values (PSNR of a pixel-perfect view is +inf and is capped at 100 dB first)."""
    capped = [min(v, 100.0) for v in values if not math.isnan(v)]
    if not capped:
        raise ValueError("finite_mean: no values")
    return sum(capped) / len(capped)
