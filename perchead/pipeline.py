"""Inference pipeline: one call from a preprocessed portrait to Gaussians (and optional renders) — paper Figure 2.

The pipeline is the single inference entry point (the app and any CLI call it). It takes an image already
cropped and with its background removed (``perchead.preprocess`` does that for photos) plus its mask,
resizes both to the model's input size, and runs the model under ``torch.no_grad()`` — with autocast on
CUDA — timing every stage.

Example::

    pipe = PercHeadPipeline.from_pretrained("weights_card")      # folder or Hub repo id
    rec = pipe(image, mask, cameras=pipe.model.default_cameras([0, 90, 180, 270]))
    rec.gaussians, rec.views.rgb, rec.timings
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians
from perchead.models.perchead import PercHead

if TYPE_CHECKING:
    from perchead.render import RenderOutput


@dataclass
class Reconstruction:
    """What :class:`PercHeadPipeline` returns.

    Attributes:
        gaussians: the head; unbatched ``[N, …]`` for a single image, batched ``[B, N, …]`` for B > 1.
        views: renders of the given cameras (:class:`perchead.render.RenderOutput`, ``[B, V, …]``), or None.
        timings: seconds per stage: ``preprocess``, ``encode``, ``decode``, ``gaussians``, ``render``
            (when cameras were given) and ``total``.
    """

    gaussians: Gaussians
    views: RenderOutput | None = None
    timings: dict[str, float] = field(default_factory=dict)


def default_device() -> torch.device:
    """CUDA if available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_autocast(device: torch.device):
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); nothing elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


class StageTimer:
    """Seconds per stage of one call; on CUDA it synchronises, so each stage's GPU work counts in it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.timings: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def __call__(self, name: str) -> None:
        """Ends stage ``name``: the time since the previous stage ended (or the timer started)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = now - self._last
        self._last = now

    def total(self) -> dict[str, float]:
        """The timings with ``"total"`` (start to the last stage) added."""
        self.timings["total"] = self._last - self._start
        return self.timings


def gaussians_and_views(model, tokens3d: Tensor, cameras: Cameras | None, refine: bool, timer: StageTimer):
    """The shared tail of reconstruction and editing: Gaussian head (float32), then optional renders.

    Args:
        model: a :class:`PercHead` or :class:`perchead.edit.PercHeadEditor`.
        tokens3d: decoder output. ``[B, P, D]``
        cameras: views to render, or None.
        refine: apply the CNN refiner to the renders.
        timer: records the "gaussians" and "render" stages.

    Returns:
        (batched Gaussians, RenderOutput or None).
    """
    gaussians = model.to_gaussians(tokens3d.float()).float()
    timer("gaussians")
    views = None
    if cameras is not None:
        views = model.render_views(gaussians, cameras, refine=refine)
        timer("render")
    return gaussians, views


class PercHeadPipeline:
    """Image + mask → :class:`Reconstruction`.

    Args:
        model: a :class:`~perchead.model.PercHead`.
        device: where to run (default: CUDA if available, else CPU).
    """

    def __init__(self, model: PercHead, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(
        cls, repo_id_or_folder: str, revision: str | None = None, device: str | torch.device | None = None, **kwargs
    ) -> "PercHeadPipeline":
        """Loads a checkpoint (folder or Hub repo id; see :meth:`PercHead.from_pretrained` for the exceptions)."""
        return cls(PercHead.from_pretrained(repo_id_or_folder, revision=revision, **kwargs), device=device)

    @property
    def image_size(self) -> int:
        return self.model.config.render.image_size

    # ------------------------------------------------------------------------------------------ input
    def prepare(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Checks, batches and resizes inputs to the model size, on the pipeline device.

        Args:
            image: ``[3, H, W]`` or ``[B, 3, H, W]`` float in [0, 1], over white.
            mask: ``[1, H, W]``, ``[H, W]`` or ``[B, 1, H, W]`` in [0, 1] (bool accepted).

        Returns:
            (image ``[B, 3, S, S]``, mask ``[B, 1, S, S]``).
        """
        if not isinstance(image, Tensor) or not isinstance(mask, Tensor):
            raise ValueError("image and mask must be torch tensors (use perchead.preprocess for photos)")
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [3, H, W] or [B, 3, H, W], got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image must be float in [0, 1], got {image.dtype}")
        if mask.dim() == 2:
            mask = mask[None]
        if mask.dim() == 3:
            mask = mask[None]
        if mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"mask must be [B, 1, H, W] matching the image {tuple(image.shape)}, got {tuple(mask.shape)}")
        S = self.image_size
        image = image.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        if image.shape[-2:] != (S, S):
            image = F.interpolate(image, size=(S, S), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
            mask = F.interpolate(mask, size=(S, S), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return image, mask  # [B, 3, S, S], [B, 1, S, S]

    # ------------------------------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: Tensor,
        mask: Tensor,
        cameras: Cameras | None = None,
        refine: bool = True,
        cross_attn_until: int | None = None,
    ) -> Reconstruction:
        """Reconstructs the head(s) in ``image``.

        Args:
            image: ``[3, H, W]`` or ``[B, 3, H, W]`` in [0, 1], background white; resized to the model size.
            mask: foreground mask with the same H, W.
            cameras: views to render (e.g. ``pipe.model.default_cameras([0, 90])``); None renders nothing.
            refine: apply the CNN refiner to the renders.
            cross_attn_until: decoder visualisation (supplement §7); None = the normal model.

        Returns:
            :class:`Reconstruction`.
        """
        timer = StageTimer(self.device)
        # 1. inputs to the model size and device
        image, mask = self.prepare(image, mask)
        timer("preprocess")
        with inference_autocast(self.device):
            # 2. dual-branch lift encoder: foreground patch tokens
            tokens2d = self.model.encode(image, mask)
            timer("encode")
            # 3. 3D decoder: one token per template patch
            tokens3d = self.model.decode(tokens2d, cross_attn_until=cross_attn_until)
            timer("decode")
        # 4.–5. Gaussian head (float32), optional renders + refiner
        gaussians, views = gaussians_and_views(self.model, tokens3d, cameras, refine, timer)
        timings = timer.total()
        if gaussians.batch_size == 1:
            gaussians = gaussians[0]
        return Reconstruction(gaussians=gaussians, views=views, timings=timings)
