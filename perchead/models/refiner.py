"""Refiner (paper §3.3): a shallow residual CNN that sharpens Gaussian renders and removes artefacts.

Input: the rendered RGB (over white) and alpha; output: RGB. The network predicts a residual added to
the render, and its last convolution starts at zero, so an untrained refiner is the identity. Training
(paper): phase 1 trains everything else without it; phase 2 freezes the rest and trains only the CNN
(DINOv2 + L1 + LPIPS). ``RefinerConfig.enabled=False`` removes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.models.config import RefinerConfig


class ResBlock(nn.Module):
    """``x + conv(gelu(conv(gelu(x))))`` with 3×3 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))  # [B, C, H, W]


class Refiner(nn.Module):
    """rgb ``[..., 3, H, W]`` + alpha ``[..., 1, H, W]`` → refined rgb ``[..., 3, H, W]`` in [0, 1]."""

    def __init__(self, config: RefinerConfig):
        super().__init__()
        c = config.channels
        self.stem = nn.Conv2d(4, c, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(config.blocks)])
        self.out = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # identity at initialisation
        nn.init.zeros_(self.out.bias)

    def forward(self, rgb: Tensor, alpha: Tensor) -> Tensor:
        """Args: rgb ``[..., 3, H, W]`` in [0, 1]; alpha ``[..., 1, H, W]``. Returns refined rgb, same shape."""
        if rgb.shape[-3] != 3 or alpha.shape[-3] != 1 or rgb.shape[:-3] != alpha.shape[:-3]:
            raise ValueError(
                f"rgb must be [..., 3, H, W] and alpha [..., 1, H, W]; got {tuple(rgb.shape)}, {tuple(alpha.shape)}"
            )
        lead, (H, W) = rgb.shape[:-3], rgb.shape[-2:]
        x = torch.cat([rgb, alpha], dim=-3).reshape(-1, 4, H, W)  # [B·V, 4, H, W]
        delta = self.out(F.gelu(self.blocks(self.stem(x))))  # [B·V, 3, H, W]
        out = x[:, :3] + delta  # residual on the render
        return out.clamp(0.0, 1.0).reshape(*lead, 3, H, W)
