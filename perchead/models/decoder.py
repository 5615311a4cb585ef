"""3D ViT decoder (paper §3.2, eq. 2; supplement §7): template-patch tokens lift 2D features by cross-attention.

One token per template patch (4,096 in the paper), initialised from a positional encoding of its 16
template vertices (Fourier features → MLP). Each of the L layers computes

    F ← F + MLP(LN(F + CrossAttn(LN(F), LN(T))))          (eq. 2, with pre-normalisation)

where T are the 2D foreground tokens of the lift encoder (padding masked out). There is **no
self-attention among 3D patches**: each patch evolves independently, and global coherence comes only
from the shared 2D context. The skip connections make the decoder an iterative refinement.

``cross_attn_until=i`` (supplement §7 visualisation protocol) keeps cross-attention active in layers
0..i (0-based, inclusive) and disables it afterwards, while every MLP and skip connection still runs;
``i = -1`` disables it everywhere and ``None`` keeps it everywhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from perchead.models.config import DecoderConfig
from perchead.models.layers import MLP, Attention


def fourier_features(x: Tensor, n_freqs: int) -> Tensor:
    """``[..., C]`` → ``[..., C·(1 + 2·n_freqs)]``: x, sin(2^k π x), cos(2^k π x) for k < n_freqs."""
    freqs = (2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)) * math.pi  # [n_freqs]
    angles = x[..., None] * freqs  # [..., C, n_freqs]
    return torch.cat([x, angles.sin().flatten(-2), angles.cos().flatten(-2)], dim=-1)


class PatchPositionalEncoding(nn.Module):
    """Initial 3D patch tokens from the template: Fourier features of a patch's 16 vertices → MLP."""

    def __init__(self, patch_vertices: Tensor, width: int, n_freqs: int, coord_scale: float):
        super().__init__()
        if patch_vertices.dim() != 3 or patch_vertices.shape[-1] != 3:
            raise ValueError(f"patch_vertices must be [P, 16, 3], got {tuple(patch_vertices.shape)}")
        self.n_freqs = n_freqs
        self.coord_scale = coord_scale
        self.register_buffer("patch_vertices", patch_vertices.float(), persistent=False)  # [P, 16, 3] rebuilt
        in_dim = patch_vertices.shape[1] * 3 * (1 + 2 * n_freqs)
        self.mlp = MLP(in_dim, width, width)

    def forward(self) -> Tensor:
        """Returns the initial patch tokens. ``[P, D]``"""
        x = (self.patch_vertices / self.coord_scale).flatten(1)  # [P, 48]
        return self.mlp(fourier_features(x, self.n_freqs))  # [P, D]


class DecoderLayer(nn.Module):
    """``F ← F + MLP(LN(F + CrossAttn(LN(F), LN(T))))`` — cross-attention only, no self-attention."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = MLP(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, padding_mask: Tensor | None, cross_attn: bool = True) -> Tensor:
        """Args: x ``[B, P, D]`` 3D tokens; context ``[B, K, D]`` 2D tokens; padding_mask ``[B, K]``.

        Returns:
            Updated 3D tokens. ``[B, P, D]``
        """
        h = x
        if cross_attn:
            h = x + self.cross_attn(self.norm_q(x), self.norm_kv(context), padding_mask)  # [B, P, D]
        return x + self.mlp(self.norm_mlp(h))  # [B, P, D]


class Decoder3D(nn.Module):
    """Template patches × L cross-attention layers → 3D patch tokens.

    Args:
        config: decoder config.
        patch_vertices: template vertices grouped by patch. ``[P, 16, 3]``
    """

    def __init__(self, config: DecoderConfig, patch_vertices: Tensor):
        super().__init__()
        self.config = config
        self.pos = PatchPositionalEncoding(patch_vertices, config.width, config.n_freqs, config.coord_scale)
        self.layers = nn.ModuleList(
            DecoderLayer(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.width)

    @property
    def n_patches(self) -> int:
        return self.pos.patch_vertices.shape[0]

    def forward(
        self,
        tokens2d: Tensor,
        padding_mask: Tensor | None = None,
        cross_attn_until: int | None = None,
        return_layers: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Lifts 2D tokens into one token per template patch.

        Args:
            tokens2d: 2D tokens in the decoder width. ``[B, K, D]``
            padding_mask: True at padding positions of tokens2d. ``[B, K]`` (None: all valid)
            cross_attn_until: last 0-based layer with cross-attention (supplement §7); None = all layers,
                -1 = none.
            return_layers: also return the tokens after every layer (before the final norm).

        Returns:
            tokens3d ``[B, P, D]`` (final LayerNorm applied), and with ``return_layers`` the list of
            per-layer tokens ``L × [B, P, D]``.
        """
        if tokens2d.dim() != 3 or tokens2d.shape[-1] != self.config.width:
            raise ValueError(f"tokens2d must be [B, K, {self.config.width}], got {tuple(tokens2d.shape)}")
        if padding_mask is not None and padding_mask.shape != tokens2d.shape[:2]:
            raise ValueError(f"padding_mask must be {tuple(tokens2d.shape[:2])}, got {tuple(padding_mask.shape)}")
        if cross_attn_until is not None and not -1 <= cross_attn_until < len(self.layers):
            raise ValueError(f"cross_attn_until must lie in [-1, {len(self.layers) - 1}] or be None, got {cross_attn_until}")
        B = tokens2d.shape[0]
        x = self.pos().to(tokens2d.dtype).expand(B, -1, -1)  # [B, P, D]
        per_layer = []
        for i, layer in enumerate(self.layers):
            active = cross_attn_until is None or i <= cross_attn_until
            x = layer(x, tokens2d, padding_mask, cross_attn=active)  # [B, P, D]
            per_layer.append(x)
        out = self.norm(x)  # [B, P, D]
        return (out, per_layer) if return_layers else out
