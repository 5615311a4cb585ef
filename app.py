"""PercHead Space: one portrait → a 3D head as Gaussian splats (paper §3, Figure 1).

This file only builds the Gradio UI and calls the package: ``perchead.preprocess`` (crop + mask),
``perchead.pipeline.PercHeadPipeline`` (the model) and ``perchead.export`` (files, novel views, turntable).

    python app.py                          # bundled weights_card/, http://127.0.0.1:7860
    python app.py --model user/perchead    # a Hub repo id or a local folder (also: PERCHEAD_MODEL=...)
    python app.py --host 0.0.0.0 --port 7861

The model loads once, at start-up, in a background thread (the page is served meanwhile; requests wait
for it). A requested model that cannot be loaded falls back to the bundled one, and a missing bundled
checkpoint to a freshly initialised ``demo`` model — both with a visible notice. API: ``/reconstruct``
(see docs/app.md for a gradio_client example); its first output is the ``.ply`` path.

Editing tab (paper §3.5, supplement §8; ``perchead.edit_pipeline.EditPipeline``): shown only when the
editing checkpoints (``<folder>/edit``, ``/style``, ``/parser``; ``--edit-model``, default the bundled
``weights_card/``) load, also in the background; otherwise the page says why in one line. API:
``/segment`` (photo → map image) and ``/edit`` (map + text prompt or reference image → ``.ply`` first).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gradio as gr

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator elsewhere
    import spaces
except ImportError:  # pragma: no cover - spaces is in requirements.txt
    spaces = None

ROOT = Path(__file__).resolve().parent
BUNDLED = ROOT / "weights_card"
EXAMPLES = ROOT / "examples"
OUTPUT_ROOT = Path(tempfile.gettempdir()) / "perchead-app"
MAX_FILE_SIZE = "32mb"  # uploads above this are refused by the server
CONCURRENCY = 1  # model jobs at a time (the models share the device; CPUs are few)
MODEL_QUEUE = "model"  # one concurrency group for /segment, /edit and /reconstruct
MODEL_TIMEOUT_S = 300  # how long a request waits for the start-up model load
GPU_DURATION_S = 120  # ZeroGPU time slot per reconstruction
log = logging.getLogger("perchead.app")


def gpu(duration: int):
    """``spaces.GPU(duration=...)`` when the package is importable, else the identity."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# ------------------------------------------------------------------------------------------------ model
class ModelHolder:
    """Loads the pipeline once, in a background thread, and hands it to requests when ready."""

    what = "model"  # for messages

    def __init__(self, requested: str | None, device: str | None = None) -> None:
        self.requested = requested
        self.device = device
        self.pipeline = None
        self.notice = ""
        self.error: str | None = None
        self.description = ""
        self.seconds = 0.0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._load, name="perchead-model-load", daemon=True)

    def start(self) -> "ModelHolder":
        self._thread.start()
        return self

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            self.pipeline, self.description, self.notice = self.load()
        except Exception as error:  # the UI shows it; requests get a clear gr.Error
            log.exception("model loading failed")
            self.error = f"{type(error).__name__}: {error}"
        self.seconds = time.perf_counter() - start
        self._ready.set()

    def load(self):
        """Returns (pipeline, description, notice); runs in the background thread."""
        return load_pipeline(self.requested, self.device)

    def get(self, timeout: float = MODEL_TIMEOUT_S):
        if not self._ready.wait(timeout):
            raise gr.Error(f"the {self.what} is still loading after {timeout:.0f} s; please retry in a moment")
        if self.pipeline is None:
            raise gr.Error(f"the {self.what} could not be loaded: {self.error}")
        return self.pipeline

    def status_markdown(self) -> str:
        self._ready.wait(MODEL_TIMEOUT_S)
        if self.pipeline is None:
            return f"⚠️ **Model not loaded**: {self.error}"
        text = f"Model: **{self.description}** (loaded in {self.seconds:.1f} s)."
        return f"⚠️ {self.notice}\n\n{text}" if self.notice else text


def load_pipeline(requested: str | None, device: str | None = None):
    """The pipeline for ``requested`` (Hub id or folder), else the bundled checkpoint, else a fresh demo model.

    Returns:
        (pipeline, description, notice) — the notice is empty unless something fell back.
    """
    from perchead.pipeline import PercHeadPipeline, default_device

    device = device or str(default_device())
    notices = []
    if requested:
        try:
            pipeline = PercHeadPipeline.from_pretrained(requested, device=device)
            return pipeline, f"`{requested}` on {device}", ""
        except Exception as error:
            notices.append(
                f"Could not load the requested model `{requested}` ({type(error).__name__}: {error}); "
                "using the bundled one instead."
            )
    if (BUNDLED / "model.safetensors").is_file():
        pipeline = PercHeadPipeline.from_pretrained(str(BUNDLED), device=device)
        return pipeline, f"bundled weights_card/ on {device}", " ".join(notices)
    from perchead.config import PercHeadConfig
    from perchead.model import PercHead

    notices.append(
        "No trained checkpoint is bundled yet (weights_card/model.safetensors is missing): this is a freshly "
        "initialised `demo` model, so reconstructions are random-looking. Train one with "
        "`python -m perchead.train --preset demo` or pass `--model`."
    )
    pipeline = PercHeadPipeline(PercHead(PercHeadConfig.preset("demo")), device=device)
    return pipeline, f"untrained `demo` preset on {device}", " ".join(notices)


class EditHolder(ModelHolder):
    """Loads the editing pipeline (``folder/{edit,style,parser}``) in the background, like the base model.

    Whether the Editing tab exists is decided at start-up from the files alone (:attr:`available`, cheap);
    the tab is built hidden and shown once the models have loaded (:meth:`ready`). Missing or unloadable
    checkpoints give a one-line notice instead (:meth:`status_line`).
    """

    what = "editing models"

    def __init__(self, folder: str | None, device: str | None = None) -> None:
        super().__init__(folder, device)
        if folder:
            from perchead.edit_pipeline import missing_parts

            self.missing = missing_parts(folder)
        else:
            self.missing = {"all": "disabled with --edit-model none"}

    @property
    def available(self) -> bool:
        """All checkpoint files are present (the tab and its endpoints are built)."""
        return not self.missing

    def start(self) -> "EditHolder":
        if not self.available:
            self.error = "missing " + "; ".join(self.missing.values())
            self._ready.set()
            return self
        return super().start()

    def load(self):
        from perchead.edit_pipeline import EditPipeline
        from perchead.pipeline import default_device

        device = self.device or str(default_device())
        return EditPipeline.from_pretrained(self.requested, device=device), f"`{self.requested}` on {device}", ""

    def ready(self) -> bool:
        """Waits for the start-up load; True when the editing pipeline is usable."""
        self._ready.wait(MODEL_TIMEOUT_S)
        return self.pipeline is not None

    def status_line(self) -> str:
        """One line for the page's status markdown."""
        if self.ready():
            return f"Editing models: **{self.description}** (loaded in {self.seconds:.1f} s)."
        if self.requested is None:
            return "ℹ️ No Editing tab (disabled with `--edit-model none`)."
        if not self.available:
            from perchead.edit_pipeline import PARTS

            commands = ", ".join(f"`{' '.join(PARTS[name][1].split()[:5])} ...`" for name in self.missing)
            return (f"ℹ️ No Editing tab: `{self.requested}` lacks the editing checkpoints "
                    f"{', '.join(name + '/' for name in self.missing)} (train them with {commands}; see docs/app.md).")
        return f"⚠️ No Editing tab: the editing models could not be loaded ({self.error})."


def load_edit_holder(requested: str | None, device: str | None = None) -> EditHolder:
    """The editing holder for ``--edit-model`` (``none`` disables editing), started."""
    folder = None if (requested or "").strip().lower() in ("none", "off", "") else requested
    return EditHolder(folder, device).start()


# --------------------------------------------------------------------------------------------- handlers
def _guard(component, files_of, what: str):
    """Makes an input component refuse unreadable uploads (empty, corrupt, non-image, bomb) with a clear gr.Error.

    Wraps the instance's ``preprocess`` (a subclass would make Gradio write an ``app.pyi`` stub next to
    this file): our header check of every file in the payload runs first, then Gradio's own (which only
    opens the file for filepaths).

    Args:
        component: the Gradio input.
        files_of: payload → the uploaded file objects (with ``.path``) to check.
        what: how the error message names the input.
    """
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        from perchead.preprocess import PreprocessError, check_file

        for file in files_of(payload):
            path = getattr(file, "path", None)
            if path:
                try:
                    check_file(path)
                except PreprocessError as error:
                    raise gr.Error(f"{what}: {error}", title="Unusable image") from error
        try:
            return gradio_preprocess(payload)
        except Exception as error:  # anything PIL could not open
            raise gr.Error(f"{what}: the file cannot be read as an image ({error})", title="Unusable image") from error

    component.preprocess = preprocess
    return component


def guard_uploads(component: gr.Image) -> gr.Image:
    """:func:`_guard` for an image input."""
    return _guard(component, lambda payload: [payload], "Bad input")


def guard_editor(component: gr.ImageEditor) -> gr.ImageEditor:
    """:func:`_guard` for a ``gr.ImageEditor``: its background, composite and layer files."""
    return _guard(
        component,
        lambda payload: [] if payload is None else [payload.background, payload.composite, *(payload.layers or [])],
        "Bad segmentation map",
    )


def _session_folder(request: gr.Request | None) -> Path:
    session = getattr(request, "session_hash", None) or "anonymous"
    folder = OUTPUT_ROOT / session / time.strftime("%H%M%S") / os.urandom(3).hex()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def job_errors(folder: Path, action: str, bad_input: type | tuple[type, ...], title: str) -> Iterator[None]:
    """Turns a model job's failures into messages for the user; the job's folder is removed on failure.

    Args:
        folder: the job's output folder.
        action: what the job does, for the message ("Reconstruction", "Editing").
        bad_input: exception types that mean the user's input cannot be used ("Bad input: …").
        title: the title of the bad-input message.
    """
    try:
        yield
    except bad_input as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise gr.Error(f"Bad input: {error}", title=title) from error
    except gr.Error:
        raise
    except Exception as error:
        shutil.rmtree(folder, ignore_errors=True)
        log.error("%s failed:\n%s", action.lower(), traceback.format_exc())
        raise gr.Error(f"{action} failed ({type(error).__name__}: {error})") from error


def _cleanup_session(request: gr.Request) -> None:
    """Deletes a session's output files when its browser tab closes."""
    session = getattr(request, "session_hash", None)
    if session:
        shutil.rmtree(OUTPUT_ROOT / session, ignore_errors=True)


def output_panel(prefix: str = "") -> tuple:
    """The result components shared by both tabs (``prefix`` keeps their elem_ids apart).

    Returns:
        (viewer, video, views, downloads, timings, notes).
    """
    viewer = gr.Model3D(
        label="3D head (Gaussian splats, .ply)", clear_color=(1.0, 1.0, 1.0, 1.0), height=420,
        elem_id=f"{prefix}splat-viewer",
    )  # fmt: skip
    video = gr.Video(label="Turntable", autoplay=True, loop=True, height=360, elem_id=f"{prefix}turntable")
    views = gr.Gallery(label="Novel views", columns=7, height=200, object_fit="contain")
    downloads = gr.File(label="Downloads (.ply, .splat, .glb)", file_count="multiple", elem_id=f"{prefix}downloads")
    timings = gr.JSON(label="Timings (s)")
    notes = gr.Markdown(label="Notes", elem_id=f"{prefix}notes")
    return viewer, video, views, downloads, timings, notes


def result_tuple(out, model_input, notes: list[str]) -> tuple:
    """The handlers' 7 outputs from :class:`perchead.export.Outputs`: .ply first (both tabs, API order)."""
    return (
        str(out.files["ply"]),
        str(out.video) if out.video else None,
        [(view, caption) for caption, view in out.views],
        model_input,
        [str(path) for path in out.files.values()],
        {k: round(v, 3) for k, v in out.timings.items()},
        "\n".join(f"- {note}" for note in notes) or "Done.",
    )


MAP_DISPLAY_SIZE = 512  # parsed maps are shown (and painted) at this side; labels go back to the model size
STYLE_TEXT, STYLE_IMAGE = "Text prompt", "Reference image"


def build_edit_tab(edit_holder: EditHolder) -> gr.Tab:
    """The Editing tab (paper §3.5, supplement §8), built inside the current Blocks; hidden until the editing
    models have loaded. Endpoints ``/segment`` and ``/edit``."""
    from perchead.geometry.segmentation import PALETTE_HEX, labels_to_color, legend_html

    @gpu(GPU_DURATION_S)
    def segment(
        photo: str | None,
        remove_background: bool = True,
        auto_crop: bool = True,
        use_whole_image: bool = False,
        request: gr.Request = None,
    ):
        """Parses a portrait into the 19-class segmentation map the editing model takes (face parser).

        Args:
            photo: the portrait (PNG/JPEG/WebP...; RGBA alpha is used as the head mask).
            remove_background: remove the background before parsing (alpha, else GrabCut); outside is background.
            auto_crop: detect the face and crop to the model's framing.
            use_whole_image: when no face is detected, use the whole image instead of failing.

        Returns:
            segmentation_map: the map as a palette-coloured PNG (first output; white = background).
            editor: the same map loaded into the map editor for painting.
            notes: remarks (timings, preprocessing notes).
        """
        from perchead.preprocess import PreprocessError
        from perchead.geometry.segmentation import resize_labels

        if not photo:
            raise gr.Error("Please upload a photo to parse first.", title="No image")
        pipeline = edit_holder.get()
        start = time.perf_counter()
        try:
            labels, prep = pipeline.segment(
                photo, remove_background=bool(remove_background), auto_crop=bool(auto_crop),
                use_whole_image=bool(use_whole_image), return_preprocessed=True,
            )  # fmt: skip
        except PreprocessError as error:
            raise gr.Error(f"Bad input: {error}", title="Unusable image") from error
        except Exception as error:
            log.error("segmentation failed:\n%s", traceback.format_exc())
            raise gr.Error(f"Segmentation failed ({type(error).__name__}: {error})") from error
        seconds = time.perf_counter() - start
        folder = _session_folder(request)
        path = folder / "segmentation.png"
        from PIL import Image

        Image.fromarray(labels_to_color(resize_labels(labels, MAP_DISPLAY_SIZE))).save(path)
        notes = [f"parsed in {seconds:.2f} s ({labels.shape[-1]}² map, shown at {MAP_DISPLAY_SIZE}²)", *prep.notes]
        if not (labels != 0).any():
            notes.append("the parser found no head (all background): paint one, or try another photo")
        return str(path), str(path), "\n".join(f"- {note}" for note in notes)

    @gpu(GPU_DURATION_S)
    def edit(
        segmentation_map: dict | None,
        style_prompt: str = "",
        style_image: str | None = None,
        snap_colors: bool = False,
        turntable_frames: int = 60,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Builds a 3D head (Gaussian splats) from a segmentation map (geometry) and a style (text or image).

        Args:
            segmentation_map: the map painted with the 19 palette colours (white = background), as an
                ImageEditor value {"background": file, "layers": [...], "composite": file}; the composite is
                used (the background when there is none).
            style_prompt: the style as text, e.g. "long blonde hair" (leave empty when giving a style image).
            style_image: the style as a reference image (cropped like a portrait; leave empty with a prompt).
            snap_colors: map colours that are not palette colours to the nearest one instead of failing.
            turntable_frames: frames of the 360° turntable video (0 = no video).

        Returns:
            ply: the Gaussians as a 3DGS .ply file (first output).
            turntable: the turntable .mp4 (or None).
            views: fixed novel views (front, ¾ left/right, profiles, back, top).
            model_input: what the model saw (label map | cropped style image).
            downloads: the .ply, .splat and .glb files.
            timings: seconds per stage.
            notes: remarks.
        """
        import numpy as np
        from PIL import Image

        from perchead.edit_pipeline import EditPipeline, edit_to_outputs
        from perchead.preprocess import PreprocessError, to_uint8

        has_map = isinstance(segmentation_map, dict) and (
            segmentation_map.get("composite") is not None or segmentation_map.get("background") is not None)
        if not has_map:
            raise gr.Error("Please parse a photo, pick an example map or paint a segmentation map first.",
                           title="No segmentation map")
        style_prompt = (style_prompt or "").strip()
        try:
            EditPipeline.check_style(style_prompt or None, style_image or None)
        except ValueError as error:
            raise gr.Error(f"Bad input: {error}", title="No style") from error
        pipeline = edit_holder.get()
        try:
            labels = pipeline.labels_from_color(segmentation_map, snap=bool(snap_colors))
        except ValueError as error:
            hint = "" if snap_colors else " — or tick 'Snap foreign colours to the nearest class colour'"
            raise gr.Error(f"Bad segmentation map: {error}{hint}", title="Unusable segmentation map") from error
        folder = _session_folder(request)
        with job_errors(folder, "Editing", (PreprocessError, ValueError), "Unusable input"):
            out, result = edit_to_outputs(
                pipeline, labels, folder, style_text=style_prompt or None, style_image=style_image or None,
                turntable_frames=int(turntable_frames or 0),
                progress=lambda fraction, stage: progress(fraction, desc=stage),
            )  # fmt: skip
        seen = labels_to_color(result.labels)  # [S, S, 3]
        if result.style_input is not None:
            seen = np.concatenate([seen, to_uint8(result.style_input.image[0])], axis=1)  # [S, 2S, 3]
        style_note = f"style from the {result.style_source}" + (f": “{style_prompt}”" if style_prompt else "")
        notes = [style_note, *out.notes]
        return result_tuple(out, Image.fromarray(seen), notes)

    def switch_style(source: str):
        text = source == STYLE_TEXT
        if text:
            return gr.Textbox(visible=True), gr.Image(visible=False, value=None)
        return gr.Textbox(visible=False, value=""), gr.Image(visible=True)

    with gr.Tab("Editing", visible=False, elem_id="editing-tab") as tab:
        gr.Markdown(
            "Geometry from a **segmentation map**, style from a **text prompt** or a **reference image** "
            "(PercHead §3.5). Parse a photo, pick an example map, or paint with the class colours below."
        )
        with gr.Row():
            with gr.Column(scale=1):
                photo = guard_uploads(
                    gr.Image(label="Photo to parse", type="filepath", sources=["upload", "webcam", "clipboard"],
                             image_mode=None, height=220, elem_id="edit-photo")
                )  # fmt: skip
                with gr.Accordion("Photo options", open=False):
                    seg_remove_background = gr.Checkbox(True, label="Remove background")
                    seg_auto_crop = gr.Checkbox(True, label="Auto-crop around the head")
                    seg_whole_image = gr.Checkbox(False, label="Use the whole image when no face is found")
                segment_button = gr.Button("Get segmentation map", elem_id="segment-button")
                parsed = gr.Image(label="Parsed map", type="filepath", interactive=False, height=160,
                                  elem_id="parsed-map")
                segment_notes = gr.Markdown()
            with gr.Column(scale=2):
                editor = guard_editor(
                    gr.ImageEditor(
                        label="Segmentation map (paint with the class colours; white = background)",
                        type="pil", image_mode="RGB", format="png", sources=["upload", "clipboard"],
                        brush=gr.Brush(colors=list(PALETTE_HEX), default_color=PALETTE_HEX[13], color_mode="fixed"),
                        layers=False, transforms=(), canvas_size=(MAP_DISPLAY_SIZE, MAP_DISPLAY_SIZE), height=560,
                        elem_id="segmentation-editor",
                    )
                )  # fmt: skip
                gr.HTML(legend_html(columns=5), label="Legend")
                maps = sorted(str(p) for p in (EXAMPLES / "maps").glob("*.png"))
                if maps:
                    gr.Examples(maps, inputs=[editor], label="Example maps: held-out synthetic heads")
            with gr.Column(scale=1):
                style_source = gr.Radio([STYLE_TEXT, STYLE_IMAGE], value=STYLE_TEXT, label="Style from")
                style_prompt = gr.Textbox(label="Style prompt", placeholder="e.g. long blonde hair, glasses",
                                          elem_id="style-prompt")
                style_image = guard_uploads(
                    gr.Image(label="Style reference image", type="filepath", sources=["upload", "clipboard"],
                             image_mode=None, height=200, visible=False, elem_id="style-image")
                )  # fmt: skip
                snap = gr.Checkbox(False, label="Snap foreign colours to the nearest class colour",
                                   info="instead of an error (e.g. for maps saved as JPEG)")
                edit_frames = gr.Slider(0, 120, value=60, step=12, label="Turntable length (frames, 0 = none)",
                                        info="30 fps, 512²")
                edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                edit_input = gr.Image(label="What the model saw (map | style image)", type="pil",
                                      interactive=False, height=160, elem_id="edit-model-input")
        viewer, video, views, downloads, timings, notes = output_panel("edit-")
    style_source.change(switch_style, inputs=style_source, outputs=[style_prompt, style_image], api_name=False,
                        queue=False)
    segment_button.click(
        segment, inputs=[photo, seg_remove_background, seg_auto_crop, seg_whole_image],
        outputs=[parsed, editor, segment_notes], api_name="segment", concurrency_limit=CONCURRENCY,
        concurrency_id=MODEL_QUEUE,
    )  # fmt: skip
    edit_button.click(
        edit, inputs=[editor, style_prompt, style_image, snap, edit_frames],
        outputs=[viewer, video, views, edit_input, downloads, timings, notes], api_name="edit",
        concurrency_limit=CONCURRENCY, concurrency_id=MODEL_QUEUE,
    )  # fmt: skip
    return tab


def build_demo(holder: ModelHolder, edit_holder: EditHolder | None = None) -> gr.Blocks:
    """The Gradio UI: the Reconstruction tab (``holder`` supplies the model) and, when ``edit_holder`` has
    its checkpoints, the Editing tab (hidden until they have loaded)."""

    @gpu(GPU_DURATION_S)
    def reconstruct(
        image: str | None,
        remove_background: bool = True,
        auto_crop: bool = True,
        use_whole_image: bool = False,
        turntable_frames: int = 60,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """Reconstructs a 3D head (Gaussian splats) from one portrait.

        Args:
            image: the portrait (PNG/JPEG/WebP...; RGBA alpha is used as the head mask).
            remove_background: remove the background (alpha channel, else GrabCut seeded by the face box).
            auto_crop: detect the face and crop to the model's framing; off uses the whole image padded square.
            use_whole_image: when no face is detected, use the whole image instead of failing.
            turntable_frames: frames of the 360° turntable video (0 = no video).

        Returns:
            ply: the Gaussians as a 3DGS .ply file (first output).
            turntable: the turntable .mp4 (or None).
            views: fixed novel views (front, ¾ left/right, profiles, back, top).
            model_input: the preprocessed input (crop over white | mask).
            downloads: the .ply, .splat and .glb files.
            timings: seconds per stage.
            notes: remarks (model notice, downscaling, fallbacks).
        """
        from perchead.export import photo_to_outputs
        from perchead.preprocess import PreprocessError

        if not image:
            raise gr.Error("Please upload a portrait (or pick an example) first.", title="No image")
        pipeline = holder.get()
        folder = _session_folder(request)
        with job_errors(folder, "Reconstruction", PreprocessError, "Unusable image"):
            out = photo_to_outputs(
                pipeline, image, folder,
                remove_background=bool(remove_background), auto_crop=bool(auto_crop),
                use_whole_image=bool(use_whole_image), turntable_frames=int(turntable_frames or 0),
                progress=lambda fraction, stage: progress(fraction, desc=stage),
            )  # fmt: skip
        notes = ([holder.notice] if holder.notice else []) + out.notes
        return result_tuple(out, out.preprocessed.preview(), notes)

    with gr.Blocks(title="PercHead — 3D head from one photo", delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# PercHead — a 3D head from one photo\n"
            "Upload a portrait (or pick a synthetic example). The head is cropped and cut out, lifted to "
            "3D Gaussians, and shown as splats, a turntable and fixed novel views."
        )
        status = gr.Markdown("Loading the model…")
        with gr.Tab("Reconstruction"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = guard_uploads(
                        gr.Image(
                            label="Portrait", type="filepath", sources=["upload", "webcam", "clipboard"],
                            image_mode=None, height=320,
                        )
                    )  # fmt: skip
                    with gr.Accordion("Options", open=False):
                        remove_background = gr.Checkbox(
                            True, label="Remove background", info="alpha channel if present, else GrabCut seeded by the face"
                        )
                        auto_crop = gr.Checkbox(
                            True, label="Auto-crop around the head", info="crop to the framing the model was trained on"
                        )
                        use_whole_image = gr.Checkbox(
                            False, label="Use the whole image when no face is found", info="instead of an error"
                        )
                        turntable_frames = gr.Slider(
                            0, 120, value=60, step=12, label="Turntable length (frames, 0 = none)", info="30 fps, 512²"
                        )
                    run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
                    examples = sorted(str(p) for p in EXAMPLES.glob("*.png"))
                    if examples:
                        gr.Examples(examples, inputs=[image], label="Examples: held-out synthetic heads")
                    model_input = gr.Image(
                        label="What the model saw (crop | mask)", type="pil", interactive=False, height=180,
                        elem_id="model-input",
                    )
                with gr.Column(scale=2):
                    viewer, video, views, downloads, timings, notes = output_panel()
        run.click(
            reconstruct,
            inputs=[image, remove_background, auto_crop, use_whole_image, turntable_frames],
            outputs=[viewer, video, views, model_input, downloads, timings, notes],
            api_name="reconstruct",
            concurrency_limit=CONCURRENCY,
            concurrency_id=MODEL_QUEUE,
        )
        edit_tab = None
        if edit_holder is not None and edit_holder.available:
            edit_tab = build_edit_tab(edit_holder)

        def page_status():
            text = holder.status_markdown()
            if edit_holder is None:
                return text
            text = f"{text}\n\n{edit_holder.status_line()}"
            return text if edit_tab is None else (text, gr.Tab(visible=edit_holder.ready()))

        demo.load(page_status, outputs=status if edit_tab is None else [status, edit_tab], api_name=False, queue=False)
        demo.unload(_cleanup_session)
    return demo


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("PERCHEAD_MODEL") or None,
                        help="Hub repo id or local folder (default: PERCHEAD_MODEL, else the bundled weights_card/)")
    parser.add_argument("--edit-model", default=os.environ.get("PERCHEAD_EDIT_MODEL") or str(BUNDLED),
                        help="folder with the editing checkpoints edit/, style/ and parser/ (default: "
                             "PERCHEAD_EDIT_MODEL, else the bundled weights_card/); 'none' disables the Editing tab")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to serve on (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    holder = ModelHolder(args.model, args.device).start()
    edit_holder = load_edit_holder(args.edit_model, args.device)
    demo = build_demo(holder, edit_holder)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=32)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(OUTPUT_ROOT)], show_error=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
