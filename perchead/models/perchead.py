"""The PercHead model (paper §3.1–3.3, Figure 2): lift encoder → 3D decoder → Gaussian head → render → CNN.

Stages are methods, as in MAE: :meth:`PercHead.encode` (image + mask → foreground 2D tokens),
``decode`` (→ one token per template patch), ``to_gaussians`` (→ batched Gaussians, N = 16·P),
:meth:`PercHead.forward` (all three) and ``render_views`` (Gaussians + cameras → refined renders); the
last four live in :class:`~perchead.models.base.HeadModel`, shared with the editing model.

Checkpoints are ``config.json`` + ``model.safetensors`` (:class:`~perchead.models.base.CheckpointMixin`).
Frozen DINOv2 weights loaded by id are not stored; DINOv2 built with random weights from an architecture
(``dino.pretrained=False``, tests) has no id, so its weights are stored. The template is rebuilt from the
config, never stored.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor, nn

from perchead.geometry.gaussians import Gaussians
from perchead.models.base import HeadModel
from perchead.models.config import PercHeadConfig
from perchead.models.lift_encoder import LiftEncoder, Tokens2D

MODEL_TYPE = "perchead"
DINO_PREFIX = "encoder.dino.model."


class PercHead(HeadModel):
    """Single-image 3D head reconstruction as Gaussians (the base lifting model of the paper).

    Args:
        config: the model config (see :class:`perchead.models.config.PercHeadConfig`, presets ``paper`` / ``demo`` /
            ``tiny``).
        dino: an already built DINOv2 to use instead of building one from ``config.encoder.dino``.

    Attributes:
        config: the config.
        template: the canonical head :class:`~perchead.geometry.template.Template` (rebuilt from the config).
    """

    def __init__(self, config: PercHeadConfig, dino: nn.Module | None = None):
        super().__init__(config)
        self.encoder = LiftEncoder(config.encoder, config.decoder.width, dino=dino)
        self.build_3d()

    # ------------------------------------------------------------------------------------------ stages
    def encode(self, image: Tensor, mask: Tensor) -> Tokens2D:
        """Foreground patch tokens of the lift encoder (§3.1).

        Args:
            image: ``[B, 3, S, S]`` in [0, 1] over white, S = ``config.render.image_size``.
            mask: ``[B, 1, S, S]`` in [0, 1].

        Returns:
            :class:`~perchead.models.lift_encoder.Tokens2D` (tokens ``[B, K, D]``, padding_mask ``[B, K]``, …).
        """
        size = self.config.render.image_size
        if image.dim() != 4 or tuple(image.shape[-2:]) != (size, size):
            raise ValueError(f"image must be [B, 3, {size}, {size}] (config.render.image_size), got {tuple(image.shape)}")
        return self.encoder(image, mask)

    def forward(self, image: Tensor, mask: Tensor, cross_attn_until: int | None = None) -> Gaussians:
        """Reconstructs one head per image.

        Args:
            image: ``[B, 3, S, S]`` in [0, 1] over white.
            mask: ``[B, 1, S, S]`` foreground mask.
            cross_attn_until: see :meth:`decode`.

        Returns:
            Batched Gaussians with N = ``config.template.n_gaussians``.
        """
        tokens2d = self.encode(image, mask)
        tokens3d = self.decode(tokens2d, cross_attn_until=cross_attn_until)
        return self.to_gaussians(tokens3d)

    # ------------------------------------------------------------------------------------------ checkpoints
    model_type = MODEL_TYPE

    def _stores_dino(self) -> bool:
        dino = self.config.encoder.dino
        return dino is not None and not dino.pretrained

    def unstored_keys(self, keys: list[str]) -> list[str]:
        """DINOv2 weights loaded by id are not stored (they are loaded again by their id)."""
        return [] if self._stores_dino() else [k for k in keys if k.startswith(DINO_PREFIX)]

    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` content (without ``model_type``)."""
        return self.config.to_dict()

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> "PercHead":
        """A freshly initialised model from :meth:`config_dict` output."""
        return cls(PercHeadConfig.from_dict(data))


def load_config(path: str | os.PathLike) -> PercHeadConfig:
    """Reads a PercHead checkpoint's ``config.json``.

    Raises:
        ValueError: if it describes another model type.
    """
    return PercHeadConfig.from_dict(PercHead.read_config(path))
