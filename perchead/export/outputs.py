"""One writer from a head to what a user downloads and sees, shared by reconstruction and editing.

:func:`write_outputs` writes the Gaussians as a 3DGS ``.ply`` and a ``.splat``, a ``.glb`` mesh (template
faces), the fixed novel views as PNGs (front, ¾ left/right, both profiles, back, top — the paper's novel
and extreme views, §4) and a turntable ``.mp4``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from perchead.export.files import FORMATS, export_files, to_web_viewer
from perchead.export.views import render_novel_views
from perchead.geometry.gaussians import Gaussians, save_splat
from perchead.progress import Progress, no_progress


@dataclass
class Outputs:
    """The files written for one head.

    Attributes:
        files: format ("ply", "splat", "glb") → written path (canonical frame: +Y up, face toward +Z, metres).
        viewer: a ``.splat`` copy oriented and sized for web splat viewers (:func:`to_web_viewer`), or None.
        video: the turntable .mp4, or None when not requested.
        views: (caption, PNG path) of the fixed novel views.
        timings: stage → seconds (the pipeline's stages passed in, plus the writer's).
        notes: remarks for the user (those passed in, plus export problems).
    """

    files: dict[str, Path]
    viewer: Path | None
    video: Path | None
    views: list[tuple[str, Path]]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)


def write_outputs(
    model,
    gaussians: Gaussians,
    folder: str | Path,
    *,
    device: torch.device | str | None = None,
    turntable_frames: int = 60,
    turntable_size: int = 512,
    turntable_refine: bool | None = None,
    turntable_fps: int = 15,
    view_size: int = 256,
    formats=FORMATS,
    viewer: bool = True,
    before_turntable: Callable[[Outputs], None] | None = None,
    progress: Progress = no_progress,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
) -> Outputs:
    """One head → files, novel views and a turntable in ``folder``.

    Args:
        model: the model whose framing, renderer + refiner and template are used (a
            :class:`~perchead.models.perchead.PercHead` or a :class:`~perchead.models.editor.PercHeadEditor`).
        gaussians: one head, unbatched, or a batch of one (any device).
        folder: where the files go (created).
        device: where to render (default: the model's device).
        turntable_frames: frames in the orbit video; 0 skips the video.
        turntable_size: video frame side in pixels.
        turntable_fps: video frame rate (ours: 15, so that 60–75 frames make a 4–5 s turn one can follow).
        turntable_refine: run the CNN refiner on the turntable frames; None = only on CUDA (on a CPU the
            refiner at 512² costs ~6× the rasteriser, see benchmarks/app.py; the novel views are always refined).
        view_size: side of the novel-view images; 0 skips them.
        formats: any of :data:`FORMATS`.
        viewer: also write ``head_viewer.splat`` for web splat viewers (:func:`to_web_viewer`).
        before_turntable: called with the outputs written so far (files, viewer copy, views; no video) before
            the turntable is rendered, e.g. to show the head while the video is made.
        progress: called with (fraction, stage) between stages and turntable frame batches (fractions 0.3 ..
            1.0, after a pipeline's 0 .. 0.3); may raise to stop the work.
        timings: the pipeline's stage → seconds; copied, extended with the writer's stages, and ``total``
            becomes the sum of all stages.
        notes: remarks gathered before (e.g. :attr:`Reconstruction.notes`); copied and extended.

    Returns:
        :class:`Outputs`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    timings = {k: v for k, v in (timings or {}).items() if k != "total"}
    notes = list(notes or [])
    if gaussians.is_batched:
        if gaussians.batch_size != 1:
            raise ValueError(f"write_outputs writes one head, got a batch of {gaussians.batch_size}")
        gaussians = gaussians[0]
    gaussians = gaussians.detach().to("cpu")
    # 1. files
    progress(0.3, "writing .ply / .splat / .glb")
    files, export_timings, export_notes = export_files(gaussians, folder, model.template, formats)
    timings.update(export_timings)
    notes += export_notes
    viewer_path = None
    if viewer:
        viewer_path = folder / "head_viewer.splat"
        save_splat(to_web_viewer(gaussians), viewer_path)
    # 2. novel views
    views: list[tuple[str, Path]] = []
    if view_size > 0:
        progress(0.4, "rendering novel views")
        start = time.perf_counter()
        for index, (caption, image) in enumerate(render_novel_views(model, gaussians.to(device), size=view_size)):
            image.save(folder / f"view{index}.png")
            views.append((caption, folder / f"view{index}.png"))
        timings["novel_views"] = time.perf_counter() - start
    # 3. turntable
    video = None
    if before_turntable is not None:
        before_turntable(Outputs(dict(files), viewer_path, None, list(views), dict(timings), list(notes)))
    if turntable_frames > 0:
        from perchead.export.turntable import TurntableConfig, make_turntable

        progress(0.5, f"rendering a {turntable_frames}-frame turntable")
        render_config = model.config.render
        config_video = TurntableConfig(
            n_frames=int(turntable_frames), size=int(turntable_size), fps=int(turntable_fps),
            refine=(device.type == "cuda") if turntable_refine is None else bool(turntable_refine),
            radius=render_config.radius, fov_deg=render_config.fov_deg,
        )  # fmt: skip
        video = folder / "turntable.mp4"
        stats = make_turntable(
            model, gaussians.to(device), video, config_video,
            progress=lambda done, total: progress(0.5 + 0.5 * done / total, f"turntable {done}/{total} frames"),
        )  # fmt: skip
        timings["turntable"] = stats["seconds"]
        if not config_video.refine:
            notes.append("the turntable skips the final sharpening step to stay quick on a CPU; the still views have it")
    progress(1.0, "done")
    timings["total"] = sum(timings.values())
    return Outputs(files, viewer_path, video, views, timings, notes)
