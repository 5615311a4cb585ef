"""Turntable videos of a reconstructed head: an orbit of renders written as an H.264 .mp4.

The views come from the model's own renderer (``PercHead.render_views``: rasteriser + CNN refiner,
paper §3.3–3.4), so the video shows exactly what the novel-view evaluation (paper §4) measures. Frames
are rendered in batches and streamed into the encoder (imageio-ffmpeg's bundled ffmpeg, libx264,
yuv420p), so memory stays flat however long the orbit is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor

from perchead.geometry.cameras import Cameras, orbit_cameras
from perchead.geometry.gaussians import Gaussians
from perchead.geometry.images import to_uint8

ProgressFn = Callable[[int, int], None]  # (frames done, frames total)


class _RendersViews(Protocol):
    def render_views(self, gaussians: Gaussians, cameras: Cameras, refine: bool = True): ...


Renderer = Callable[[Gaussians, Cameras], Tensor]  # → rgb [B, V, 3, H, W] (or [V, 3, H, W]) in [0, 1]


@dataclass
class TurntableConfig:
    """Orbit and encoding settings (all ours).

    Attributes:
        n_frames: frames in one full orbit.
        size: frame side in pixels (rounded up to even for yuv420p).
        fps: frames per second.
        elevation_deg: camera elevation (+ looks down from above).
        elevation_wobble_deg: amplitude of a sinusoidal elevation change over the orbit (0 = flat circle).
        radius: camera distance from the head centre in metres.
        fov_deg: horizontal field of view in degrees.
        batch_size: views rendered per renderer call.
        crf: x264 constant rate factor (lower = better quality, larger file).
        preset: x264 speed preset.
        refine: run the model's CNN refiner on every frame.
    """

    n_frames: int = 60
    size: int = 512
    fps: int = 30
    elevation_deg: float = 8.0
    elevation_wobble_deg: float = 4.0
    radius: float = 0.7
    fov_deg: float = 30.0
    batch_size: int = 8
    crf: int = 20
    preset: str = "veryfast"
    refine: bool = True

    def __post_init__(self) -> None:
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be at least 1, got {self.n_frames}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.fps < 1:
            raise ValueError(f"fps must be at least 1, got {self.fps}")

    @property
    def even_size(self) -> int:
        """The frame side rounded up to an even number (yuv420p halves the chroma resolution)."""
        return self.size + (self.size % 2)


def turntable_cameras(config: TurntableConfig) -> Cameras:
    """Orbit cameras, azimuth 0 → 360 (exclusive, so the loop is seamless), elevation gently wobbling.

    Returns:
        Cameras with ``config.n_frames`` views of ``config.even_size``² pixels.
    """
    azimuths = torch.arange(config.n_frames, dtype=torch.float32) * (360.0 / config.n_frames)  # [F]
    elevations = config.elevation_deg + config.elevation_wobble_deg * torch.sin(torch.deg2rad(azimuths))  # [F]
    return orbit_cameras(azimuths, elevations, radius=config.radius, fov_deg=config.fov_deg, size=config.even_size)


def model_renderer(model: _RendersViews, refine: bool = True) -> Renderer:
    """Wraps ``model.render_views`` as a :data:`Renderer` returning the RGB tensor."""

    def render(gaussians: Gaussians, cameras: Cameras) -> Tensor:
        return model.render_views(gaussians, cameras, refine=refine).rgb

    return render


def render_frames(
    renderer: Renderer,
    gaussians: Gaussians,
    cameras: Cameras,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> Iterator[np.ndarray]:
    """Renders the views in batches and yields them one by one as uint8 frames.

    Args:
        renderer: ``(gaussians, cameras) -> rgb [B, V, 3, H, W]`` in [0, 1] (B = 1).
        gaussians: one head (unbatched, or batched with B = 1).
        cameras: the views.
        batch_size: views per renderer call.
        progress: called with (frames done, total) after every batch.

    Yields:
        ``[H, W, 3]`` uint8 frames, in camera order.
    """
    if gaussians.is_batched and gaussians.batch_size != 1:
        raise ValueError(f"render_frames renders one head, got a batch of {gaussians.batch_size}")
    total = len(cameras)
    for start in range(0, total, batch_size):
        chunk = cameras[start : start + batch_size]
        with torch.no_grad():
            rgb = renderer(gaussians, chunk)  # [B, V, 3, H, W]
        if rgb.dim() == 5:
            rgb = rgb[0]  # [V, 3, H, W]
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"renderer must return [B, V, 3, H, W] or [V, 3, H, W], got {tuple(rgb.shape)}")
        yield from to_uint8(rgb)  # [H, W, 3] each
        if progress is not None:
            progress(min(start + batch_size, total), total)


def write_mp4(frames, path: str | os.PathLike, fps: int = 30, crf: int = 20, preset: str = "veryfast") -> int:
    """Encodes frames as H.264 (libx264, yuv420p, +faststart) with imageio-ffmpeg's bundled ffmpeg.

    Args:
        frames: iterable of ``[H, W, 3]`` uint8 arrays of one size with even H and W.
        path: output .mp4 path.
        fps: frames per second.
        crf: x264 constant rate factor.
        preset: x264 speed preset.

    Returns:
        The number of frames written.
    """
    import imageio_ffmpeg

    writer = None
    count = 0
    try:
        for frame in frames:
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be [H, W, 3] uint8, got shape {frame.shape}")
            height, width = frame.shape[:2]
            if height % 2 or width % 2:
                raise ValueError(f"yuv420p needs even frame sizes, got {width}×{height}")
            if writer is None:
                size = (width, height)
                writer = imageio_ffmpeg.write_frames(
                    str(path), size, fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                    quality=None, macro_block_size=1, ffmpeg_log_level="error",
                    output_params=["-crf", str(crf), "-preset", preset, "-movflags", "+faststart"],
                )  # fmt: skip
                writer.send(None)  # start the encoder
            elif (width, height) != size:
                raise ValueError(f"all frames must share one size: {size} then {(width, height)}")
            writer.send(frame)
            count += 1
    finally:
        if writer is not None:
            writer.close()
    if count == 0:
        raise ValueError("write_mp4 got no frames")
    return count


def make_turntable(
    renderer: Renderer | _RendersViews,
    gaussians: Gaussians,
    path: str | os.PathLike,
    config: TurntableConfig | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, float]:
    """Renders an orbit of the head and writes it as an H.264 .mp4.

    Args:
        renderer: a model with ``render_views`` (its refiner is used when ``config.refine``) or a
            :data:`Renderer` callable.
        gaussians: one head.
        path: output .mp4 path.
        config: orbit and encoding settings.
        progress: called with (frames done, total) after every rendered batch.

    Returns:
        ``{"frames": n, "seconds": wall time, "bytes": file size}``.
    """
    config = config or TurntableConfig()
    if hasattr(renderer, "render_views"):
        renderer = model_renderer(renderer, refine=config.refine)
    start = time.perf_counter()
    cameras = turntable_cameras(config)
    frames = render_frames(renderer, gaussians, cameras, batch_size=config.batch_size, progress=progress)
    count = write_mp4(frames, path, fps=config.fps, crf=config.crf, preset=config.preset)
    return {"frames": float(count), "seconds": time.perf_counter() - start, "bytes": float(os.path.getsize(path))}
