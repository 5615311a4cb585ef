"""Synthetic video clips: synthetic heads moving and turning in front of a coloured background.

The project's own stand-in for the talking-head sequences of paper §4.3 / Figure 4 (VFHQ there): the
video pipeline's tests and benchmark make their clips here, so no recording of a person is needed. Each
head follows its own path, one pose per frame: the camera's azimuth and elevation around the head
(``orbit_cameras`` conventions), where the head centre appears in the frame, and how large it is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from perchead.data.synthetic import SyntheticHead, render_head
from perchead.geometry.cameras import Cameras, orbit_cameras

RADIUS = 0.7  # metres from the camera to the head centre (the training cameras')


def render_clip(heads: Sequence[SyntheticHead], poses: np.ndarray, size: tuple[int, int] = (320, 240),
                background: tuple[int, int, int] = (90, 140, 200)) -> np.ndarray:
    """Renders the heads along their paths over a flat background; later heads are drawn over earlier ones.

    Args:
        heads: K synthetic heads (:func:`perchead.data.synthetic.make_head`).
        poses: per head and frame: azimuth°, elevation°, head centre x and y in frame pixels, and the
            scale in pixels per metre at the head (0.23 m crown to chin: 300 px/m is a 69-px-tall head). ``[K, T, 5]``
        size: frame (width, height) in pixels.
        background: RGB of the background, 0–255.

    Returns:
        the frames. ``[T, H, W, 3]`` uint8
    """
    poses = np.asarray(poses, dtype=np.float32)
    if poses.ndim != 3 or poses.shape[0] != len(heads) or poses.shape[2] != 5:
        raise ValueError(f"poses must be [K={len(heads)}, T, 5], got {poses.shape}")
    width, height = size
    T = poses.shape[1]
    canvas = torch.tensor(background, dtype=torch.float32).div(255).view(1, 3, 1, 1).expand(T, 3, height, width).clone()
    for head, path in zip(heads, torch.from_numpy(poses)):  # path [T, 5]
        orbit = orbit_cameras(path[:, 0], path[:, 1], radius=RADIUS, size=(width, height))
        focal = path[:, 4] * RADIUS  # pixels: scale at the head × its distance
        Ks = torch.zeros(T, 3, 3)
        Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], Ks[:, 2, 2] = focal, focal, path[:, 2], path[:, 3], 1.0
        views = render_head(head, Cameras(orbit.viewmats, Ks, width, height))
        alpha = views["alpha"]  # [T, 1, H, W]
        colour = views["rgb"] - (1.0 - alpha)  # [T, 3, H, W] premultiplied (the renders are over white)
        canvas = canvas * (1.0 - alpha) + colour
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
