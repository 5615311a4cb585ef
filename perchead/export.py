"""Photo → downloadable files: the app's whole reconstruction path outside the UI.

One function, :func:`photo_to_outputs`, runs preprocessing (crop + mask), the PercHead pipeline
(paper §3: lift encoder → 3D decoder → Gaussians), and the exports a user gets: the Gaussians as a
3DGS ``.ply`` and a ``.splat``, a ``.glb`` mesh (template faces), a gallery of fixed novel views
(front, ¾ left/right, both profiles, back, top — the paper's novel and extreme views, §4) and a
turntable ``.mp4``. ``app.py`` and ``benchmarks/app.py`` both call it, so the benchmark measures exactly
what the app does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from perchead.cameras import orbit_cameras
from perchead.gaussians import Gaussians
from perchead.preprocess import ImageSource, PreprocessConfig, Preprocessed, preprocess

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
        preprocessed: what the model saw (see :class:`perchead.preprocess.Preprocessed`).
        gaussians: the reconstructed head (unbatched, CPU).
        timings: stage → seconds (ours plus the pipeline's own stages).
        notes: remarks for the user (downscaling, fallbacks, export problems).
    """

    files: dict[str, Path]
    video: Path | None
    views: list[tuple[str, Image.Image]]
    preprocessed: Preprocessed
    gaussians: Gaussians
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)


def model_of(pipeline):
    """The :class:`perchead.model.PercHead` behind a pipeline (or the argument itself if it is the model)."""
    for name in ("model", "perchead", "net"):
        if hasattr(pipeline, name) and hasattr(getattr(pipeline, name), "render_views"):
            return getattr(pipeline, name)
    if hasattr(pipeline, "render_views"):
        return pipeline
    raise ValueError(f"cannot find a model with render_views on {type(pipeline).__name__}")


def preprocess_config_for(model, **overrides) -> PreprocessConfig:
    """Preprocessing that matches the model's input framing and size (its render config)."""
    render_config = getattr(getattr(model, "config", None), "render", None)
    if render_config is None:
        return PreprocessConfig(**overrides)
    return PreprocessConfig.from_model_config(render_config, **overrides)


def render_novel_views(model, gaussians: Gaussians, size: int = 256, refine: bool = True) -> list[tuple[str, Image.Image]]:
    """Renders :data:`NOVEL_VIEWS` with the model's renderer (+ refiner) in one batch.

    Returns:
        (caption, RGB image ``size``²) per view.
    """
    render_config = getattr(getattr(model, "config", None), "render", None)
    radius = float(getattr(render_config, "radius", 0.7))
    fov_deg = float(getattr(render_config, "fov_deg", 30.0))
    cameras = orbit_cameras(
        [v[1] for v in NOVEL_VIEWS], [v[2] for v in NOVEL_VIEWS], radius=radius, fov_deg=fov_deg, size=size
    )
    device = _device_of(model)
    with torch.no_grad():
        rgb = model.render_views(gaussians.batched().to(device), cameras.to(device), refine=refine).rgb  # [1, V, 3, S, S]
    frames = (rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # [V, S, S, 3]
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
    from perchead import gaussians as gaussians_io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    timings: dict[str, float] = {}
    notes: list[str] = []
    for fmt in formats:
        start = time.perf_counter()
        path = folder / f"{stem}.{fmt}"
        if fmt == "ply":
            gaussians_io.save_ply(gaussians, path)
        elif fmt == "splat":
            gaussians_io.save_splat(gaussians, path)
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
    pipeline,
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
    model = model_of(pipeline)
    timings: dict[str, float] = {}
    # 1. preprocess
    report(0.0, "preprocessing (crop + background removal)")
    start = time.perf_counter()
    config = preprocess_config_for(
        model, remove_background=remove_background, auto_crop=auto_crop, use_whole_image=use_whole_image,
        parser=face_parser,
    )  # fmt: skip
    prep = preprocess(photo, config)
    timings["preprocess"] = time.perf_counter() - start
    notes = list(prep.notes)
    # 2. reconstruct
    report(0.1, "reconstructing the 3D head")
    start = time.perf_counter()
    device = _device_of(model)
    result = pipeline(prep.image.to(device), prep.mask.to(device))
    timings["reconstruct"] = time.perf_counter() - start
    for stage, seconds in (getattr(result, "timings", None) or {}).items():
        timings[f"reconstruct/{stage}"] = float(seconds)
    gaussians = result.gaussians
    gaussians = (gaussians[0] if gaussians.is_batched else gaussians).detach().float().to("cpu")
    # 3. files
    report(0.3, "writing .ply / .splat / .glb")
    files, export_timings, export_notes = export_files(gaussians, folder, getattr(model, "template", None), formats)
    timings.update(export_timings)
    notes += export_notes
    # 4. novel views
    views: list[tuple[str, Image.Image]] = []
    if view_size > 0:
        report(0.4, "rendering novel views")
        start = time.perf_counter()
        views = render_novel_views(model, gaussians, size=view_size)
        timings["novel_views"] = time.perf_counter() - start
    # 5. turntable
    video = None
    if turntable_frames > 0:
        from perchead.video import TurntableConfig, make_turntable

        report(0.5, f"rendering a {turntable_frames}-frame turntable")
        render_config = getattr(getattr(model, "config", None), "render", None)
        config_video = TurntableConfig(
            n_frames=int(turntable_frames), size=int(turntable_size),
            refine=(device.type == "cuda") if turntable_refine is None else bool(turntable_refine),
            radius=float(getattr(render_config, "radius", 0.7)), fov_deg=float(getattr(render_config, "fov_deg", 30.0)),
        )  # fmt: skip
        video = folder / "turntable.mp4"
        stats = make_turntable(
            _DeviceModel(model), gaussians, video, config_video,
            progress=lambda done, total: report(0.5 + 0.5 * done / total, f"turntable {done}/{total} frames"),
        )  # fmt: skip
        timings["turntable"] = stats["seconds"]
        if not config_video.refine:
            notes.append("turntable rendered without the CNN refiner (CPU speed); the novel views are refined")
    report(1.0, "done")
    timings["total"] = sum(v for k, v in timings.items() if "/" not in k)
    return Outputs(files, video, views, prep, gaussians, timings, notes)


class _DeviceModel:
    """Moves Gaussians and cameras to the model's device before ``render_views``."""

    def __init__(self, model) -> None:
        self.model = model
        self.device = _device_of(model)

    def render_views(self, gaussians, cameras, refine: bool = True):
        return self.model.render_views(gaussians.batched().to(self.device), cameras.to(self.device), refine=refine)


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def preview_array(prep: Preprocessed) -> np.ndarray:
    """The preprocessed input beside its mask as an ``[S, 2S, 3]`` uint8 array."""
    return np.asarray(prep.preview())
