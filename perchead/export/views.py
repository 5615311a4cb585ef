"""The fixed novel views of a head (front, ¾ left/right, both profiles, back, top — the paper's novel and
extreme views, §4) rendered as images."""

from __future__ import annotations

import torch
from PIL import Image

from perchead.geometry.gaussians import Gaussians
from perchead.geometry.images import to_uint8
from perchead.models.perchead import PercHead


# (caption, azimuth°, elevation°): azimuth +90 is the head's own LEFT side (perchead.geometry.cameras).
NOVEL_VIEWS: tuple[tuple[str, float, float], ...] = (
    ("front", 0.0, 0.0),
    ("¾ left", 45.0, 0.0),
    ("¾ right", -45.0, 0.0),
    ("left profile", 90.0, 0.0),
    ("right profile", -90.0, 0.0),
    ("back", 180.0, 0.0),
    ("top", 0.0, 85.0),
)


def render_novel_views(model: PercHead, gaussians: Gaussians, size: int = 256, refine: bool = True) -> list[tuple[str, Image.Image]]:
    """Renders :data:`NOVEL_VIEWS` with the model's renderer (+ refiner) in one batch.

    Args:
        model: the PercHead whose framing (``config.render`` radius and fov) and refiner are used.
        gaussians: one head, on the model's device.
        size: image side in pixels.
        refine: apply the CNN refiner.

    Returns:
        (caption, RGB image ``size``²) per view.
    """
    cameras = model.default_cameras([v[1] for v in NOVEL_VIEWS], [v[2] for v in NOVEL_VIEWS], size=size)
    with torch.no_grad():
        rgb = model.render_views(gaussians, cameras, refine=refine).rgb  # [1, V, 3, S, S]
    frames = to_uint8(rgb[0])  # [V, S, S, 3]
    return [(caption, Image.fromarray(frame)) for (caption, _, _), frame in zip(NOVEL_VIEWS, frames)]
