"""Gaussian head (paper §3.3): PixelShuffle ×16 of each 3D patch token, then independent linear heads.

As in GRM, each patch token ``[D]`` is expanded by a linear layer to ``16 · D'`` channels and reshaped
into 16 per-Gaussian feature vectors. Gaussian k of patch p (global index ``16p + k``) descends from
template vertex ``16p + k``. Independent linear layers predict a position offset ``max_offset · tanh(·)``
added to that vertex (metres), scales ``min_scale + (max_scale − min_scale) · sigmoid(·)``, a normalised
wxyz quaternion, and opacity and RGB colour through ``sigmoid``.

Initialisation: the offset layer is zero, so an untrained model outputs the template exactly; the other
layers start with tiny weights and biases chosen for isotropic grey Gaussians (``init_color``) whose
standard deviation is ``init_scale`` × the template's mean vertex spacing, with opacity
``init_opacity`` — large and opaque enough that the untrained head renders a closed, solid silhouette.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.models.config import PATCH_GAUSSIANS, HeadConfig
from perchead.geometry.gaussians import Gaussians


# ------------------------------------------------------------------------------------------ activations
def offset_activation(x: Tensor, max_offset: float) -> Tensor:
    """Bounded position offset in metres: ``max_offset · tanh(x)``."""
    return max_offset * torch.tanh(x)


def scale_activation(x: Tensor, min_scale: float, max_scale: float) -> Tensor:
    """Standard deviations in ``(min_scale, max_scale)``: ``min + (max − min) · sigmoid(x)``."""
    return min_scale + (max_scale - min_scale) * torch.sigmoid(x)


def inverse_scale_activation(scale: float, min_scale: float, max_scale: float) -> float:
    """The pre-activation giving ``scale`` (clamped into the open interval)."""
    t = (scale - min_scale) / (max_scale - min_scale)
    t = min(max(t, 1e-4), 1 - 1e-4)
    return math.log(t / (1 - t))


def quaternion_activation(x: Tensor) -> Tensor:
    """Unit quaternion (w, x, y, z) by normalisation."""
    return F.normalize(x, dim=-1, eps=1e-8)


def opacity_activation(x: Tensor) -> Tensor:
    """Opacity in (0, 1): ``sigmoid``, kept off exactly 0 and 1 (float32 saturates)."""
    return torch.sigmoid(x).clamp(1e-6, 1 - 1e-6)


def color_activation(x: Tensor) -> Tensor:
    """RGB in [0, 1]: ``sigmoid``."""
    return torch.sigmoid(x)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def mean_vertex_spacing(patch_vertices: Tensor) -> float:
    """Mean distance from each template vertex to its nearest neighbour inside its (compact) patch.

    Args:
        patch_vertices: ``[P, 16, 3]``.

    Returns:
        The spacing in metres.
    """
    d = torch.cdist(patch_vertices.double(), patch_vertices.double())  # [P, 16, 16]
    d = d + torch.eye(d.shape[-1], dtype=d.dtype) * 1e9
    return float(d.min(dim=-1).values.mean())


# ------------------------------------------------------------------------------------------------ head
class GaussianHead(nn.Module):
    """3D patch tokens ``[B, P, D]`` → batched :class:`Gaussians` with N = 16·P.

    Args:
        config: head config.
        width: decoder width D.
        template_vertices: ``[N, 3]``, ordered so that patch p owns vertices 16p … 16p+15.
    """

    def __init__(self, config: HeadConfig, width: int, template_vertices: Tensor):
        super().__init__()
        if template_vertices.dim() != 2 or template_vertices.shape[-1] != 3:
            raise ValueError(f"template_vertices must be [N, 3], got {tuple(template_vertices.shape)}")
        if template_vertices.shape[0] % PATCH_GAUSSIANS:
            raise ValueError(f"template vertex count {template_vertices.shape[0]} is not a multiple of {PATCH_GAUSSIANS}")
        self.config = config
        self.register_buffer("template_vertices", template_vertices.float(), persistent=False)  # [N, 3] rebuilt
        hidden = config.hidden
        self.expand = nn.Linear(width, PATCH_GAUSSIANS * hidden)  # PixelShuffle: D → 16·D'
        self.norm = nn.LayerNorm(hidden)
        self.offset = nn.Linear(hidden, 3)
        self.scale = nn.Linear(hidden, 3)
        self.rotation = nn.Linear(hidden, 4)
        self.opacity = nn.Linear(hidden, 1)
        self.color = nn.Linear(hidden, 3)
        spacing = mean_vertex_spacing(template_vertices.view(-1, PATCH_GAUSSIANS, 3))
        self.init_scale_m = config.init_scale * spacing  # metres, for reporting
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero offsets; isotropic grey, fairly opaque Gaussians about one vertex spacing wide; identity rotation."""
        c = self.config
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        for layer in (self.scale, self.rotation, self.opacity, self.color):
            nn.init.normal_(layer.weight, std=1e-3)
        nn.init.constant_(self.scale.bias, inverse_scale_activation(self.init_scale_m, c.min_scale, c.max_scale))
        with torch.no_grad():
            self.rotation.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        nn.init.constant_(self.opacity.bias, logit(c.init_opacity))
        nn.init.constant_(self.color.bias, logit(c.init_color))

    def forward(self, tokens3d: Tensor, color_bias: Tensor | None = None) -> Gaussians:
        """Patch tokens → Gaussians.

        Args:
            tokens3d: ``[B, P, D]``.
            color_bias: optional ``[B, P, 3]`` added to the colour pre-activations of each patch's 16
                Gaussians (the editor's style → colour path).

        Returns:
            Batched Gaussians ``[B, 16·P, …]`` in float32.
        """
        B, P, _ = tokens3d.shape
        N = P * PATCH_GAUSSIANS
        if N != self.template_vertices.shape[0]:
            raise ValueError(f"{P} patch tokens give {N} Gaussians but the template has {self.template_vertices.shape[0]}")
        c = self.config
        x = self.expand(tokens3d).view(B, P, PATCH_GAUSSIANS, -1)  # [B, P, 16, D']  PixelShuffle
        x = F.gelu(self.norm(x)).reshape(B, N, -1)  # [B, N, D']  Gaussian 16p+k ↔ template vertex 16p+k
        means = self.template_vertices + offset_activation(self.offset(x).float(), c.max_offset)  # [B, N, 3]
        scales = scale_activation(self.scale(x).float(), c.min_scale, c.max_scale)  # [B, N, 3]
        quats = quaternion_activation(self.rotation(x).float())  # [B, N, 4]
        opacities = opacity_activation(self.opacity(x).float())[..., 0]  # [B, N]
        color_logits = self.color(x).float()  # [B, N, 3]
        if color_bias is not None:
            if tuple(color_bias.shape) != (B, P, 3):
                raise ValueError(f"color_bias must be [{B}, {P}, 3], got {tuple(color_bias.shape)}")
            color_logits = color_logits + color_bias.float().repeat_interleave(PATCH_GAUSSIANS, dim=1)  # [B, N, 3]
        colors = color_activation(color_logits)  # [B, N, 3]
        return Gaussians(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors)
