"""Mesh export of a reconstruction (paper §3.2/§3.3 correspondence): template faces over predicted means.

Gaussian k descends from template vertex k (the Gaussian head adds a bounded offset to that vertex), so the
template's triangles stay meaningful after prediction: the mesh has the predicted means as vertices, the
template's faces, and the Gaussian colours as vertex colours. Written as ``.glb`` with trimesh, which
Gradio's ``Model3D`` displays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from perchead.geometry.gaussians import Gaussians
from perchead.geometry.template import Template


def gaussians_to_mesh(gaussians: Gaussians, template: Template | Tensor):
    """A ``trimesh.Trimesh`` with vertices = means, faces = template faces, vertex colours = Gaussian colours.

    Args:
        gaussians: one unbatched set (or a batch of one) with N = template vertex count.
        template: the :class:`~perchead.geometry.template.Template` (or its faces ``[F, 3]``).

    Returns:
        trimesh.Trimesh (not processed: vertex order and count are kept).

    Raises:
        ValueError: if the Gaussians are batched with B > 1 or their count does not match the faces.
    """
    import trimesh

    if gaussians.is_batched:
        if gaussians.batch_size != 1:
            raise ValueError(f"save one head at a time; got a batch of {gaussians.batch_size}")
        gaussians = gaussians[0]
    faces = template.faces if isinstance(template, Template) else torch.as_tensor(template)
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    n = gaussians.num_gaussians
    if int(faces.max()) >= n:
        raise ValueError(f"faces index vertex {int(faces.max())} but there are only {n} Gaussians")
    vertices = gaussians.means.detach().float().cpu().numpy()  # [N, 3]
    rgb = (gaussians.colors.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)  # [N, 3]
    rgba = np.concatenate([rgb, np.full((n, 1), 255, np.uint8)], axis=1)  # [N, 4]
    return trimesh.Trimesh(
        vertices=vertices, faces=faces.cpu().numpy().astype(np.int64), vertex_colors=rgba, process=False
    )


def save_glb(gaussians: Gaussians, template: Template | Tensor, path: str | os.PathLike) -> Path:
    """Writes the reconstruction as a vertex-coloured ``.glb`` mesh (see :func:`gaussians_to_mesh`).

    Args:
        gaussians: one head ``[N, …]`` (or ``[1, N, …]``).
        template: the model's template (or its faces ``[F, 3]``).
        path: output file; its suffix should be ``.glb``.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".glb":
        raise ValueError(f"save_glb writes .glb files, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    gaussians_to_mesh(gaussians, template).export(str(path), file_type="glb")
    return path
