"""What PercHead and its editing model share: the 3D half of the network and one checkpoint format.

:class:`CheckpointMixin` saves and loads ``config.json`` + ``model.safetensors`` from a folder or a
Hugging Face Hub model repo (safetensors only, nothing is unpickled). :class:`HeadModel` holds the stages
after the 2D encoder (paper §3.2–3.3): the template, the 3D decoder, the Gaussian head and the refiner
CNN, with :meth:`~HeadModel.decode`, :meth:`~HeadModel.to_gaussians` and
:meth:`~HeadModel.render_views`. :class:`~perchead.models.perchead.PercHead` adds the lift encoder,
:class:`~perchead.models.editor.PercHeadEditor` the editing encoder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from perchead.geometry.cameras import Cameras, orbit_cameras
from perchead.geometry.gaussians import Gaussians
from perchead.geometry.template import Template, build_template
from perchead.models.config import PercHeadConfig
from perchead.models.decoder import Decoder3D
from perchead.models.gaussian_head import GaussianHead
from perchead.models.hub import BASE_PARTS, fetch_parts
from perchead.models.lift_encoder import Tokens2D
from perchead.models.refiner import Refiner

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WHITE = 1.0  # background of every render


def resolve_checkpoint(
    repo_id_or_folder: str | os.PathLike,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> tuple[Path, Path]:
    """Local paths of a checkpoint's ``config.json`` and ``model.safetensors`` (downloaded from the Hub if needed).

    The checkpoint is the one at the top of a folder or Hub repo (see :func:`perchead.models.hub.fetch_parts`:
    one ``snapshot_download`` of the index, config and weights; the weights' header is checked).

    Raises:
        FileNotFoundError: no such folder, repo, revision or file, or not cached while offline (one line).
        ValueError: pickle-only or corrupt weights; neither a folder nor a repo id.
    """
    root = fetch_parts(repo_id_or_folder, BASE_PARTS, revision, token=token, cache_dir=cache_dir,
                       local_files_only=local_files_only)
    return root / CONFIG_NAME, root / WEIGHTS_NAME


def checkpoint_model_type(path: str | os.PathLike) -> str:
    """The ``model_type`` of a checkpoint's ``config.json`` (a file or a folder holding it; default "perchead")."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_NAME
    return json.loads(path.read_text()).get("model_type", "perchead")


class CheckpointMixin:
    """``save_pretrained`` / ``from_pretrained`` for a module built from a JSON config.

    A subclass sets :attr:`model_type` and implements :meth:`config_dict` (the ``config.json`` content
    without ``model_type``) and :meth:`from_config_dict` (its inverse); :meth:`unstored_keys` names tensors
    loaded some other way
    (weights of a frozen foundation model loaded by its id).
    """

    model_type: ClassVar[str]

    def config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config_dict(cls, data: dict[str, Any]) -> "CheckpointMixin":
        raise NotImplementedError

    def unstored_keys(self, keys: list[str]) -> list[str]:
        """The subset of state-dict ``keys`` that checkpoints leave out (default: none)."""
        return []

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """The tensors a checkpoint stores: the state dict less :meth:`unstored_keys`."""
        state = self.state_dict()
        skip = set(self.unstored_keys(list(state)))
        return {k: v.detach().cpu().contiguous() for k, v in state.items() if k not in skip}

    @classmethod
    def read_config(cls, path: str | os.PathLike) -> dict[str, Any]:
        """A checkpoint's ``config.json`` without ``model_type``.

        Raises:
            ValueError: if it describes another model type.
        """
        data = json.loads(Path(path).read_text())
        model_type = data.pop("model_type", "perchead")
        if model_type != cls.model_type:
            hint = " (a base model: build an editor with PercHeadEditor.from_base)" if model_type == "perchead" else ""
            raise ValueError(f"{path} describes a {model_type!r} model, not {cls.model_type!r}{hint}")
        return data

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed). Returns the folder."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"model_type": self.model_type, **self.config_dict()}
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(self.checkpoint_state_dict(), str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
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
    ):
        """Loads a checkpoint from a local folder or a Hugging Face Hub model repo.

        Args:
            repo_id_or_folder: a folder with ``config.json`` + ``model.safetensors``, or a Hub repo id
                (``"user/name"``).
            revision: Hub branch, tag or commit (ignored for folders).
            cache_dir, local_files_only, token: passed to ``huggingface_hub.snapshot_download``.
            map_location: device the weights are loaded onto.

        Returns:
            The model in eval mode.

        Raises:
            FileNotFoundError: no such folder, Hub repo, revision or file; offline (``HF_HUB_OFFLINE=1`` or no
                network) and not in the local cache. One line naming the repo or folder and the file.
            ValueError: pickle-only or corrupt weights; the string is neither a folder nor a repo id; the
                config or the weights do not describe this kind of model.
        """
        config_path, weights_path = resolve_checkpoint(
            repo_id_or_folder, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        model = cls.from_config_dict(cls.read_config(config_path))
        model.load_checkpoint(weights_path, map_location=map_location)
        return model.eval()

    def load_checkpoint(self, weights_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> None:
        """Loads ``model.safetensors`` into this model.

        Raises:
            ValueError: on missing or unexpected tensors.
        """
        from safetensors.torch import load_file

        state = load_file(str(weights_path), device=str(map_location))
        missing, unexpected = self.load_state_dict(state, strict=False)
        skip = set(self.unstored_keys(missing))
        missing = [k for k in missing if k not in skip]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {weights_path} does not match the config: missing {missing[:5]}"
                f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
            )


class HeadModel(CheckpointMixin, nn.Module):
    """The 3D half shared by PercHead and the editor: template, decoder, Gaussian head, refiner (§3.2–3.3).

    Args:
        config: the model config; its ``encoder`` section is only read by subclasses.

    Attributes:
        config: the config.
        template: the canonical head :class:`~perchead.geometry.template.Template` (rebuilt, never stored).
    """

    def __init__(self, config: PercHeadConfig):
        super().__init__()
        self.config = config
        t = config.template
        self.template: Template = build_template(t.n_gaussians, t.n_patches, t.flame_path)

    def build_3d(self) -> None:
        """Builds the decoder, the Gaussian head and the refiner (after the encoder, keeping the key order)."""
        config = self.config
        self.decoder = Decoder3D(config.decoder, self.template.patch_vertices())
        self.head = GaussianHead(config.head, config.decoder.width, self.template.vertices)
        self.refiner = Refiner(config.refiner) if config.refiner.enabled else None

    # ------------------------------------------------------------------------------------------ stages
    def decode(
        self,
        tokens2d: Tensor | Tokens2D,
        padding_mask: Tensor | None = None,
        cross_attn_until: int | None = None,
        return_layers: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Lifts 2D tokens to one token per template patch (§3.2).

        Args:
            tokens2d: ``[B, K, D]`` or the :class:`Tokens2D` from ``encode`` (its padding mask is used).
            padding_mask: ``[B, K]``, True at padding (ignored when a :class:`Tokens2D` is given).
            cross_attn_until: last 0-based decoder layer with cross-attention (supplement §7); None = all.
            return_layers: also return the per-layer tokens.

        Returns:
            tokens3d ``[B, P, D]`` (and the list of per-layer tokens with ``return_layers``).
        """
        if isinstance(tokens2d, Tokens2D):
            tokens2d, padding_mask = tokens2d.tokens, tokens2d.padding_mask
        return self.decoder(tokens2d, padding_mask, cross_attn_until=cross_attn_until, return_layers=return_layers)

    def to_gaussians(self, tokens3d: Tensor, color_bias: Tensor | None = None) -> Gaussians:
        """Patch tokens ``[B, P, D]`` → batched Gaussians ``[B, 16·P, …]`` (§3.3); ``color_bias`` ``[B, P, 3]``
        (optional) shifts each patch's colour pre-activations."""
        return self.head(tokens3d, color_bias)

    # ------------------------------------------------------------------------------------------ rendering
    def default_cameras(self, azimuths_deg, elevations_deg=0.0, size: int | None = None) -> Cameras:
        """Orbit cameras framed like the model's inputs (``config.render`` fov and radius)."""
        r = self.config.render
        return orbit_cameras(azimuths_deg, elevations_deg, radius=r.radius, fov_deg=r.fov_deg, size=size or r.render_size)

    def refine(self, rgb: Tensor, alpha: Tensor) -> Tensor:
        """Applies the CNN refiner (identity if it is disabled). ``[..., 3, H, W]`` → ``[..., 3, H, W]``."""
        return rgb if self.refiner is None else self.refiner(rgb, alpha)

    def render_views(
        self,
        gaussians: Gaussians,
        cameras: Cameras,
        refine: bool = True,
        features: Tensor | None = None,
        return_depth: bool = False,
    ):
        """:meth:`render_at` the V ``cameras`` shared by the batch (white background, then the refiner, §3.3)."""
        return self.render_at(gaussians, cameras.viewmats, cameras.Ks, cameras.width, cameras.height, refine=refine,
                              features=features, return_depth=return_depth)

    def render_at(
        self,
        gaussians: Gaussians,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        refine: bool = True,
        features: Tensor | None = None,
        return_depth: bool = False,
    ):
        """Renders Gaussians over white at shared ``[V, …]`` or per-item ``[B, V, …]`` cameras, then the refiner.

        Args:
            gaussians: ``[(B,) N, …]``.
            viewmats: world-to-camera. ``[V, 4, 4]`` or ``[B, V, 4, 4]``
            Ks: pixel intrinsics for ``width`` × ``height`` images. ``[V, 3, 3]`` or ``[B, V, 3, 3]``
            width: image width.
            height: image height.
            refine: apply the refiner (when the config enables it).
            features: extra per-Gaussian channels ``[(B,) N, C]``.
            return_depth: also return depth.

        Returns:
            :class:`perchead.render.RenderOutput` with rgb ``[B, V, 3, H, W]``, alpha ``[B, V, 1, H, W]``.
        """
        from perchead.render import render

        device = gaussians.means.device
        out = render(
            gaussians.float(),
            viewmats.to(device),
            Ks.to(device),
            width,
            height,
            background=WHITE,
            backend=self.config.render.backend,
            features=features,
            return_depth=return_depth,
        )
        if refine and self.refiner is not None:
            out = dataclasses.replace(out, rgb=self.refiner(out.rgb, out.alpha))
        return out

    def num_parameters(self, trainable: bool | None = None) -> int:
        """Parameter count: all (None), trainable only (True) or frozen only (False)."""
        return sum(p.numel() for p in self.parameters() if trainable is None or p.requires_grad == trainable)
