"""The PercHead model (paper §3.1–3.3, Figure 2): lift encoder → 3D decoder → Gaussian head → render → CNN.

Stages are methods, as in MAE:

- :meth:`PercHead.encode`      image + mask → foreground 2D tokens (:class:`~perchead.encoder.Tokens2D`)
- :meth:`PercHead.decode`      2D tokens → one token per template patch ``[B, P, D]``
- :meth:`PercHead.to_gaussians` patch tokens → batched :class:`~perchead.geometry.gaussians.Gaussians` (N = 16·P)
- :meth:`PercHead.forward`     all three
- :meth:`PercHead.render_views` Gaussians + cameras → :class:`~perchead.render.RenderOutput` (white
  background), refined by the CNN unless ``refine=False``.

Checkpoints are a folder (or Hub repo) with ``config.json`` and ``model.safetensors``. Frozen DINOv2
weights loaded by id are not stored (they are loaded again by their id); DINOv2 built with random weights
from an architecture (``dino.pretrained=False``, tests) has no id, so its weights are stored. The template
is rebuilt from the config, never stored. Nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from perchead.geometry.cameras import Cameras, orbit_cameras
from perchead.config import PercHeadConfig
from perchead.decoder import Decoder3D
from perchead.encoder import LiftEncoder, Tokens2D
from perchead.gaussian_head import GaussianHead
from perchead.geometry.gaussians import Gaussians
from perchead.refiner import Refiner
from perchead.geometry.template import Template, build_template

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "perchead"
DINO_PREFIX = "encoder.dino.model."
WHITE = 1.0


class PercHead(nn.Module):
    """Single-image 3D head reconstruction as Gaussians (the base lifting model of the paper).

    Args:
        config: the model config (see :class:`perchead.config.PercHeadConfig`, presets ``paper`` / ``demo`` /
            ``tiny``).
        dino: an already built DINOv2 to use instead of building one from ``config.encoder.dino``.

    Attributes:
        config: the config.
        template: the canonical head :class:`~perchead.geometry.template.Template` (rebuilt from the config).
    """

    def __init__(self, config: PercHeadConfig, dino: nn.Module | None = None):
        super().__init__()
        self.config = config
        t = config.template
        self.template: Template = build_template(t.n_gaussians, t.n_patches, t.flame_path)
        self.encoder = LiftEncoder(config.encoder, config.decoder.width, dino=dino)
        self.decoder = Decoder3D(config.decoder, self.template.patch_vertices())
        self.head = GaussianHead(config.head, config.decoder.width, self.template.vertices)
        self.refiner = Refiner(config.refiner) if config.refiner.enabled else None

    # ------------------------------------------------------------------------------------------ stages
    def encode(self, image: Tensor, mask: Tensor) -> Tokens2D:
        """Foreground patch tokens of the lift encoder (§3.1).

        Args:
            image: ``[B, 3, S, S]`` in [0, 1] over white, S = ``config.render.image_size``.
            mask: ``[B, 1, S, S]`` in [0, 1].

        Returns:
            :class:`~perchead.encoder.Tokens2D` (tokens ``[B, K, D]``, padding_mask ``[B, K]``, …).
        """
        size = self.config.render.image_size
        if image.dim() != 4 or tuple(image.shape[-2:]) != (size, size):
            raise ValueError(f"image must be [B, 3, {size}, {size}] (config.render.image_size), got {tuple(image.shape)}")
        return self.encoder(image, mask)

    def decode(
        self,
        tokens2d: Tensor | Tokens2D,
        padding_mask: Tensor | None = None,
        cross_attn_until: int | None = None,
        return_layers: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Lifts 2D tokens to one token per template patch (§3.2).

        Args:
            tokens2d: ``[B, K, D]`` or the :class:`Tokens2D` from :meth:`encode` (its padding mask is used).
            padding_mask: ``[B, K]``, True at padding (ignored when a :class:`Tokens2D` is given).
            cross_attn_until: last 0-based decoder layer with cross-attention (supplement §7); None = all.
            return_layers: also return the per-layer tokens.

        Returns:
            tokens3d ``[B, P, D]`` (and the list of per-layer tokens with ``return_layers``).
        """
        if isinstance(tokens2d, Tokens2D):
            tokens2d, padding_mask = tokens2d.tokens, tokens2d.padding_mask
        return self.decoder(tokens2d, padding_mask, cross_attn_until=cross_attn_until, return_layers=return_layers)

    def to_gaussians(self, tokens3d: Tensor) -> Gaussians:
        """Patch tokens ``[B, P, D]`` → batched Gaussians ``[B, 16·P, …]`` (§3.3)."""
        return self.head(tokens3d)

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
        """Renders Gaussians over a white background, then the CNN refiner (§3.3).

        Args:
            gaussians: ``[(B,) N, …]``.
            cameras: C cameras shared by the batch.
            refine: apply the refiner (when the config enables it).
            features: extra per-Gaussian channels ``[(B,) N, C]`` to composite (see :func:`perchead.render.render`).
            return_depth: also return depth.

        Returns:
            :class:`perchead.render.RenderOutput` with rgb ``[B, V, 3, H, W]``, alpha ``[B, V, 1, H, W]``.
        """
        from perchead.render import render

        device = gaussians.means.device
        out = render(
            gaussians.float(),
            cameras.viewmats.to(device),
            cameras.Ks.to(device),
            cameras.width,
            cameras.height,
            background=WHITE,
            backend=self.config.render.backend,
            features=features,
            return_depth=return_depth,
        )
        if refine and self.refiner is not None:
            out = dataclasses.replace(out, rgb=self.refiner(out.rgb, out.alpha))
        return out

    # ------------------------------------------------------------------------------------------ parameters
    def num_parameters(self, trainable: bool | None = None) -> int:
        """Parameter count: all (None), trainable only (True) or frozen only (False)."""
        return sum(
            p.numel() for p in self.parameters() if trainable is None or p.requires_grad == trainable
        )

    def _stores_dino(self) -> bool:
        dino = self.config.encoder.dino
        return dino is not None and not dino.pretrained

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """The tensors a checkpoint stores: everything except DINOv2 weights loaded by id."""
        skip = not self._stores_dino()
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not (skip and k.startswith(DINO_PREFIX))
        }

    # ------------------------------------------------------------------------------------------ checkpoints
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` into ``folder`` (created if needed).

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"model_type": MODEL_TYPE, **self.config.to_dict()}
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
    ) -> "PercHead":
        """Loads a checkpoint from a local folder or a Hugging Face Hub model repo.

        Args:
            repo_id_or_folder: a folder with ``config.json`` + ``model.safetensors``, or a Hub repo id
                (``"user/name"``).
            revision: Hub branch, tag or commit (ignored for folders).
            cache_dir, local_files_only, token: passed to ``huggingface_hub.hf_hub_download``.
            map_location: device the weights are loaded onto.

        Returns:
            The model in eval mode.

        Raises:
            huggingface_hub.errors.LocalEntryNotFoundError: offline (``HF_HUB_OFFLINE=1`` or no network)
                and the files are not in the local cache.
            huggingface_hub.errors.RepositoryNotFoundError: online and the repo does not exist (or is private).
            huggingface_hub.errors.HFValidationError: the string is neither an existing folder nor a valid
                repo id (a ``ValueError``).
            ValueError: the config or the weights do not describe a PercHead model.
        """
        config_path, weights_path = resolve_checkpoint(
            repo_id_or_folder, revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        config = load_config(config_path)
        model = cls(config)
        model.load_checkpoint(weights_path, map_location=map_location)
        return model.eval()

    def load_checkpoint(self, weights_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> None:
        """Loads ``model.safetensors`` into this model (DINOv2 weights loaded by id may be absent).

        Raises:
            ValueError: on missing or unexpected tensors.
        """
        from safetensors.torch import load_file

        state = load_file(str(weights_path), device=str(map_location))
        missing, unexpected = self.load_state_dict(state, strict=False)
        if not self._stores_dino():
            missing = [k for k in missing if not k.startswith(DINO_PREFIX)]
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {weights_path} does not match the config: missing {missing[:5]}"
                f"{'…' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
            )


# ---------------------------------------------------------------------------------------------- helpers
def resolve_checkpoint(
    repo_id_or_folder: str | os.PathLike,
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> tuple[Path, Path]:
    """Local paths of a checkpoint's ``config.json`` and ``model.safetensors`` (downloaded from the Hub if needed).

    Raises:
        FileNotFoundError: a local folder lacks one of the two files.
        huggingface_hub errors: see :meth:`PercHead.from_pretrained`.
    """
    path = Path(repo_id_or_folder)
    if path.is_dir():
        files = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"checkpoint folder {path} has no {f.name}")
        return files
    from huggingface_hub import hf_hub_download

    kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    config_path = hf_hub_download(str(repo_id_or_folder), CONFIG_NAME, **kwargs)
    weights_path = hf_hub_download(str(repo_id_or_folder), WEIGHTS_NAME, **kwargs)
    return Path(config_path), Path(weights_path)


def load_config(path: str | os.PathLike) -> PercHeadConfig:
    """Reads a checkpoint's ``config.json``.

    Raises:
        ValueError: if it is not a PercHead config.
    """
    data = json.loads(Path(path).read_text())
    model_type = data.pop("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{path} describes a {model_type!r} model, not {MODEL_TYPE!r}")
    return PercHeadConfig.from_dict(data)
