"""Photo → downloadable files: the app's whole reconstruction path outside the UI.

One function, :func:`photo_to_outputs`, runs preprocessing (crop + mask), the PercHead pipeline
(paper §3: lift encoder → 3D decoder → Gaussians), and the exports a user gets: the Gaussians as a
3DGS ``.ply`` and a ``.splat``, a ``.glb`` mesh (template faces), a gallery of fixed novel views
(front, ¾ left/right, both profiles, back, top — the paper's novel and extreme views, §4) and a
turntable ``.mp4``. ``app.py`` and ``benchmarks/app.py`` both call it, so the benchmark measures exactly
what the app does. Its output half, :func:`gaussians_to_outputs` (Gaussians → files, views, turntable), is
shared with the editing path (:func:`perchead.edit_pipeline.edit_to_outputs`, paper §3.5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from perchead.geometry.gaussians import Gaussians, save_ply, save_splat
from perchead.models.perchead import PercHead
from perchead.pipeline import PercHeadPipeline
from perchead.preprocess import ImageSource, PreprocessConfig, Preprocessed, preprocess, to_uint8

# (caption, azimuth°, elevation°): azimuth +90 is the head's own LEFT side (perchead.cameras).
NOVEL_VIEWS: tuple[tuple[str, float, float], ...] = (
    ("front", 0.0, 0.0),
    ("¾ left", 45.0, 0.0),
    ("¾ right", -45.0, 0.0),
    ("left profile", 90.0, 0.0),
    ("right profile", -90.0, 0.0),
    ("back", 180.0, 0.0),
    ("top", 0.0, 85.0),
)
FORMATS = ("ply", "splat", "glb")

StageProgress = Callable[[float, str], None]  # (fraction in [0, 1], stage description)


@dataclass
class Outputs:
    """Everything one reconstruction hands to the user.

    Attributes:
        files: format ("ply", "splat", "glb") → written path.
        video: the turntable .mp4, or None when not requested.
        views: (caption, image) of the fixed novel views.
        preprocessed: what the model saw (see :class:`perchead.preprocess.Preprocessed`); None for heads
            not made from a photo (editing).
        gaussians: the reconstructed head (unbatched, CPU).
        timings: stage → seconds (ours plus the pipeline's own stages).
        notes: remarks for the user (downscaling, fallbacks, export problems).
    """

    files: dict[str, Path]
    video: Path | None
    views: list[tuple[str, Image.Image]]
    preprocessed: Preprocessed | None
    gaussians: Gaussians
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)


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


def export_files(gaussians: Gaussians, folder: str | Path, template=None, formats=FORMATS, stem: str = "head") -> tuple[dict[str, Path], dict[str, float], list[str]]:
    """Writes the Gaussians as .ply / .splat and the template mesh as .glb.

    Args:
        gaussians: one head, unbatched.
        folder: output folder (created).
        template: the model's :class:`perchead.template.Template` (needed for .glb).
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
            from perchead.mesh import save_glb

            save_glb(gaussians, template, path)
        else:
            raise ValueError(f"unknown export format {fmt!r}; choose from {FORMATS}")
        files[fmt] = path
        timings[f"export_{fmt}"] = time.perf_counter() - start
    return files, timings, notes


def photo_to_outputs(
    pipeline: PercHeadPipeline,
    photo: ImageSource,
    folder: str | Path,
    *,
    remove_background: bool = True,
    auto_crop: bool = True,
    use_whole_image: bool = False,
    turntable_frames: int = 60,
    turntable_size: int = 512,
    turntable_refine: bool | None = None,
    view_size: int = 256,
    formats=FORMATS,
    face_parser=None,
    progress: StageProgress | None = None,
) -> Outputs:
    """Photo → Gaussians → files, views and video (the app's reconstruct action).

    Args:
        pipeline: a :class:`perchead.pipeline.PercHeadPipeline` (``pipeline(image, mask)``).
        photo: path, bytes, PIL image or uint8 array.
        folder: where the files go (created).
        remove_background: mask the background (alpha / parser / GrabCut).
        auto_crop: find the head and crop to the training framing.
        use_whole_image: use the whole image when no face is found instead of failing.
        turntable_frames: frames in the orbit video; 0 skips the video.
        turntable_size: video frame side in pixels.
        turntable_refine: run the CNN refiner on the turntable frames; None = only on CUDA (on a CPU the
            refiner at 512² costs ~6× the rasteriser, see benchmarks/app.py; the novel views are always refined).
        view_size: side of the novel-view images; 0 skips them.
        formats: export formats.
        face_parser: optional 19-class parser hook for the mask (see perchead.preprocess).
        progress: called with (fraction, stage).

    Returns:
        :class:`Outputs`.

    Raises:
        perchead.preprocess.PreprocessError: for photos that cannot be used (message says why).
    """
    report = progress or (lambda fraction, stage: None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, device = pipeline.model, pipeline.device
    timings: dict[str, float] = {}
    # 1. preprocess
    report(0.0, "preprocessing (crop + background removal)")
    start = time.perf_counter()
    config = PreprocessConfig.from_model_config(
        model.config.render, remove_background=remove_background, auto_crop=auto_crop,
        use_whole_image=use_whole_image, parser=face_parser,
    )  # fmt: skip
    prep = preprocess(photo, config)
    timings["preprocess"] = time.perf_counter() - start
    notes = list(prep.notes)
    # 2. reconstruct
    report(0.1, "reconstructing the 3D head")
    start = time.perf_counter()
    result = pipeline(prep.image, prep.mask)
    timings["reconstruct"] = time.perf_counter() - start
    for stage, seconds in result.timings.items():
        timings[f"reconstruct/{stage}"] = float(seconds)
    gaussians = result.gaussians.to("cpu")  # one image: unbatched, float32
    # 3.–5. files, novel views, turntable
    out = gaussians_to_outputs(
        model, gaussians, folder, device=device, turntable_frames=turntable_frames, turntable_size=turntable_size,
        turntable_refine=turntable_refine, view_size=view_size, formats=formats, progress=report,
        timings=timings, notes=notes,
    )  # fmt: skip
    out.preprocessed = prep
    return out


def gaussians_to_outputs(
    model,
    gaussians: Gaussians,
    folder: str | Path,
    *,
    device: torch.device | str | None = None,
    turntable_frames: int = 60,
    turntable_size: int = 512,
    turntable_refine: bool | None = None,
    view_size: int = 256,
    formats=FORMATS,
    progress: StageProgress | None = None,
    timings: dict[str, float] | None = None,
    notes: list[str] | None = None,
) -> Outputs:
    """Gaussians → files, novel views and turntable: the output half shared by reconstruction and editing.

    Args:
        model: the model whose framing, renderer + refiner and template are used (a
            :class:`~perchead.model.PercHead` or a :class:`~perchead.edit.PercHeadEditor`).
        gaussians: one head, unbatched (any device).
        folder: where the files go (created).
        device: where to render (default: the model's device).
        turntable_frames, turntable_size, turntable_refine, view_size, formats: as :func:`photo_to_outputs`.
        progress: called with (fraction, stage); this half reports fractions 0.3 .. 1.0.
        timings: stage → seconds measured before (e.g. preprocess, reconstruct); extended in place, and
            ``total`` becomes the sum of all stages without a "/" in their name.
        notes: remarks gathered before; extended.

    Returns:
        :class:`Outputs` with ``preprocessed`` None (callers with a photo set it).
    """
    report = progress or (lambda fraction, stage: None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    timings = {} if timings is None else timings
    notes = [] if notes is None else notes
    gaussians = gaussians.detach().to("cpu")
    # 3. files
    report(0.3, "writing .ply / .splat / .glb")
    files, export_timings, export_notes = export_files(gaussians, folder, model.template, formats)
    timings.update(export_timings)
    notes += export_notes
    # 4. novel views
    views: list[tuple[str, Image.Image]] = []
    if view_size > 0:
        report(0.4, "rendering novel views")
        start = time.perf_counter()
        views = render_novel_views(model, gaussians.to(device), size=view_size)
        timings["novel_views"] = time.perf_counter() - start
    # 5. turntable
    video = None
    if turntable_frames > 0:
        from perchead.video import TurntableConfig, make_turntable

        report(0.5, f"rendering a {turntable_frames}-frame turntable")
        render_config = model.config.render
        config_video = TurntableConfig(
            n_frames=int(turntable_frames), size=int(turntable_size),
            refine=(device.type == "cuda") if turntable_refine is None else bool(turntable_refine),
            radius=render_config.radius, fov_deg=render_config.fov_deg,
        )  # fmt: skip
        video = folder / "turntable.mp4"
        stats = make_turntable(
            model, gaussians.to(device), video, config_video,
            progress=lambda done, total: report(0.5 + 0.5 * done / total, f"turntable {done}/{total} frames"),
        )  # fmt: skip
        timings["turntable"] = stats["seconds"]
        if not config_video.refine:
            notes.append("turntable rendered without the CNN refiner (CPU speed); the novel views are refined")
    report(1.0, "done")
    timings["total"] = sum(v for k, v in timings.items() if "/" not in k and k != "total")
    return Outputs(files, video, views, None, gaussians, timings, notes)
