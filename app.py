"""PercHead Space: one portrait → a 3D head as Gaussian splats (paper §3, Figure 1), and 3D editing (§3.5).

This file only builds the UI and calls one pipeline per task (``perchead.pipelines``: ``PercHeadPipeline``
for /reconstruct and /decoder_layers, ``SequencePipeline`` for /reconstruct_video, ``PercHeadEditPipeline``
for /segment and /edit, ``write_outputs`` for the files); ``serving.py`` loads the models and runs each job
safely (see docs/app.md, "Limits and safety").

    python app.py                          # bundled weights_card/, http://127.0.0.1:7860
    python app.py --model user/perchead    # a Hub repo id or a local folder (also: PERCHEAD_MODEL=...)
    python app.py --model user/perchead --edit-model user/perchead --revision v1   # one repo, pinned
    python app.py --host 0.0.0.0 --port 7861
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from contextlib import aclosing
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from perchead.models.lift_encoder import EmptyMaskError
from perchead.pipelines.edit import MAP_SOURCES

from serving import (
    BUNDLED, EDITOR_MAX_LAYERS, EDITOR_MAX_PIXELS, EditHolder, JobRunner, ModelHolder, OutputStore, check_count,
    check_flag, gpu_seconds, gpu_task, guard_choice, guard_editor_blobs, guard_uploads, guard_value, guard_video,
    guarded_app_kwargs, load_edit_holder, markdown_text, session_key, visitor_error,
)  # fmt: skip

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
MAX_FILE_SIZE = "32mb"  # uploads above this are refused by the server
QUEUE_SIZE = 32  # requests waiting at once; more are refused with "queue is full"
CONCURRENCY = 1  # model jobs at a time (the models share the device; CPUs are few)
MODEL_QUEUE = "model"  # one concurrency group for /segment, /edit and /reconstruct
MAX_FRAMES = 120  # longest turntable
DEFAULT_FRAMES = 72  # 4.8 s per turn at 15 fps
DEFAULT_FIT_STEPS = 40  # the photo-fit's "fast" preset: a few seconds on 2 CPU cores
MAX_FIT_STEPS = 200  # a longer fit would hold the one model slot for minutes
MAP_DISPLAY_SIZE = 512  # parsed maps are shown (and painted) at this side; labels go back to the model size
STYLE_TEXT, STYLE_IMAGE = "Text prompt", "Reference image"
EXPECT = (
    "**What to expect.** The bundled demo model learned from this project's *synthetic* heads only (no real "
    "faces; a small model, trained for hours, not weeks): on its own it turns a real photo into a smooth, "
    "rough head. The photo-fit (on by default) brings the face of the photo in; the sides and the back stay the "
    "model's guess. "
    "**Tips:** one face, looking roughly at the camera, head and shoulders in the frame, even light."
)
DOWNLOAD_HINTS = ("**.ply** — splat viewers and tools (SuperSplat, gsplat; +Y up, metres) · **.glb** — a mesh "
                  "for Blender or three.js · **.splat** — web splat viewers")
CSS = """
#splat-viewer canvas, #edit-splat-viewer canvas { background: #ffffff !important; }
#downloads .label-clear-button, #edit-downloads .label-clear-button, #inside-downloads .label-clear-button { display: none; }
"""  # the splat viewer ignores clear_color (its canvas is transparent over a dark box); results are not removable
log = logging.getLogger("perchead.app")


# ------------------------------------------------------------------------------------------------ inputs
def photo_input(label: str, elem_id: str, height: int = 300, visible: bool = True) -> gr.Image:
    return guard_uploads(gr.Image(label=label, type="filepath", sources=["upload", "webcam", "clipboard"],
                                  image_mode=None, height=height, visible=visible, elem_id=elem_id),
                         lambda payload: [payload], "Bad input")


def frames_input() -> gr.Slider:
    return guard_value(gr.Slider(0, MAX_FRAMES, value=DEFAULT_FRAMES, step=12, label="Turntable length (frames)",
                                 info="15 frames per second; 0 = no video"),
                       "turntable_frames", f"a whole number from 0 to {MAX_FRAMES}")


# ----------------------------------------------------------------------------------------------- outputs
def output_panel(prefix: str = ""):
    """The head viewer and summary (shown first), then the video, views, input and downloads.

    Returns:
        (ply, viewer, video, views, model_input, downloads, timings, summary, lower) where ``lower`` is a
        function that builds the video / views / model input / downloads where it is called.
    """
    ply = gr.File(visible=False, elem_id=f"{prefix}ply")  # the canonical .ply: the API's first output
    viewer = gr.Model3D(label="3D head — drag to turn, scroll to zoom", height=420, elem_id=f"{prefix}splat-viewer")
    summary = gr.Markdown("The 3D head appears above; the turntable and downloads below.", elem_id=f"{prefix}summary")
    timings = gr.JSON(visible=False)  # seconds per stage, for API clients
    parts = {}

    def lower():
        parts["video"] = gr.Video(label="Turntable", autoplay=True, loop=True, height=360, elem_id=f"{prefix}turntable")
        parts["views"] = gr.Gallery(label="Views: front, ¾ left, ¾ right, profiles, back, top", columns=4,
                                    height=560, object_fit="contain", elem_id=f"{prefix}views")
        with gr.Row():
            parts["model_input"] = gr.Image(label="What the model saw", type="filepath", interactive=False,
                                            height=200, elem_id=f"{prefix}model-input")
            with gr.Column():
                parts["downloads"] = gr.File(label="Downloads", file_count="multiple", interactive=False,
                                             elem_id=f"{prefix}downloads")
                gr.Markdown(DOWNLOAD_HINTS)
        return parts["video"], parts["views"], parts["model_input"], parts["downloads"]

    return ply, viewer, summary, timings, lower


def plain_summary(timings: dict[str, float], notes: list[str], pending: str | None) -> str:
    """Timings in words ("3D head in 0.4 s · …"), what is still coming, and the notes as a list."""
    head = sum(timings.get(k, 0.0) for k in ("preprocess", "labels", "style_preprocess", "style", "encode",
                                             "decode", "gaussians", "fit"))
    def seconds(value: float) -> str:  # "0.04 s" rather than "0.0 s" for the quick steps
        return f"{value:.2f} s" if value < 0.95 else f"{value:.1f} s"

    files = sum(v for k, v in timings.items() if k.startswith("export_") or k == "novel_views")
    line = f"**3D head in {seconds(head)}**" + (f" (fitting to the photo: {seconds(timings['fit'])})" if "fit" in timings else "")
    line += f" · files and views in {seconds(files)}" if files else ""
    if "turntable" in timings:
        line += f" · turntable in {seconds(timings['turntable'])}"
    if pending:
        line += f" · {pending}"
    return "\n".join([line, *(f"- {note}" for note in notes)])


def result(out, model_input: str, notes: list[str], pending: str | None = None) -> tuple:
    """The handlers' 8 outputs (API order): .ply, viewer copy, video, views, model input, downloads, timings,
    summary. Also called for early results (``pending`` says what is still coming)."""
    return (
        str(out.files["ply"]),
        str(out.viewer),
        str(out.video) if out.video else None,
        [(str(path), caption) for caption, path in out.views],
        model_input,
        [str(path) for path in out.files.values()],
        {k: round(v, 3) for k, v in out.timings.items()},
        plain_summary(out.timings, notes, pending),
    )


def run_button(button: gr.Button, label: str, event, handler, inputs, outputs, api_name: str, progress_on):
    """``button`` starts ``handler`` (one queue for every model job), greyed out with "Working…" meanwhile."""
    busy = event(lambda: gr.Button(value="Working…", interactive=False), None, button, queue=False, api_name=False)
    job = busy.then(handler, inputs, outputs, api_name=api_name, concurrency_limit=CONCURRENCY,
                    concurrency_id=MODEL_QUEUE, show_progress_on=progress_on)
    for after in (job.success, job.failure):  # the page runs a .then only after a success; a refused input fails
        after(lambda: gr.Button(value=label, interactive=True), None, button, queue=False, api_name=False)


# ----------------------------------------------------------------------------------------------- editing
def build_edit_tab(edit_holder: EditHolder, jobs: JobRunner) -> gr.Tab:
    """The Editing tab, hidden until the editing models have loaded. Endpoints ``/segment`` and ``/edit``."""
    from perchead.geometry.segmentation import PALETTE_HEX, labels_to_color, legend_html

    @gpu_task
    def parse_photo(job, photo: str, options: dict):
        from PIL import Image

        from perchead.geometry.segmentation import resize_labels

        start = time.perf_counter()
        labels, prep = edit_holder.get().segment(photo, return_preprocessed=True, **options)
        path = job.folder / "segmentation.png"
        Image.fromarray(labels_to_color(resize_labels(labels, MAP_DISPLAY_SIZE))).save(path)
        notes = [f"parsed in {time.perf_counter() - start:.1f} s", *prep.notes]
        if not (labels != 0).any():
            notes.append("no head was found in the photo (all background): paint one, or try another photo")
        return str(path), str(path), "\n".join(f"- {note}" for note in notes)

    async def segment(photo: str | None, remove_background: bool = True, auto_crop: bool = True,
                      use_whole_image: bool = False, map_source: str = "auto", request: gr.Request = None):
        """Turns a portrait into the 19-class segmentation map the editing model takes.

        Args:
            photo: the portrait (PNG/JPEG/WebP...; RGBA alpha is used as the head mask).
            remove_background: remove the background before parsing; outside the head is background.
            auto_crop: detect the face and crop to the model's framing.
            use_whole_image: when no face is detected, use the whole image instead of failing.
            map_source: "auto" (from the face landmarks and the matte; the face parser when no landmarks
                are found), "landmarks" (the same) or "parser" (the face parser, trained on synthetic heads).

        Returns:
            segmentation_map: the map as a palette-coloured PNG (first output; white = background).
            editor: the same map loaded into the map editor for painting.
            notes: remarks.
        """
        from perchead.photo.load import PreprocessError
        from perchead.pipelines.edit import MAP_SOURCES

        if not photo:
            raise visitor_error("Please upload a photo to parse first.", "No image")
        options = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("auto_crop", auto_crop), ("use_whole_image", use_whole_image))}
        if map_source not in MAP_SOURCES:
            raise visitor_error(f"map_source must be one of {', '.join(MAP_SOURCES)}, got {str(map_source)[:40]!r}.",
                                "Bad parameter")
        options["source"] = map_source

        return await jobs.run(request, "segmentation", parse_photo, (PreprocessError, EmptyMaskError),
                              args=(photo, options), duration=gpu_seconds())

    @gpu_task
    def edit_map(job, segmentation_map: dict, style_prompt: str, style_image: str | None, snap: bool, frames: int):
        import numpy as np
        from PIL import Image

        from perchead.export import write_outputs
        from perchead.geometry.images import to_uint8
        from perchead.photo.load import PreprocessError

        pipeline = edit_holder.get()
        report = job.reporter()
        try:
            labels, map_notes = pipeline.labels_from_color(segmentation_map, snap=snap, return_notes=True)
        except ValueError as error:
            hint = "" if snap else " (or tick 'Snap foreign colours to the nearest class colour')"
            raise ValueError(f"Bad segmentation map: {error}{hint}") from None
        try:
            edited = pipeline(labels, style_prompt or None, style_image or None, progress=report)
        except PreprocessError as error:  # only the style image is a photo here
            raise PreprocessError(f"Bad style image: {error}") from None
        seen = labels_to_color(edited.labels[0])  # [S, S, 3]
        if edited.style_input is not None:
            seen = np.concatenate([seen, to_uint8(edited.style_input.image[0])], axis=1)  # [S, 2S, 3]
        seen_path = str(job.folder / "model_input.png")
        Image.fromarray(seen).save(seen_path)
        style_note = f"style from the {edited.style_source}"
        style_note += f": “{markdown_text(style_prompt)}”" if style_prompt else ""  # shown literally
        notes = [style_note, *map_notes, *edited.notes]
        out = write_outputs(pipeline.editor, edited.gaussians, job.folder, turntable_frames=frames,
                            progress=report, timings=edited.timings, notes=notes,
                            before_turntable=lambda part: job.publish(
                                result(part, seen_path, part.notes, "the turntable video is on its way…")))
        return result(out, seen_path, out.notes)

    async def edit(segmentation_map: dict | None, style_prompt: str = "", style_image: str | None = None,
                   snap_colors: bool = False, turntable_frames: int = DEFAULT_FRAMES, request: gr.Request = None,
                   progress: gr.Progress = gr.Progress()):
        """Builds a 3D head (Gaussian splats) from a segmentation map (geometry) and a style (text or image).

        Args:
            segmentation_map: the map painted with the 19 palette colours (white = background), as an
                ImageEditor value {"background": file, "layers": [...], "composite": file}; the composite is
                used (the background when there is none).
            style_prompt: the style as text, e.g. "long blonde hair" (leave empty when giving a style image).
            style_image: the style as a reference image (leave empty with a prompt).
            snap_colors: map colours that are not palette colours to the nearest one instead of failing.
            turntable_frames: frames of the 360° turntable video at 15 fps (0 = no video).

        Returns:
            ply: the Gaussians as a 3DGS .ply file (first output; +Y up, face toward +Z, metres).
            viewer: a .splat copy turned and enlarged for web splat viewers (what the page shows).
            turntable: the turntable .mp4 (or None).
            views: fixed views (front, ¾ left/right, profiles, back, top).
            model_input: what the model saw (label map | cropped style image).
            downloads: the .ply, .splat and .glb files.
            timings: seconds per stage.
            summary: the timings in words and remarks.
        """
        from perchead.photo.load import PreprocessError
        from perchead.pipelines import PercHeadEditPipeline

        if not (isinstance(segmentation_map, dict) and (segmentation_map.get("composite") is not None
                                                        or segmentation_map.get("background") is not None)):
            raise visitor_error("Please parse a photo, pick an example map or paint a segmentation map first.",
                                "No segmentation map")
        if style_prompt is not None and not isinstance(style_prompt, str):
            raise visitor_error("style_prompt must be text.", "Bad parameter")
        style_prompt = (style_prompt or "").strip()
        snap = check_flag(snap_colors, "snap_colors")
        frames = check_count(turntable_frames, "turntable_frames", 0, MAX_FRAMES)
        try:
            PercHeadEditPipeline.check_style(style_prompt or None, style_image or None)
        except ValueError as error:
            raise visitor_error(str(error), "No style") from None

        async with aclosing(jobs.stream(request, "editing", edit_map, (PreprocessError, ValueError),
                                        args=(segmentation_map, style_prompt, style_image, snap, frames),
                                        progress=progress, duration=gpu_seconds(turntable_frames=frames))) as stream:
            async for outputs in stream:  # Gradio closing this handler (stop pressed) closes the stream: the job stops
                yield outputs

    def switch_style(source: str):
        if source == STYLE_TEXT:
            return gr.Textbox(visible=True), gr.Image(visible=False, value=None)
        return gr.Textbox(visible=False, value=""), gr.Image(visible=True)

    with gr.Tab("Editing", visible=False, elem_id="editing-tab") as tab:
        gr.Markdown("Shape from a **segmentation map**, look from a **text prompt** or a **reference image**. "
                    "Start from a photo, an example map, or paint with the named colours.")
        with gr.Row():
            with gr.Column(scale=2, min_width=260):
                photo = photo_input("Start from a photo", "edit-photo", height=220)
                with gr.Accordion("Photo options", open=False):
                    seg_remove_background = gr.Checkbox(True, label="Remove background")
                    seg_auto_crop = gr.Checkbox(True, label="Auto-crop around the head")
                    seg_whole_image = gr.Checkbox(False, label="Use the whole image when no face is found")
                    seg_source = guard_choice(gr.Radio([("Face landmarks + matte (photos)", "auto"),
                                                        ("Face parser (synthetic renders)", "parser")], value="auto",
                                                       label="Map from", elem_id="map-source"),
                                              "map_source", MAP_SOURCES)  # "landmarks" (the same as auto) too
                segment_button = gr.Button("Get segmentation map", elem_id="segment-button")
                parsed = gr.Image(label="Parsed map", type="filepath", interactive=False, height=160,
                                  elem_id="parsed-map")
                segment_notes = gr.Markdown()
            with gr.Column(scale=3, min_width=320):
                gr.HTML(legend_html(columns=4))
                editor = guard_editor_blobs(guard_uploads(gr.ImageEditor(
                    label="Segmentation map", type="pil", image_mode="RGB", format="png", sources=["upload", "clipboard"],
                    brush=gr.Brush(colors=list(PALETTE_HEX), default_color=PALETTE_HEX[13], color_mode="fixed"),
                    layers=False, transforms=(), canvas_size=(MAP_DISPLAY_SIZE, MAP_DISPLAY_SIZE), height=520,
                    elem_id="segmentation-editor",
                ), lambda v: [] if v is None else [v.background, v.composite, *(v.layers or [])],
                   "Bad segmentation map", max_files=2 + EDITOR_MAX_LAYERS, max_pixels=EDITOR_MAX_PIXELS))
                maps = sorted(str(p) for p in (EXAMPLES / "maps").glob("*.png"))
                if maps:
                    gr.Examples(maps, inputs=[editor], label="Example maps (synthetic heads)")
            with gr.Column(scale=3, min_width=320):
                style_source = gr.Radio([STYLE_TEXT, STYLE_IMAGE], value=STYLE_TEXT, label="Style from")
                style_prompt = gr.Textbox(label="Style prompt", placeholder="e.g. long blonde hair, glasses",
                                          elem_id="style-prompt")
                style_image = photo_input("Style reference image", "style-image", height=200, visible=False)
                with gr.Accordion("Options", open=False):
                    snap = gr.Checkbox(False, label="Snap foreign colours to the nearest class colour",
                                       info="instead of an error (e.g. for maps saved as JPEG)")
                    edit_frames = frames_input()
                edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                ply, viewer, summary, timings, lower = output_panel("edit-")
        video, views, model_input, downloads = lower()
    style_source.change(switch_style, style_source, [style_prompt, style_image], api_name=False, queue=False)
    run_button(segment_button, "Get segmentation map", segment_button.click, segment,
               [photo, seg_remove_background, seg_auto_crop, seg_whole_image, seg_source], [parsed, editor, segment_notes],
               "segment", parsed)
    run_button(edit_button, "Edit", edit_button.click, edit, [editor, style_prompt, style_image, snap, edit_frames],
               [ply, viewer, video, views, model_input, downloads, timings, summary], "edit", summary)
    return tab



# ------------------------------------------------------------------------------------------------- video
def build_video_tab(holder: ModelHolder, jobs: JobRunner) -> gr.Tab:
    """The Video tab: a short clip → one 3D head per frame (paper Fig. 4). Endpoint ``/reconstruct_video``."""
    from perchead.pipelines.sequence import SequenceConfig

    limits = SequenceConfig()

    @gpu_task
    def video_heads(job, video: str, face: int, options: dict):
        from perchead.pipelines.sequence import SequencePipeline

        out = SequencePipeline(holder.get(), limits)(video, job.folder, face_index=face,
                                                      progress=job.reporter(), **options)
        seconds = out.timings["total"]
        line = (f"**{out.frames} heads in {seconds:.1f} s** ({out.frames / max(seconds, 1e-6):.1f} frames per "
                f"second) · {out.fps:g} frames per second of the clip")
        summary = "\n".join([line, *(f"- {note}" for note in out.notes)])
        return str(out.video), str(out.heads), {k: round(v, 3) for k, v in out.timings.items()}, summary

    async def reconstruct_video(video: str | None, face_index: int = 0, remove_background: bool = True,
                                use_whole_image: bool = False, request: gr.Request = None,
                                progress: gr.Progress = gr.Progress()):
        """Reconstructs a 3D head in every frame of a short video (the same face followed through the clip).

        Args:
            video: the clip (MP4, MOV, WebM, MKV or AVI; at most 10 s; 10 frames per second are used).
            face_index: which face to follow when the video shows several (0 = the largest in the first frame
                with faces).
            remove_background: cut the head out of the background.
            use_whole_image: when no frame shows a face, use the whole frames instead of failing.

        Returns:
            side_by_side: the .mp4: the model input | the head from a slowly swinging camera (first output).
            heads: a .zip with one 3DGS .ply per frame (frame_0000.ply, …; +Y up, face toward +Z, metres).
            timings: seconds per stage.
            summary: the timings in words and remarks (frames used, faces found, fallbacks).
        """
        from perchead.photo.load import PreprocessError
        from perchead.pipelines.sequence import ClipError, probe_clip

        if not video:
            raise visitor_error(f"Please upload a short video (up to {limits.max_seconds:g} s) first.", "No video")
        face = check_count(face_index, "face_index", 0, 99)
        options = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("use_whole_image", use_whole_image))}

        try:  # the upload was checked already; its length (0 when the header lacks it) sizes the GPU request
            seconds = probe_clip(video, limits)["duration"] or limits.max_seconds
        except ClipError as error:
            raise visitor_error(f"Bad video: {error}", "Unusable video") from None
        frames = math.ceil(min(seconds, limits.max_seconds) * limits.fps)
        return await jobs.run(request, "video reconstruction", video_heads,
                              (ClipError, PreprocessError, EmptyMaskError), args=(video, face, options),
                              progress=progress, duration=gpu_seconds(video_frames=frames))

    with gr.Tab("Video", elem_id="video-tab") as tab:
        gr.Markdown(f"A short clip (up to {limits.max_seconds:g} s) → **one 3D head per frame**, the same face "
                    "followed through the clip and its framing steadied over time. You get the model's input beside "
                    "the head seen from a slowly swinging camera, and every head as a `.ply`.")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                clip = guard_video(gr.Video(label=f"Video (up to {limits.max_seconds:g} s)", sources=["upload"],
                                            include_audio=True, height=300, elem_id="video-input"))
                button = gr.Button("Reconstruct every frame", variant="primary", elem_id="video-button")
                with gr.Accordion("Options", open=False):
                    face_index = guard_value(gr.Number(0, label="Face", precision=0, minimum=0, maximum=99,
                                                       info="when the video shows several: 0 = the largest, 1 = "
                                                            "the next, … (in the first frame with faces)"),
                                             "face_index", "a whole number from 0 to 99", whole=(0, 99))
                    remove_background = gr.Checkbox(True, label="Remove background")
                    use_whole_image = gr.Checkbox(False, label="Use the whole frames when no face is found")
            with gr.Column(scale=3, min_width=320):
                result = gr.Video(label="Input | 3D head", autoplay=True, loop=True, height=300, interactive=False,
                                  elem_id="video-result")
                summary = gr.Markdown("The heads appear here, beside the frames they came from.", elem_id="video-summary")
                heads = gr.File(label="Heads: one .ply per frame (zip)", interactive=False, elem_id="video-heads")
                timings = gr.JSON(visible=False)  # seconds per stage, for API clients
    run_button(button, "Reconstruct every frame", button.click, reconstruct_video,
               [clip, face_index, remove_background, use_whole_image], [result, heads, timings, summary],
               "reconstruct_video", summary)
    return tab


# ------------------------------------------------------------------------------------ inside the model
LAYER_VIEW_SIZE = 256  # side of each view in the decoder-layer strip
INSIDE_INTRO = (
    "The 3D decoder lifts the photo's 2D features into one token per patch of the template head, one layer at "
    "a time, by cross-attention (paper §3.2). Column *k* is the head the model gives when only layers 1 … *k* "
    "may look at the photo: the later layers still run, without it (supplement §7). What changes from one "
    "column to the next is what that layer read from the photo; the last column is the head above."
)


def build_inside_panel(holder: ModelHolder, jobs: JobRunner, portrait: gr.Image, options: list) -> None:
    """The "Inside the model" accordion under the reconstruction: the head after each decoder layer, for the
    current portrait and options (``options``: remove_background, auto_crop, use_whole_image, face_index).
    Endpoint ``/decoder_layers``."""

    @gpu_task
    def layer_heads(job, image: str, flags: dict):
        from PIL import Image

        from perchead.geometry.gaussians import save_ply

        layers = holder.get().decoder_layers(image, size=LAYER_VIEW_SIZE, progress=job.reporter(), **flags)
        start = time.perf_counter()
        strip = job.folder / "decoder_layers.png"
        Image.fromarray(layers.strip()).save(strip)
        gallery, files = [], [str(strip)]
        for k, (column, caption) in enumerate(zip(layers.columns(), layers.column_captions()), start=1):
            job.check()
            Image.fromarray(column).save(job.folder / f"layer_{k}.png")
            gallery.append((str(job.folder / f"layer_{k}.png"), caption))
            save_ply(layers.gaussians[k - 1][0], job.folder / f"layer_{k}.ply")
            files.append(str(job.folder / f"layer_{k}.ply"))
        timings = {**layers.timings, "export": time.perf_counter() - start}
        line = (f"**{layers.n_layers} decoder layers in {layers.timings['total']:.1f} s** (files in "
                f"{timings['export']:.1f} s) · top: {layers.view_captions[0]}, bottom: {layers.view_captions[1]}")
        summary = "\n".join([line, *(f"- {note}" for note in layers.notes)])
        return str(strip), gallery, files, {k: round(v, 3) for k, v in timings.items()}, summary

    async def decoder_layers(image: str | None, remove_background: bool = True, auto_crop: bool = True,
                             use_whole_image: bool = False, face_index: int = 0, request: gr.Request = None,
                             progress: gr.Progress = gr.Progress()):
        """Shows what each layer of the 3D decoder adds: the head rendered with cross-attention to the photo
        switched on in decoder layers 1 … k only, for k = 1 … L (PercHead supplement §7).

        Args:
            image: the portrait (PNG/JPEG/WebP...; an RGBA alpha channel is used as the head mask).
            remove_background: cut the head out of the background.
            auto_crop: find the face and crop to the model's framing; off uses the whole image padded square.
            use_whole_image: when no face is found, use the whole image instead of failing.
            face_index: which face to use when the photo shows several (0 = the largest).

        Returns:
            strip: one PNG, a column per decoder layer (front above ¾ left), the last column being the
                normal model's head (first output).
            layers: the columns one by one, captioned "layer k of L".
            heads: the strip and each layer's head as a 3DGS .ply (layer_1.ply … layer_L.ply).
            timings: seconds per stage.
            summary: the timings in words and remarks.
        """
        from perchead.photo.load import PreprocessError

        if not image:
            raise visitor_error("Please upload a portrait (or pick an example) first.", "No image")
        flags = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("auto_crop", auto_crop), ("use_whole_image", use_whole_image))}
        flags["face_index"] = check_count(face_index, "face_index", 0, 99)

        return await jobs.run(request, "decoder visualisation", layer_heads, (PreprocessError, EmptyMaskError),
                              args=(image, flags), progress=progress, duration=gpu_seconds())

    with gr.Accordion("Inside the model: what each decoder layer adds", open=False, elem_id="inside-panel"):
        gr.Markdown(INSIDE_INTRO)
        button = gr.Button("Show the decoder layers for this photo", elem_id="inside-button")
        strip = gr.File(visible=False, elem_id="inside-strip")  # the whole strip as one PNG: the API's first output
        gallery = gr.Gallery(label="The head after each decoder layer (top: front, bottom: ¾ left)", columns=4,
                             height=340, object_fit="contain", elem_id="inside-layers")
        summary = gr.Markdown("Press the button to see the head after each layer.", elem_id="inside-summary")
        heads = gr.File(label="Each layer's head (.ply) and the strip (.png)", file_count="multiple",
                        interactive=False, elem_id="inside-downloads")
        timings = gr.JSON(visible=False)  # seconds per stage, for API clients
    run_button(button, "Show the decoder layers for this photo", button.click, decoder_layers, [portrait, *options],
               [strip, gallery, heads, timings, summary], "decoder_layers", summary)


# ------------------------------------------------------------------------------------------ reconstruction
def build_demo(holder: ModelHolder, edit_holder: EditHolder | None = None, jobs: JobRunner | None = None) -> gr.Blocks:
    """The Gradio UI: the Reconstruction tab (``holder`` supplies the model) and, when ``edit_holder`` has
    its checkpoints, the Editing tab (hidden until they have loaded). ``jobs`` runs the model jobs (default:
    one at a time, outputs under Gradio's cache folder)."""
    jobs = jobs or JobRunner(OutputStore(Path(get_upload_folder()) / "perchead"))

    @gpu_task
    def photo_head(job, image: str, options: dict, fit: int, frames: int, fit_config):
        from perchead.export import write_outputs

        pipeline = holder.get()
        report = job.reporter()
        model_input = str(job.folder / "model_input.png")
        notice = [holder.notice] if holder.notice else []

        def show_before_fit(first):  # the feed-forward head at once; the fitted one replaces it
            first.preprocessed[0].preview().save(model_input)
            early = write_outputs(pipeline.model, first.gaussians, job.folder / "before_fit", turntable_frames=0,
                                  view_size=0, formats=("ply",), timings=first.timings, notes=notice + first.notes)
            job.publish(result(early, model_input, early.notes, "fitting the head to the photo…"))

        rec = pipeline(image, progress=report, fit_steps=fit, fit=fit_config,
                       before_fit=show_before_fit, **options)
        rec.preprocessed[0].preview().save(model_input)
        out = write_outputs(pipeline.model, rec.gaussians, job.folder, turntable_frames=frames, progress=report,
                            timings=rec.timings, notes=notice + rec.notes,
                            before_turntable=lambda part: job.publish(
                                result(part, model_input, part.notes, "the turntable video is on its way…")))
        return result(out, model_input, out.notes)

    async def reconstruct(image: str | None, remove_background: bool = True, auto_crop: bool = True,
                          use_whole_image: bool = False, turntable_frames: int = DEFAULT_FRAMES, face_index: int = 0,
                          fit_steps: int = DEFAULT_FIT_STEPS, real_person: bool = True, request: gr.Request = None,
                          progress: gr.Progress = gr.Progress()):
        """Reconstructs a 3D head (Gaussian splats) from one portrait.

        Args:
            image: the portrait (PNG/JPEG/WebP...; an RGBA alpha channel is used as the head mask).
            remove_background: cut the head out of the background.
            auto_crop: find the face and crop to the model's framing; off uses the whole image padded square.
            use_whole_image: when no face is found, use the whole image instead of failing.
            turntable_frames: frames of the 360° turntable video at 15 fps (0 = no video).
            face_index: which face to use when the photo shows several (0 = the largest).
            fit_steps: photo-fit steps that refine the head's Gaussians against the photo so it looks more
                like the person, after the fit's latent stage asks the network itself for a closer head (0 =
                off; a few seconds on a CPU).
            real_person: the photo shows a real person (off for renders of the synthetic heads the demo model
                learned from): the fit then uses ``FitConfig.preset("real")`` — the camera 17° higher (the
                synthetic heads' landmark layout reads real faces that much too low), the face mesh's depth
                profile, the latent stage's silhouette prior, a 256² photo and a quarter of the face's
                Gaussians split (docs/photo-fit.md, "The real-photo preset").

        Returns:
            ply: the Gaussians as a 3DGS .ply file (first output; +Y up, face toward +Z, metres).
            viewer: a .splat copy turned and enlarged for web splat viewers (what the page shows).
            turntable: the turntable .mp4 (or None).
            views: fixed views (front, ¾ left/right, profiles, back, top).
            model_input: the preprocessed input (crop over white | mask).
            downloads: the .ply, .splat and .glb files.
            timings: seconds per stage.
            summary: the timings in words and remarks (faces found, fallbacks, downscaling).
        """
        from perchead.fit.config import FitConfig
        from perchead.photo.load import PreprocessError

        if not image:
            raise visitor_error("Please upload a portrait (or pick an example) first.", "No image")
        options = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("auto_crop", auto_crop), ("use_whole_image", use_whole_image))}
        options["face_index"] = check_count(face_index, "face_index", 0, 99)
        fit = check_count(fit_steps, "fit_steps", 0, MAX_FIT_STEPS)
        frames = check_count(turntable_frames, "turntable_frames", 0, MAX_FRAMES)
        fit_config = FitConfig.preset("real" if check_flag(real_person, "real_person") else "fast")

        async with aclosing(jobs.stream(request, "reconstruction", photo_head, (PreprocessError, EmptyMaskError),
                                        args=(image, options, fit, frames, fit_config), progress=progress,
                                        duration=gpu_seconds(fit_steps=fit, turntable_frames=frames))) as stream:
            async for outputs in stream:  # Gradio closing this handler (stop pressed) closes the stream: the job stops
                yield outputs

    with gr.Blocks(title="PercHead — 3D head from one photo", delete_cache=(600, jobs.store.max_age_s)) as demo:
        gr.Markdown("# PercHead — a 3D head from one photo\nUpload a portrait or pick an example: the head is cut "
                    "out, lifted to 3D Gaussian splats, and shown in 3D, as a turntable and as downloads.")
        gr.Markdown(EXPECT)
        status = gr.Markdown("Loading the model…", elem_id="status")
        with gr.Tab("Reconstruction"):
            with gr.Row():
                with gr.Column(scale=2, min_width=280):
                    image = photo_input("Portrait", "portrait")
                    run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct-button")
                    with gr.Accordion("Options", open=False):
                        remove_background = gr.Checkbox(True, label="Remove background")
                        auto_crop = gr.Checkbox(True, label="Auto-crop around the head",
                                                info="crop to the framing the model was trained on")
                        use_whole_image = gr.Checkbox(False, label="Use the whole image when no face is found")
                        face_index = guard_value(gr.Number(0, label="Face", precision=0, minimum=0, maximum=99,
                                                           info="when the photo shows several: 0 = the largest, "
                                                                "1 = the next, …"),
                                                 "face_index", "a whole number from 0 to 99", whole=(0, 99))
                        turntable_frames = frames_input()
                        fit_steps = guard_value(
                            gr.Slider(0, MAX_FIT_STEPS, value=DEFAULT_FIT_STEPS, step=10, label="Fit to the photo (steps)",
                                      info="refines the head against your photo so it looks more like you; 0 = off"),
                            "fit_steps", f"a whole number from 0 to {MAX_FIT_STEPS}")
                        real_person = gr.Checkbox(True, label="Photo of a real person",
                                                  info="off for renders of synthetic heads: a real face gets "
                                                       "the real-photo fit (its camera height, the face's depth "
                                                       "from the face mesh, a finer photo)")
                    photos = sorted(str(p) for p in EXAMPLES.glob("photo_*.jpg"))
                    if photos:
                        gr.Examples([[p, True] for p in photos], inputs=[image, real_person], visible_columns=[0],
                                    label="Photos (public domain: Eileen Collins, NASA; Grace Hopper, US Navy)")
                    synthetic = sorted(str(p) for p in EXAMPLES.glob("head*.png"))
                    if synthetic:
                        gr.Examples([[p, False] for p in synthetic], inputs=[image, real_person], visible_columns=[0],
                                    label="Synthetic heads (what the demo model learned from)")
                with gr.Column(scale=3, min_width=320):
                    ply, viewer, summary, timings, lower = output_panel()
            video, views, model_input, downloads = lower()
            build_inside_panel(holder, jobs, image, [remove_background, auto_crop, use_whole_image, face_index])
        run_button(run, "Reconstruct", run.click, reconstruct,
                   [image, remove_background, auto_crop, use_whole_image, turntable_frames, face_index, fit_steps,
                    real_person],
                   [ply, viewer, video, views, model_input, downloads, timings, summary], "reconstruct", summary)
        build_video_tab(holder, jobs)
        edit_tab = build_edit_tab(edit_holder, jobs) if edit_holder is not None and edit_holder.available else None

        def page_status():
            text = holder.status_markdown()
            if edit_holder is None:
                return text
            text = f"{text} {edit_holder.status_line()}"
            return text if edit_tab is None else (text, gr.Tab(visible=edit_holder.ready()))

        demo.load(page_status, outputs=status if edit_tab is None else [status, edit_tab], api_name=False, queue=False)

        def end_session(request: gr.Request) -> None:
            """The page was closed: stop its running job and delete its outputs."""
            jobs.cancel_session(session_key(request))

        demo.unload(end_session)
    return demo


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("PERCHEAD_MODEL") or None,
                        help="Hub repo id or local folder (default: PERCHEAD_MODEL, else the bundled weights_card/)")
    parser.add_argument("--edit-model", default=os.environ.get("PERCHEAD_EDIT_MODEL") or str(BUNDLED),
                        help="Hub repo id or folder with the editing checkpoints edit/, style/ and parser/ (default: "
                             "PERCHEAD_EDIT_MODEL, else the bundled weights_card/); 'none' disables the Editing tab")
    parser.add_argument("--revision", default=os.environ.get("PERCHEAD_REVISION") or None,
                        help="Hub branch, tag or commit of --model and --edit-model (default: PERCHEAD_REVISION, "
                             "else main)")
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
    holder = ModelHolder(args.model, args.device, args.revision).start()
    edit_holder = load_edit_holder(args.edit_model, args.device, args.revision)
    store = OutputStore(Path(get_upload_folder()) / "perchead", uploads=get_upload_folder())
    demo = build_demo(holder, edit_holder, JobRunner(store))
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE, api_open=False)  # model jobs: queue only
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
                show_error=False, css=CSS, app_kwargs=guarded_app_kwargs(store))


if __name__ == "__main__":
    main()
