"""The 3D editing model (paper §3.5): segmentation map for geometry, one global CLIP token for style.

The editing model is the base lifting model with its lift encoder replaced by an **editing encoder**:

- a ViT over the 19-channel one-hot segmentation map (CelebAMask-HQ classes, :mod:`perchead.geometry.segmentation`),
  with the lift encoder's patch size; as in the lift encoder only **non-background** patches are kept
  (a patch counts when any of its pixels has a class other than background), padded per batch with a
  key padding mask (:class:`perchead.encoder.Tokens2D`);
- plus **one global style token**: an MLP from a frozen CLIP embedding ``[B, E]`` (the image embedding of a
  reference view at training time; an image or a zero-shot text embedding at inference,
  :mod:`perchead.style`) into the decoder width, appended after the patch tokens and never padded.
  ``style=None`` uses a learned "no style" token instead.

"All other components remain unchanged from the base model": the 3D decoder, the Gaussian head and the
refiner CNN are those of :class:`perchead.model.PercHead`, initialised from a base checkpoint
(:meth:`PercHeadEditor.from_base`) and fine-tuned (``python -m perchead.train --task edit``). The
disentanglement comes from the inputs: the CLIP token has no spatial detail for geometry, the map no style.

Token layout: ``tokens [B, K + 1, D]`` = the K (padded) patch tokens, then the style token; ``padding_mask``
is False at the style token; ``patch_index`` is −1 at padding and :data:`STYLE_INDEX` (−2) at the style
token.

Checkpoints: a folder (or Hub repo) with ``config.json`` (``model_type`` ``"perchead-editor"``, the base
:class:`~perchead.config.PercHeadConfig` fields and an ``edit`` section) and ``model.safetensors``.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perchead.config import EncoderConfig, PercHeadConfig
from perchead.decoder import Decoder3D
from perchead.encoder import MLP, TaskViT, Tokens2D, foreground_patches, pack_indices
from perchead.gaussian_head import GaussianHead
from perchead.geometry.gaussians import Gaussians
from perchead.model import CONFIG_NAME, WEIGHTS_NAME, PercHead, resolve_checkpoint
from perchead.refiner import Refiner
from perchead.geometry.segmentation import BACKGROUND, NUM_CLASSES, one_hot
from perchead.geometry.template import Template, build_template

MODEL_TYPE = "perchead-editor"
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


# --------------------------------------------------------------------------------------------- encoder
class SegmentationViT(TaskViT):
    """The task ViT of the lift encoder over a C-channel one-hot map instead of an RGB image.

    Same blocks, 2D sin-cos positions and foreground-only processing as :class:`perchead.encoder.TaskViT`;
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


# --------------------------------------------------------------------------------------------- model
class PercHeadEditor(nn.Module):
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
        super().__init__()
        if edit_config.patch_size != config.encoder.patch_size:
            raise ValueError(f"edit patch size {edit_config.patch_size} must match the lift encoder's "
                             f"{config.encoder.patch_size} (§3.5: only the encoder is replaced)")
        if config.render.image_size % edit_config.patch_size:
            raise ValueError(f"image_size {config.render.image_size} is not a multiple of the edit patch size "
                             f"{edit_config.patch_size}")
        self.config = config
        self.edit_config = edit_config
        t = config.template
        self.template: Template = build_template(t.n_gaussians, t.n_patches, t.flame_path)
        self.edit_encoder = EditEncoder(edit_config, config.decoder.width)
        self.decoder = Decoder3D(config.decoder, self.template.patch_vertices())
        self.head = GaussianHead(config.head, config.decoder.width, self.template.vertices)
        self.refiner = Refiner(config.refiner) if config.refiner.enabled else None

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

    decode = PercHead.decode  # the base model's 3D decoder stage (§3.2)
    to_gaussians = PercHead.to_gaussians  # the base model's Gaussian head stage (§3.3)

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
        return self.to_gaussians(self.decode(tokens2d, cross_attn_until=cross_attn_until))

    # ------------------------------------------------------------------------------------------ rendering
    default_cameras = PercHead.default_cameras  # orbit cameras framed like the model's inputs
    refine = PercHead.refine  # the refiner CNN (identity if disabled)
    render_views = PercHead.render_views  # the same render + refine path as the base model
    num_parameters = PercHead.num_parameters

    # ------------------------------------------------------------------------------------------ checkpoints
    def config_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: model type, the base config fields and the ``edit`` section."""
        return {"model_type": MODEL_TYPE, **self.config.to_dict(), "edit": self.edit_config.to_dict()}

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed). Returns the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_folder: str | os.PathLike,
        revision: str | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str | torch.device = "cpu",
    ) -> "PercHeadEditor":
        """Loads an editor checkpoint from a folder or a Hub repo (safetensors only).

        Args: as :meth:`PercHead.from_pretrained`.

        Returns:
            The editor in eval mode.

        Raises:
            ValueError: the config is not an editor config, or the weights do not match it.
        """
        from safetensors.torch import load_file

        config_path, weights_path = resolve_checkpoint(
            repo_id_or_folder, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        config, edit_config = load_editor_config(config_path)
        model = cls(config, edit_config)
        state = load_file(str(weights_path), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {weights_path} does not match its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model.eval()


def checkpoint_model_type(path: str | os.PathLike) -> str:
    """The ``model_type`` of a checkpoint's ``config.json`` (a file or a folder holding it; default "perchead")."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    return json.loads(path.read_text()).get("model_type", "perchead")


def load_editor_config(path: str | os.PathLike) -> tuple[PercHeadConfig, EditConfig]:
    """Reads an editor checkpoint's ``config.json`` into (base config, edit config).

    Raises:
        ValueError: if it is not a ``perchead-editor`` config or lacks the ``edit`` section.
    """
    data = json.loads(Path(path).read_text())
    model_type = data.pop("model_type", None)
    if model_type != MODEL_TYPE:
        hint = " (a base model: build an editor with PercHeadEditor.from_base)" if model_type == "perchead" else ""
        raise ValueError(f"{path} describes a {model_type!r} model, not {MODEL_TYPE!r}{hint}")
    if "edit" not in data:
        raise ValueError(f"{path} has no 'edit' section")
    edit = EditConfig.from_dict(data.pop("edit"))
    return PercHeadConfig.from_dict(data), edit
