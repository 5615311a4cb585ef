"""The metric table of the paper's evaluation (PercHead §4.2, Tables 1–2): PSNR, SSIM and the network metrics.

PSNR and SSIM are :mod:`perchead.models.similarity`'s. LPIPS, DreamSim and ArcFace distance need network
weights that cannot be downloaded on these machines: :func:`network_metrics` reports each as available (a
callable) or unavailable (``None`` plus the reason), and the evaluations write ``null`` for unavailable
ones — never a made-up number. :func:`error_regions` splits a render's squared error by the predicted and
the true silhouettes (where the error lies, not a table metric).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from perchead.geometry.segmentation import NUM_CLASSES, mask_iou
from perchead.models.similarity import psnr



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
        from perchead.models.similarity import load_lpips

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


ERROR_REGIONS = ("interior", "missed", "spill", "background")


def error_regions(pred: Tensor, pred_alpha: Tensor, target: Tensor, target_alpha: Tensor,
                  threshold: float = 0.5) -> dict[str, Tensor]:
    """Where a render's squared error lies: inside both silhouettes, or where they disagree.

    A pixel is foreground where its alpha exceeds ``threshold``. Regions: ``interior`` (foreground in both),
    ``missed`` (target foreground, prediction background), ``spill`` (prediction foreground, target
    background) and ``background`` (neither). ``psnr_true_silhouette`` is the PSNR the prediction would
    have if its pixels in ``missed`` and ``spill`` were the target's: what a perfect outline would give
    with the colours unchanged.

    Args:
        pred: ``[B, 3, H, W]`` in [0, 1].
        pred_alpha: ``[B, 1, H, W]``.
        target: ``[B, 3, H, W]`` in [0, 1].
        target_alpha: ``[B, 1, H, W]``.
        threshold: alpha above which a pixel is foreground.

    Returns:
        ``{region: [B] share of the image's squared error (the four sum to 1), region + "_pixels": [B]
        share of the pixels, "mse": [B] the whole image's mean squared error, "psnr_true_silhouette": [B]}``.
    """
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"pred and target must both be [B, 3, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}")
    want = (pred.shape[0], 1, *pred.shape[2:])
    if tuple(pred_alpha.shape) != want or tuple(target_alpha.shape) != want:
        raise ValueError(f"alphas must be {list(want)}, got {tuple(pred_alpha.shape)} and {tuple(target_alpha.shape)}")
    err = (pred.float() - target.float()).pow(2).mean(1)  # [B, H, W]
    fg_pred, fg_target = pred_alpha[:, 0] > threshold, target_alpha[:, 0] > threshold  # [B, H, W]
    masks = {"interior": fg_pred & fg_target, "missed": fg_target & ~fg_pred, "spill": fg_pred & ~fg_target,
             "background": ~fg_pred & ~fg_target}
    total = err.flatten(1).sum(1).clamp_min(1e-12)  # [B]
    out: dict[str, Tensor] = {}
    for name, m in masks.items():
        out[name] = (err * m).flatten(1).sum(1) / total  # [B]
        out[name + "_pixels"] = m.flatten(1).float().mean(1)  # [B]
    out["mse"] = err.flatten(1).mean(1)  # [B]
    outline = (masks["missed"] | masks["spill"])[:, None]  # [B, 1, H, W]
    out["psnr_true_silhouette"] = psnr(torch.where(outline, target.float(), pred.float()), target.float())
    return out


def label_iou(a: Tensor, b: Tensor, classes=None) -> float:
    """Mean IoU over classes of two label maps (views stacked), ignoring classes absent from both.

    Args:
        a, b: ``[..., H, W]`` long class ids of the same shape.
        classes: class ids to score (default: every class but background).

    Returns:
        mean IoU in [0, 1] (1.0 when no scored class appears in either map).
    """
    if a.shape != b.shape:
        raise ValueError(f"label maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ious = [mask_iou(a == c, b == c) for c in (classes if classes is not None else range(1, NUM_CLASSES))]
    ious = [iou for iou in ious if iou is not None]
    return float(sum(ious) / len(ious)) if ious else 1.0


def class_mean_color(rgb: Tensor, labels: Tensor, class_id: int) -> Tensor | None:
    """Mean colour of the pixels of one class (e.g. hair = 13) across views.

    Args:
        rgb: ``[V, 3, H, W]`` in [0, 1].
        labels: ``[V, H, W]`` class ids.
        class_id: the class.

    Returns:
        ``[3]`` mean RGB, or None when no pixel has that class.
    """
    mask = labels == class_id  # [V, H, W]
    if not mask.any():
        return None
    return rgb.permute(1, 0, 2, 3)[:, mask].mean(dim=1)  # [3]
