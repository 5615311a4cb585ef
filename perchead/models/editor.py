"""The 3D editing model (paper §3.5): editing encoder → the base model's decoder, Gaussian head and refiner.

"All other components remain unchanged from the base model": :class:`PercHeadEditor` shares
:class:`~perchead.models.base.HeadModel` with :class:`~perchead.models.perchead.PercHead`, is initialised
from a base checkpoint (:meth:`PercHeadEditor.from_base`) and fine-tuned (``--task edit`` of
``perchead.training.train``). The disentanglement comes from the inputs: the CLIP token has no spatial
detail for geometry, the map no style.

Checkpoints: ``config.json`` (``model_type`` ``"perchead-editor"``, the base
:class:`~perchead.models.config.PercHeadConfig` fields and an ``edit`` section) and ``model.safetensors``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

from torch import Tensor

from perchead.geometry.gaussians import Gaussians
from perchead.models.base import HeadModel
from perchead.models.config import PercHeadConfig
from perchead.models.edit_encoder import EditConfig, EditEncoder, StyleColor
from perchead.models.lift_encoder import Tokens2D
from perchead.models.perchead import PercHead

MODEL_TYPE = "perchead-editor"


class PercHeadEditor(HeadModel):
    """The editing model (§3.5): editing encoder + the base model's decoder, Gaussian head and refiner.

    Args:
        config: the base model's config (template, decoder, head, refiner, render settings).
        edit_config: the editing encoder config; its patch size must equal ``config.encoder.patch_size``.

    Attributes:
        config: the base :class:`PercHeadConfig` (so rendering and training code treat the editor like PercHead).
        edit_config: the :class:`EditConfig`.
        template: the canonical head :class:`~perchead.geometry.template.Template`.
    """

    def __init__(self, config: PercHeadConfig, edit_config: EditConfig):
        if edit_config.patch_size != config.encoder.patch_size:
            raise ValueError(f"edit patch size {edit_config.patch_size} must match the lift encoder's "
                             f"{config.encoder.patch_size} (§3.5: only the encoder is replaced)")
        if config.render.image_size % edit_config.patch_size:
            raise ValueError(f"image_size {config.render.image_size} is not a multiple of the edit patch size "
                             f"{edit_config.patch_size}")
        super().__init__(config)
        self.edit_config = edit_config
        self.edit_encoder = EditEncoder(edit_config, config.decoder.width)
        self.style_color = StyleColor(config.decoder.width) if edit_config.style_color else None
        self.build_3d()

    @classmethod
    def from_base(cls, base: PercHead, edit_config: EditConfig | None = None, style_dim: int | None = None
                  ) -> "PercHeadEditor":
        """An editor whose decoder, Gaussian head and refiner are copies of a base model's (§3.5).

        Args:
            base: a (trained) :class:`PercHead`.
            edit_config: the editing encoder config (default: :meth:`EditConfig.for_base` with ``style_dim``).
            style_dim: the style embedding size, needed when ``edit_config`` is None.

        Returns:
            The editor (the edit encoder freshly initialised), in the base model's training mode, on CPU.
        """
        if edit_config is None:
            if style_dim is None:
                raise ValueError("from_base needs an edit_config or a style_dim")
            edit_config = EditConfig.for_base(base.config, style_dim)
        editor = cls(copy.deepcopy(base.config), edit_config)
        editor.decoder.load_state_dict(base.decoder.state_dict())
        editor.head.load_state_dict(base.head.state_dict())
        if editor.refiner is not None:
            editor.refiner.load_state_dict(base.refiner.state_dict())
        return editor.train(base.training)

    def with_style_color(self) -> "PercHeadEditor":
        """A copy of this editor with the style → colour path added (:class:`StyleColor`, starting at zero,
        so the copy builds exactly the same heads until it is trained).

        Raises:
            ValueError: if the editor already has the path.
        """
        if self.style_color is not None:
            raise ValueError("this editor already has the style -> colour path")
        editor = type(self)(copy.deepcopy(self.config), dataclasses.replace(self.edit_config, style_color=True))
        missing, unexpected = editor.load_state_dict(self.state_dict(), strict=False)
        if unexpected or any(not k.startswith("style_color.") for k in missing):
            raise ValueError(f"state dicts do not match: missing {missing}, unexpected {unexpected}")
        return editor.train(self.training)

    # ------------------------------------------------------------------------------------------ stages
    def encode(self, labels: Tensor, style: Tensor | None = None) -> Tokens2D:
        """2D tokens of a label map plus the style token (§3.5).

        Args:
            labels: class ids ``[B, S, S]`` long, S = ``config.render.image_size``
                (resize maps with :func:`perchead.geometry.segmentation.resize_labels`).
            style: CLIP embeddings ``[B, E]`` (or ``[1, E]``), or None for the learned "no style" token.

        Returns:
            :class:`Tokens2D`, tokens ``[B, K + 1, D]``.
        """
        size = self.config.render.image_size
        if labels.dim() != 3 or tuple(labels.shape[-2:]) != (size, size):
            raise ValueError(f"labels must be [B, {size}, {size}] (config.render.image_size), "
                             f"got {tuple(labels.shape)}; resize with perchead.geometry.segmentation.resize_labels")
        return self.edit_encoder(labels, style)

    def forward(self, labels: Tensor, style: Tensor | None = None, cross_attn_until: int | None = None) -> Gaussians:
        """Builds one head per label map, styled by ``style``.

        Args:
            labels: ``[B, S, S]`` class ids.
            style: ``[B, E]`` / ``[1, E]`` CLIP embeddings, or None.
            cross_attn_until: see :meth:`PercHead.decode`.

        Returns:
            Batched Gaussians with N = ``config.template.n_gaussians``.
        """
        tokens2d = self.encode(labels, style)
        tokens3d = self.decode(tokens2d, cross_attn_until=cross_attn_until)
        return self.to_gaussians(tokens3d, self.color_bias(tokens2d, tokens3d))

    def color_bias(self, tokens2d: Tokens2D, tokens3d: Tensor) -> Tensor | None:
        """The style → colour path's shifts of the colour pre-activations (None without the path).

        Args:
            tokens2d: :meth:`encode` output (its last token is the style token).
            tokens3d: :meth:`decode` output ``[B, P, D]``.

        Returns:
            ``[B, P, 3]`` or None.
        """
        if self.style_color is None:
            return None
        return self.style_color(tokens2d.tokens[:, -1], tokens3d)  # [B, P, 3]

    # ------------------------------------------------------------------------------------------ checkpoints
    model_type = MODEL_TYPE

    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: the base config fields and the ``edit`` section."""
        return {**self.config.to_dict(), "edit": self.edit_config.to_dict()}

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> "PercHeadEditor":
        """A freshly initialised editor from :meth:`config_dict` output.

        Raises:
            ValueError: if the ``edit`` section is missing.
        """
        config, edit_config = split_editor_config(data)
        return cls(config, edit_config)


def split_editor_config(data: dict[str, Any]) -> tuple[PercHeadConfig, EditConfig]:
    """An editor's ``config.json`` content (without ``model_type``) → (base config, edit config).

    Raises:
        ValueError: if the ``edit`` section is missing.
    """
    data = dict(data)
    if "edit" not in data:
        raise ValueError("the editor config has no 'edit' section")
    edit = EditConfig.from_dict(data.pop("edit"))
    return PercHeadConfig.from_dict(data), edit


def load_editor_config(path: str | os.PathLike) -> tuple[PercHeadConfig, EditConfig]:
    """Reads an editor checkpoint's ``config.json`` into (base config, edit config).

    Raises:
        ValueError: if it is not a ``perchead-editor`` config or lacks the ``edit`` section.
    """
    return split_editor_config(PercHeadEditor.read_config(path))
