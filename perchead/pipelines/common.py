"""What both pipelines share: the device, autocast, per-stage timing and the Gaussian-head tail."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians

if TYPE_CHECKING:
    from perchead.render import RenderOutput


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


def gaussians_and_views(model, tokens3d: Tensor, cameras: Cameras | None, refine: bool,
                        timer: StageTimer, color_bias: Tensor | None = None) -> tuple[Gaussians, RenderOutput | None]:
    """The shared tail of reconstruction and editing: Gaussian head (float32), then optional renders.

    Args:
        model: a :class:`~perchead.models.perchead.PercHead` or :class:`~perchead.models.editor.PercHeadEditor`.
        tokens3d: decoder output. ``[B, P, D]``
        cameras: views to render, or None.
        refine: apply the CNN refiner to the renders.
        timer: records the "gaussians" and "render" stages.
        color_bias: the editor's colour shifts ``[B, P, 3]`` (:meth:`PercHeadEditor.color_bias`), or None.

    Returns:
        (batched Gaussians, RenderOutput or None).
    """
    gaussians = model.to_gaussians(tokens3d.float(), color_bias).float()
    timer("gaussians")
    views = None
    if cameras is not None:
        views = model.render_views(gaussians, cameras, refine=refine)
        timer("render")
    return gaussians, views
