"""Shared image helpers: float image tensors to uint8 arrays, colour composited over white."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


# ------------------------------------------------------------------------------------ image conversions
def to_uint8(images: Tensor) -> np.ndarray:
    """Float images in [0, 1] → uint8 arrays with channels last (clamped, rounded).

    Args:
        images: ``[..., C, H, W]`` (any device, gradients ignored).

    Returns:
        ``[..., H, W, C]`` uint8.
    """
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def over_white(rgb, mask):
    """Composites colour over a white background: ``rgb · mask + (1 − mask)``.

    Works on tensors and numpy arrays alike; ``mask`` broadcasts against ``rgb`` (``[1, H, W]`` with
    ``[3, H, W]``, or ``[H, W, 1]`` with ``[H, W, 3]``), both in [0, 1].
    """
    return rgb * mask + (1.0 - mask)
