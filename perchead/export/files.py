"""A head's files: the 3DGS ``.ply``, the ``.splat``, the template mesh as ``.glb``, and the copy turned and
enlarged for web splat viewers (:func:`to_web_viewer`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from perchead.geometry.gaussians import Gaussians, save_ply, save_splat


FORMATS = ("ply", "splat", "glb")


# Web splat viewers built on gsplat.js (Gradio's Model3D among them) use the 3DGS/COLMAP world: +Y points
# DOWN on screen, and their orbit camera starts at azimuth α = 0.5 rad, elevation β = 0.5 rad (≈ 29° from
# above), radius 5, looking at the origin from the −Z side: it sits at (5 sin α cos β, −5 sin β, −5 cos α cos β).
# Our canonical head (+Y up, face toward +Z, metres) would show upside down, from behind and tiny there, so
# the viewer gets its own copy: turned 180° about X (upright, facing −Z), tilted back by β so the face looks
# up at the camera (the first view is at eye level, as the downloads' renders are, not looking down on the
# crown), turned about the vertical axis so that the first view is the face, and enlarged.
VIEWER_AZIMUTH_RAD = 0.5  # gsplat.js OrbitControls' initial alpha
VIEWER_ELEVATION_RAD = 0.5  # … and its initial beta (from above)


VIEWER_SCALE = 3.5  # ours: at radius 5 the head and neck (≈ 0.3 m) then fill about half of a 420-px-high viewer


def to_web_viewer(gaussians: Gaussians, scale: float = VIEWER_SCALE) -> Gaussians:
    """A copy of a canonical head oriented and sized for gsplat.js viewers (see :data:`VIEWER_SCALE`): their
    start camera sees it from the front at eye level, upright.

    The downloads keep the canonical frame (+Y up, face toward +Z, metres) that gsplat and SuperSplat read.

    Args:
        gaussians: a head in the canonical frame. ``[N, …]`` or ``[B, N, …]``
        scale: the enlargement.

    Returns:
        the turned and enlarged copy, shaped as ``gaussians``.
    """
    import math

    c, s = math.cos(math.pi), math.sin(math.pi)
    flip = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])  # 180° about X: up → −Y, face → −Z
    b = -VIEWER_ELEVATION_RAD  # about X: the face (−Z) toward the camera's height (−Y is up on screen)
    tilt = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    a = -VIEWER_AZIMUTH_RAD  # turn the face toward the camera's start azimuth (about the vertical axis)
    yaw = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    return gaussians.transformed(yaw @ tilt @ flip, scale)


def export_files(gaussians: Gaussians, folder: str | Path, template=None, formats=FORMATS, stem: str = "head") -> tuple[dict[str, Path], dict[str, float], list[str]]:
    """Writes the Gaussians as .ply / .splat and the template mesh as .glb.

    Args:
        gaussians: one head, unbatched.
        folder: output folder (created).
        template: the model's :class:`perchead.geometry.template.Template` (needed for .glb).
        formats: any of "ply", "splat", "glb".
        stem: file name stem.

    Returns:
        (format → path, format → seconds, notes about formats that could not be written).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    timings: dict[str, float] = {}
    notes: list[str] = []
    for fmt in formats:
        start = time.perf_counter()
        path = folder / f"{stem}.{fmt}"
        if fmt == "ply":
            save_ply(gaussians, path)
        elif fmt == "splat":
            save_splat(gaussians, path)
        elif fmt == "glb":
            if template is None:
                notes.append("no template: .glb mesh not written")
                continue
            from perchead.geometry.mesh import save_glb

            save_glb(gaussians, template, path)
        else:
            raise ValueError(f"unknown export format {fmt!r}; choose from {FORMATS}")
        files[fmt] = path
        timings[f"export_{fmt}"] = time.perf_counter() - start
    return files, timings, notes
