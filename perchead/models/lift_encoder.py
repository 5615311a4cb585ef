"""Dual-branch lift encoder (paper §3.1, eq. 1): frozen DINOv2 ∥ a trainable MAE-style task ViT.

Both branches cut the image into the same ``p × p`` patches and keep only **foreground** patches (any
mask pixel above ``fg_threshold``), the paper's "up to 30% fewer patches". A batch is padded to its
largest count: :class:`Tokens2D` holds the tokens (foreground patches in raster order, then padding), a
``padding_mask [B, K]`` that is True at padding (every attention ignores those keys) and each token's
``patch_index`` (−1 for padding). The branches' features of a patch are concatenated and projected by an
MLP into the decoder width (eq. 1). DINOv2 (:class:`DinoBranch`) sees ImageNet-normalised pixels, keeps
its CLS token as an extra key, and returns the chosen layers after its final LayerNorm (as
``get_intermediate_layers(norm=True)``); it is frozen, always in eval mode and run without gradients.
Images are float ``[B, 3, H, W]`` in [0, 1] over white; masks ``[B, 1, H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.models.config import DinoConfig, EncoderConfig
from perchead.models.layers import IMAGENET_MEAN, IMAGENET_STD, MLP, Block, sincos_pos_embed_2d

@dataclass
class Tokens2D:
    """Foreground patch tokens of a batch of images, padded to a common length K.

    Attributes:
        tokens: fused features in the decoder width. ``[B, K, D]``
        padding_mask: True where a position is padding. ``[B, K]``
        patch_index: raster index of each token in the patch grid, −1 for padding. ``[B, K]``
        grid: (h, w), the patch grid size.
    """

    tokens: Tensor  # [B, K, D]
    padding_mask: Tensor  # [B, K] bool
    patch_index: Tensor  # [B, K] long
    grid: tuple[int, int]

    @property
    def counts(self) -> Tensor:
        """Number of real (foreground) tokens per image. ``[B]``"""
        return (~self.padding_mask).sum(dim=1)

    def item(self, b: int) -> "Tokens2D":
        """Image ``b``'s tokens as a batch of one (still padded to K)."""
        return Tokens2D(self.tokens[b : b + 1], self.padding_mask[b : b + 1], self.patch_index[b : b + 1], self.grid)


# ------------------------------------------------------------------------------------------------ helpers
def foreground_patches(mask: Tensor, patch_size: int, threshold: float = 0.5) -> Tensor:
    """Which patches of a mask are foreground (any pixel above ``threshold``).

    Args:
        mask: ``[B, 1, H, W]`` in [0, 1].
        patch_size: p; H and W must be multiples of it.
        threshold: pixel threshold.

    Returns:
        Boolean foreground flags in raster order. ``[B, (H/p)·(W/p)]``
    """
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, H, W], got {tuple(mask.shape)}")
    pooled = F.max_pool2d(mask.float(), kernel_size=patch_size, stride=patch_size)  # [B, 1, h, w]
    return (pooled > threshold).flatten(1)  # [B, h·w]


class EmptyMaskError(ValueError):
    """An image's mask leaves no foreground patch for the encoder (a bad input, not a bug)."""


def pack_indices(foreground: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gather indices that put each image's foreground patches first (raster order), padded to K = max count.

    Args:
        foreground: ``[B, L]`` bool.

    Returns:
        (gather_index ``[B, K]`` long into L (padding points at patch 0), padding_mask ``[B, K]`` bool,
        patch_index ``[B, K]`` long with −1 at padding).

    Raises:
        ValueError: if an image has no foreground patch (attention over an empty set is undefined).
    """
    counts = foreground.sum(dim=1)  # [B]
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        where = f" in batch element(s) {empty}" if foreground.shape[0] > 1 else ""
        raise EmptyMaskError(f"the head mask has no foreground patch{where}: nothing of the head is left after "
                             "background removal and cropping; try with background removal off, or another image")
    B, L = foreground.shape
    K = int(counts.max())
    positions = torch.arange(L, device=foreground.device).expand(B, L)  # [B, L]
    # Sort key: foreground patches by raster index, then background after all of them.
    key = torch.where(foreground, positions, positions + L)  # [B, L]
    order = key.argsort(dim=1)[:, :K]  # [B, K]
    padding_mask = torch.arange(K, device=foreground.device)[None, :] >= counts[:, None]  # [B, K]
    gather_index = order.masked_fill(padding_mask, 0)  # [B, K]
    patch_index = order.masked_fill(padding_mask, -1)  # [B, K]
    return gather_index, padding_mask, patch_index


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x [B, L, C]`` gathered at ``index [B, K]`` → ``[B, K, C]``."""
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


# ------------------------------------------------------------------------------------------------ task ViT
class TaskViT(nn.Module):
    """MAE-style encoder over the foreground patches only: patch embedding + fixed 2D sin-cos positions,
    pre-norm transformer blocks, final LayerNorm."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.width = config.width
        self.patch_embed = nn.Conv2d(3, config.width, kernel_size=config.patch_size, stride=config.patch_size)
        self.blocks = nn.ModuleList(Block(config.width, config.heads, config.mlp_ratio) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as MAE: the patch embedding treated as a linear layer

    def forward(self, image: Tensor, gather_index: Tensor, padding_mask: Tensor) -> Tensor:
        """Args: image ``[B, 3, H, W]`` in [0, 1]; gather_index / padding_mask ``[B, K]``. Returns ``[B, K, width]``."""
        x = self.patch_embed((image - self.mean) / self.std)  # [B, C, h, w]
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2) + sincos_pos_embed_2d(self.width, h, w, x.device).to(x.dtype)  # [B, L, C]
        x = gather_tokens(x, gather_index)  # [B, K, C]
        for block in self.blocks:
            x = block(x, padding_mask)
        return self.norm(x)  # [B, K, C]


# ------------------------------------------------------------------------------------------------ DINOv2
def build_dino(config: DinoConfig):
    """The frozen DINOv2 backbone: loaded by id (``pretrained``) or built with random weights from its architecture.

    Returns:
        A ``transformers.Dinov2Model`` in eval mode with ``requires_grad_(False)``.
    """
    from transformers import Dinov2Config, Dinov2Model

    if config.pretrained:
        model = Dinov2Model.from_pretrained(config.model_id, revision=config.revision)
    else:
        model = Dinov2Model(Dinov2Config(**config.architecture))
    model.requires_grad_(False)
    return model.eval()


class DinoBranch(nn.Module):
    """Runs DINOv2 over the CLS token plus the foreground patches only, returning the selected layers' features."""

    def __init__(self, config: DinoConfig, dino: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.layers = config.layers
        self.model = dino if dino is not None else build_dino(config)
        self.model.requires_grad_(False)
        self.model.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.model.config.hidden_size * len(self.layers)

    def train(self, mode: bool = True) -> "DinoBranch":
        super().train(mode)
        self.model.eval()  # frozen: always in eval mode
        return self

    @torch.no_grad()
    def forward(self, image: Tensor, gather_index: Tensor, padding_mask: Tensor) -> Tensor:
        """Args: image ``[B, 3, H, W]`` in [0, 1]; gather_index / padding_mask ``[B, K]``.

        Returns:
            Concatenated, LayerNorm-ed hidden states of the configured layers. ``[B, K, hidden·n_layers]``
        """
        dtype = self.model.embeddings.patch_embeddings.projection.weight.dtype
        pixels = ((image - self.mean) / self.std).to(dtype)  # [B, 3, H, W]
        emb = self.model.embeddings(pixels)  # [B, 1 + L, C]  CLS + patches, position embeddings interpolated
        x = torch.cat([emb[:, :1], gather_tokens(emb[:, 1:], gather_index)], dim=1)  # [B, 1 + K, C]
        keep = torch.cat([padding_mask.new_zeros(padding_mask.shape[0], 1), padding_mask], dim=1)  # [B, 1 + K]
        additive = torch.zeros(keep.shape, dtype=x.dtype, device=x.device).masked_fill(keep, torch.finfo(x.dtype).min)
        additive = additive[:, None, None, :]  # [B, 1, 1, 1 + K]  works for eager and SDPA attention
        wanted = set(self.layers)
        outputs: dict[int, Tensor] = {}
        for i, layer in enumerate(self.model.encoder.layer[: max(self.layers) + 1]):
            x = layer(x, attention_mask=additive)
            if isinstance(x, tuple):  # older transformers return (hidden_states, ...)
                x = x[0]
            if i in wanted:
                outputs[i] = self.model.layernorm(x[:, 1:])  # [B, K, C]  drop CLS
        return torch.cat([outputs[i] for i in self.layers], dim=-1)  # [B, K, C·n_layers]


# ------------------------------------------------------------------------------------------------ encoder
class LiftEncoder(nn.Module):
    """Image + mask → foreground patch tokens in the decoder width (eq. 1).

    Args:
        config: the encoder config.
        out_dim: the decoder width D.
        dino: an already built DINOv2 to reuse (optional; default builds it from ``config.dino``).
    """

    def __init__(self, config: EncoderConfig, out_dim: int, dino: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.task_vit = TaskViT(config)
        self.dino = DinoBranch(config.dino, dino) if config.dino is not None else None
        in_dim = config.width + (self.dino.out_dim if self.dino is not None else 0)
        self.fuse_norm = nn.LayerNorm(in_dim)
        self.fuse = MLP(in_dim, out_dim, out_dim)  # eq. 1: MLP([F_enc ; F_dino^1..4])

    def forward(self, image: Tensor, mask: Tensor) -> Tokens2D:
        """Encodes the foreground patches.

        Args:
            image: ``[B, 3, H, W]`` in [0, 1] over white; H, W multiples of the patch size.
            mask: ``[B, 1, H, W]`` in [0, 1].

        Returns:
            :class:`Tokens2D` with tokens ``[B, K, D]``, K = the batch's largest foreground patch count.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W], got {tuple(image.shape)}")
        if mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"mask must be [B, 1, H, W] = {(image.shape[0], 1, *image.shape[2:])}, got {tuple(mask.shape)}")
        H, W = image.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
        foreground = foreground_patches(mask, p, self.config.fg_threshold)  # [B, L]
        gather_index, padding_mask, patch_index = pack_indices(foreground)  # [B, K] ×3
        features = [self.task_vit(image, gather_index, padding_mask)]  # [B, K, C_task]
        if self.dino is not None:
            features.append(self.dino(image, gather_index, padding_mask).to(features[0].dtype))  # [B, K, C_dino]
        fused = torch.cat(features, dim=-1)  # [B, K, C_task + C_dino]
        tokens = self.fuse(self.fuse_norm(fused))  # [B, K, D]
        return Tokens2D(tokens, padding_mask, patch_index, (H // p, W // p))


def count_foreground_patches(mask: Tensor, patch_size: int, threshold: float = 0.5) -> Tensor:
    """Number of foreground patches per image. ``[B]``"""
    return foreground_patches(mask, patch_size, threshold).sum(dim=1)

