"""Transformer layers shared by the encoders and the 3D decoder: attention, MLP, pre-norm block, 2D positions.

Attention runs on ``F.scaled_dot_product_attention`` with a key padding mask (True = padding, PyTorch's
``key_padding_mask`` convention), because the encoders keep only foreground patches and pad each batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation (DINOv2, SAM 2, the task ViT, SegFormer)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sincos_pos_embed_2d(dim: int, h: int, w: int, device=None) -> Tensor:
    """Fixed 2D sine-cosine position embedding of an ``h × w`` grid (as MAE). ``[h·w, dim]``"""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim // 4))  # [dim/4]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device), torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    out_y = ys.reshape(-1, 1) * omega  # [h·w, dim/4]
    out_x = xs.reshape(-1, 1) * omega  # [h·w, dim/4]
    return torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)  # [h·w, dim]


def attention_keep_mask(padding_mask: Tensor | None) -> Tensor | None:
    """``padding_mask [B, K]`` (True = pad) → SDPA boolean mask ``[B, 1, 1, K]`` (True = attend)."""
    return None if padding_mask is None else (~padding_mask)[:, None, None, :]


class Attention(nn.Module):
    """Multi-head attention (self or cross) with a key padding mask, on ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """Args: x ``[B, Q, D]``; context ``[B, K, Dk]`` (default x); padding_mask ``[B, K]``. Returns ``[B, Q, D]``."""
        context = x if context is None else context
        B, Q, D = x.shape
        K = context.shape[1]
        q = self.q(x).view(B, Q, self.heads, D // self.heads).transpose(1, 2)  # [B, h, Q, d]
        k, v = self.kv(context).view(B, K, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # [B, h, K, d] ×2
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_keep_mask(padding_mask))  # [B, h, Q, d]
        return self.out(y.transpose(1, 2).reshape(B, Q, D))  # [B, Q, D]


class MLP(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm ViT block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), padding_mask=padding_mask)  # [B, K, D]
        return x + self.mlp(self.norm2(x))  # [B, K, D]
