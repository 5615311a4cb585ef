"""The editing encoder (paper §3.5): a ViT over a 19-class segmentation map plus one global CLIP style token.

It replaces PercHead's lift encoder in the editing model. The ViT is the lift encoder's task ViT over the
one-hot map (:mod:`perchead.geometry.segmentation` classes), with the same patch size; only
**non-background** patches are kept and padded per batch with a key padding mask, as in the lift encoder.
The style token is an MLP from a frozen CLIP embedding ``[B, E]`` (a reference image at training time,
an image or a zero-shot text embedding at inference) into the decoder width; ``style=None`` uses a
learned "no style" token. Token layout: ``tokens [B, K + 1, D]`` = the K (padded) patch tokens, then the
style token; ``padding_mask`` is False at the style token; ``patch_index`` is −1 at padding and
:data:`STYLE_INDEX` (−2) at the style token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from perchead.geometry.segmentation import BACKGROUND, NUM_CLASSES, one_hot
from perchead.models.config import EncoderConfig, PercHeadConfig
from perchead.models.layers import MLP
from perchead.models.lift_encoder import TaskViT, Tokens2D, foreground_patches, pack_indices

STYLE_INDEX = -2  # patch_index of the style token


# --------------------------------------------------------------------------------------------- config
@dataclass
class EditConfig:
    """The editing encoder (§3.5). Everything else is the base model's :class:`PercHeadConfig`."""

    patch_size: int = 14  # paper: the lift encoder's patch size ("replacing only the Lift Encoder")
    width: int = 384  # ours: ViT width (the paper gives no size; as our task ViT)
    depth: int = 6  # ours: ViT blocks
    heads: int = 6  # ours: attention heads
    mlp_ratio: float = 4.0  # ours: ViT default
    num_classes: int = NUM_CLASSES  # paper: 19-channel (FaRL / CelebAMask-HQ) segmentation maps
    style_dim: int = 768  # ours: CLIP embedding size E (ViT-L/14's 768; the paper does not name its CLIP)
    style_hidden: int | None = None  # ours: hidden width of the style MLP (None = the decoder width)
    style_color: bool = False  # ours: a gated path from the style token to the Gaussian colours (StyleColor)

    def __post_init__(self) -> None:
        for name in ("patch_size", "width", "depth", "heads", "num_classes", "style_dim"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"edit config {name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"edit encoder width {self.width} is not divisible by heads {self.heads}")
        if self.width % 4:
            raise ValueError(f"edit encoder width {self.width} must be divisible by 4 (2D sin-cos positions)")
        if self.num_classes <= BACKGROUND + 1:
            raise ValueError(f"num_classes must exceed {BACKGROUND + 1}, got {self.num_classes}")

    @classmethod
    def for_base(cls, base: PercHeadConfig, style_dim: int, **overrides) -> "EditConfig":
        """The editing encoder sized like the base model's task ViT, with the same patch size.

        Args:
            base: the base model's config.
            style_dim: the style encoder's embedding size E (``StyleEncoder.embed_dim``).
            **overrides: EditConfig fields to change.
        """
        e = base.encoder
        values = dict(patch_size=e.patch_size, width=e.width, depth=e.depth, heads=e.heads, mlp_ratio=e.mlp_ratio,
                      style_dim=int(style_dim))
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EditConfig":
        """Builds a config from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown keys in the edit config: {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------------------------- style → colour
class StyleColor(nn.Module):
    """A gated path from the style token straight to the Gaussian colours (ours, ``EditConfig.style_color``).

    Through the decoder alone, the style reaches the colours on a single (light–dark) axis: hues are lost.
    This path adds a colour shift read from the style token to the colour pre-activations of every Gaussian
    of a 3D patch, gated by that patch's decoder token (the decoder knows which patches are hair)::

        bias[b, p] = sigmoid(gate(LN(tokens3d[b, p]))) · shift(LN(style_token[b]))

    The shift layer starts at zero, so an editor with the path added starts exactly as it was.

    Args:
        width: the decoder width D.
    """

    def __init__(self, width: int):
        super().__init__()
        self.style_norm = nn.LayerNorm(width)
        self.shift = nn.Linear(width, 3)
        self.gate_norm = nn.LayerNorm(width)
        self.gate = nn.Linear(width, 1)
        nn.init.zeros_(self.shift.weight)
        nn.init.zeros_(self.shift.bias)

    def forward(self, style_token: Tensor, tokens3d: Tensor) -> Tensor:
        """Colour pre-activation shifts per 3D patch.

        Args:
            style_token: ``[B, D]``.
            tokens3d: decoder output ``[B, P, D]``.

        Returns:
            ``[B, P, 3]``, added to the colour logits of the patch's 16 Gaussians.
        """
        shift = self.shift(self.style_norm(style_token))  # [B, 3]
        gate = torch.sigmoid(self.gate(self.gate_norm(tokens3d)))  # [B, P, 1]
        return gate * shift[:, None]  # [B, P, 3]


# --------------------------------------------------------------------------------------------- encoder
class SegmentationViT(TaskViT):
    """The task ViT of the lift encoder over a C-channel one-hot map instead of an RGB image.

    Same blocks, 2D sin-cos positions and foreground-only processing as :class:`perchead.models.lift_encoder.TaskViT`;
    only the patch embedding takes ``num_classes`` channels and the input is not ImageNet-normalised.
    """

    def __init__(self, config: EditConfig):
        super().__init__(EncoderConfig(patch_size=config.patch_size, width=config.width, depth=config.depth,
                                       heads=config.heads, mlp_ratio=config.mlp_ratio, dino=None))
        c = config.num_classes
        self.patch_embed = nn.Conv2d(c, config.width, kernel_size=config.patch_size, stride=config.patch_size)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as TaskViT / MAE
        self.register_buffer("mean", torch.zeros(1, c, 1, 1), persistent=False)  # one-hot maps: no normalisation
        self.register_buffer("std", torch.ones(1, c, 1, 1), persistent=False)


class EditEncoder(nn.Module):
    """Segmentation map + style embedding → 2D tokens in the decoder width (§3.5).

    Args:
        config: the editing encoder config.
        out_dim: the decoder width D.
    """

    def __init__(self, config: EditConfig, out_dim: int):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.vit = SegmentationViT(config)
        self.fuse_norm = nn.LayerNorm(config.width)
        self.fuse = MLP(config.width, out_dim, out_dim)  # as the lift encoder's projection (eq. 1)
        self.style_mlp = MLP(config.style_dim, config.style_hidden or out_dim, out_dim)  # CLIP → style token
        self.null_style = nn.Parameter(torch.zeros(out_dim))  # [D] learned "no style" token
        nn.init.normal_(self.null_style, std=0.02)

    def style_token(self, style: Tensor | None, batch_size: int, dtype: torch.dtype) -> Tensor:
        """The global style token. ``[B, 1, D]``

        Args:
            style: CLIP embeddings ``[B, E]`` (or ``[1, E]``, shared by the batch), or None for the learned
                "no style" token.
            batch_size: B.
            dtype: output dtype.
        """
        if style is None:
            return self.null_style.to(dtype).expand(batch_size, 1, -1)  # [B, 1, D]
        E = self.config.style_dim
        if style.dim() != 2 or style.shape[-1] != E or style.shape[0] not in (1, batch_size):
            raise ValueError(f"style must be [B, {E}] (or [1, {E}]) with B = {batch_size}, got {tuple(style.shape)}")
        token = self.style_mlp(style.to(self.null_style.dtype))  # [B or 1, D]
        return token.to(dtype)[:, None].expand(batch_size, 1, -1)  # [B, 1, D]

    def forward(self, labels: Tensor, style: Tensor | None = None) -> Tokens2D:
        """Encodes the non-background patches of a label map and appends the style token.

        Args:
            labels: class ids ``[B, H, W]`` long (-1 = unknown, treated like background); H, W multiples of
                the patch size.
            style: CLIP embeddings ``[B, E]`` / ``[1, E]``, or None.

        Returns:
            :class:`Tokens2D` with tokens ``[B, K + 1, D]`` (K = the batch's largest non-background patch
            count; the last token is the style token).

        Raises:
            ValueError: bad shapes, class ids outside -1..C-1, or a map with no non-background patch.
        """
        if labels.dim() != 3 or labels.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
            raise ValueError(f"labels must be an integer [B, H, W] class-id map, "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        B, H, W = labels.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"label map size {H}x{W} is not a multiple of the patch size {p}")
        x = one_hot(labels.long(), self.config.num_classes).to(self.null_style.dtype)  # [B, C, H, W]
        mask = (labels.long() > BACKGROUND).to(x.dtype)[:, None]  # [B, 1, H, W]  any non-background class
        foreground = foreground_patches(mask, p, 0.5)  # [B, L]
        if (foreground.sum(dim=1) == 0).any():
            empty = (foreground.sum(dim=1) == 0).nonzero().flatten().tolist()
            raise ValueError(f"label map(s) {empty} contain only background; draw a head (classes 1..18)")
        gather_index, padding_mask, patch_index = pack_indices(foreground)  # [B, K] ×3
        tokens = self.fuse(self.fuse_norm(self.vit(x, gather_index, padding_mask)))  # [B, K, D]
        style_token = self.style_token(style, B, tokens.dtype)  # [B, 1, D]
        tokens = torch.cat([tokens, style_token], dim=1)  # [B, K + 1, D]
        padding_mask = torch.cat([padding_mask, padding_mask.new_zeros(B, 1)], dim=1)  # [B, K + 1]
        patch_index = torch.cat([patch_index, patch_index.new_full((B, 1), STYLE_INDEX)], dim=1)  # [B, K + 1]
        return Tokens2D(tokens, padding_mask, patch_index, (H // p, W // p))
