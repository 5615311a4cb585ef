"""The Space's page: the texts, the inputs and outputs the tabs share, and one builder per tab, which lays the
tab out and wires its buttons to an endpoint of ``app.py`` (``api``: its ``Endpoints``). Also the limits and defaults
the page's sliders and the endpoints share. Nothing here runs a model.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from perchead.geometry.segmentation import PALETTE_HEX, legend_html
from perchead.pipelines.edit import MAP_SOURCES
from perchead.pipelines.sequence import SequenceConfig

from serving import (
    EDITOR_MAX_LAYERS, EDITOR_MAX_PIXELS, guard_choice, guard_editor_blobs, guard_uploads, guard_value, guard_video,
)  # fmt: skip

EXAMPLES = Path(__file__).resolve().parent / "examples"
CONCURRENCY = 1  # model jobs at a time (the models share the device; CPUs are few)
MODEL_QUEUE = "model"  # one concurrency group for /segment, /edit and /reconstruct
MAX_FRAMES = 120  # longest turntable
DEFAULT_FRAMES = 72  # 4.8 s per turn at 15 fps
DEFAULT_FIT_STEPS = 40  # the photo-fit's "fast" preset: a few seconds on 2 CPU cores
MAX_FIT_STEPS = 200  # a longer fit would hold the one model slot for minutes
MAP_DISPLAY_SIZE = 512  # parsed maps are shown (and painted) at this side; labels go back to the model size
CLIP_LIMITS = SequenceConfig()  # the Video tab's clip: at most 10 s, 10 frames per second used
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
INSIDE_INTRO = (
    "The 3D decoder lifts the photo's 2D features into one token per patch of the template head, one layer at "
    "a time, by cross-attention (paper §3.2). Column *k* is the head the model gives when only layers 1 … *k* "
    "may look at the photo: the later layers still run, without it (supplement §7). What changes from one "
    "column to the next is what that layer read from the photo; the last column is the head above."
)
CSS = """
#splat-viewer canvas, #edit-splat-viewer canvas { background: #ffffff !important; }
#downloads .label-clear-button, #edit-downloads .label-clear-button, #inside-downloads .label-clear-button { display: none; }
"""  # the splat viewer ignores clear_color (its canvas is transparent over a dark box); results are not removable


# ------------------------------------------------------------------------------------ shared inputs and outputs
def photo_input(label: str, elem_id: str, height: int = 300, visible: bool = True) -> gr.Image:
    """A photo input (upload, webcam, clipboard) that refuses unusable files before any job starts."""
    return guard_uploads(gr.Image(label=label, type="filepath", sources=["upload", "webcam", "clipboard"],
                                  image_mode=None, height=height, visible=visible, elem_id=elem_id),
                         lambda payload: [payload], "Bad input")


def frames_input() -> gr.Slider:
    """The turntable length slider (``turntable_frames``)."""
    return guard_value(gr.Slider(0, MAX_FRAMES, value=DEFAULT_FRAMES, step=12, label="Turntable length (frames)",
                                 info="15 frames per second; 0 = no video"),
                       "turntable_frames", f"a whole number from 0 to {MAX_FRAMES}")


def face_input(info: str) -> gr.Number:
    """Which face to use (``face_index``, 0 = the largest); ``info`` says it for a photo or a video."""
    return guard_value(gr.Number(0, label="Face", precision=0, minimum=0, maximum=99, info=info),
                       "face_index", "a whole number from 0 to 99", whole=(0, 99))


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


def run_button(button: gr.Button, label: str, event, handler, inputs, outputs, api_name: str, progress_on):
    """``button`` starts ``handler`` (one queue for every model job), greyed out with "Working…" meanwhile."""
    busy = event(lambda: gr.Button(value="Working…", interactive=False), None, button, queue=False, api_name=False)
    job = busy.then(handler, inputs, outputs, api_name=api_name, concurrency_limit=CONCURRENCY,
                    concurrency_id=MODEL_QUEUE, show_progress_on=progress_on)
    for after in (job.success, job.failure):  # the page runs a .then only after a success; a refused input fails
        after(lambda: gr.Button(value=label, interactive=True), None, button, queue=False, api_name=False)


# ------------------------------------------------------------------------------------------------ tabs
def build_reconstruction_tab(api) -> None:
    """The Reconstruction tab (``/reconstruct``) with the "Inside the model" panel under its results."""
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
                    face_index = face_input("when the photo shows several: 0 = the largest, 1 = the next, …")
                    turntable_frames = frames_input()
                    fit_steps = guard_value(
                        gr.Slider(0, MAX_FIT_STEPS, value=DEFAULT_FIT_STEPS, step=10, label="Fit to the photo (steps)",
                                  info="refines the head against your photo so it looks more like you; 0 = off"),
                        "fit_steps", f"a whole number from 0 to {MAX_FIT_STEPS}")
                    real_person = gr.Checkbox(True, label="Photo of a real person",
                                              info="off for renders of synthetic heads: a real face gets the "
                                                   "real-photo fit (its camera height, the face's depth from the "
                                                   "face mesh, a finer photo)")
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
        build_inside_panel(api, image, [remove_background, auto_crop, use_whole_image, face_index])
    run_button(run, "Reconstruct", run.click, api.reconstruct,
               [image, remove_background, auto_crop, use_whole_image, turntable_frames, face_index, fit_steps,
                real_person],
               [ply, viewer, video, views, model_input, downloads, timings, summary], "reconstruct", summary)


def build_inside_panel(api, portrait: gr.Image, options: list) -> None:
    """The "Inside the model" accordion under the reconstruction: the head after each decoder layer, for the
    current portrait and options (``options``: remove_background, auto_crop, use_whole_image, face_index).
    Endpoint ``/decoder_layers``."""
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
    run_button(button, "Show the decoder layers for this photo", button.click, api.decoder_layers, [portrait, *options],
               [strip, gallery, heads, timings, summary], "decoder_layers", summary)


def build_video_tab(api) -> gr.Tab:
    """The Video tab: a short clip → one 3D head per frame (paper Fig. 4). Endpoint ``/reconstruct_video``."""
    with gr.Tab("Video", elem_id="video-tab") as tab:
        gr.Markdown(f"A short clip (up to {CLIP_LIMITS.max_seconds:g} s) → **one 3D head per frame**, the same face "
                    "followed through the clip and its framing steadied over time. You get the model's input beside "
                    "the head seen from a slowly swinging camera, and every head as a `.ply`.")
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                clip = guard_video(gr.Video(label=f"Video (up to {CLIP_LIMITS.max_seconds:g} s)", sources=["upload"],
                                            include_audio=True, height=300, elem_id="video-input"))
                button = gr.Button("Reconstruct every frame", variant="primary", elem_id="video-button")
                with gr.Accordion("Options", open=False):
                    face_index = face_input("when the video shows several: 0 = the largest, 1 = the next, … (in "
                                            "the first frame with faces)")
                    remove_background = gr.Checkbox(True, label="Remove background")
                    use_whole_image = gr.Checkbox(False, label="Use the whole frames when no face is found")
            with gr.Column(scale=3, min_width=320):
                side_by_side = gr.Video(label="Input | 3D head", autoplay=True, loop=True, height=300,
                                        interactive=False, elem_id="video-result")
                summary = gr.Markdown("The heads appear here, beside the frames they came from.", elem_id="video-summary")
                heads = gr.File(label="Heads: one .ply per frame (zip)", interactive=False, elem_id="video-heads")
                timings = gr.JSON(visible=False)  # seconds per stage, for API clients
    run_button(button, "Reconstruct every frame", button.click, api.reconstruct_video,
               [clip, face_index, remove_background, use_whole_image], [side_by_side, heads, timings, summary],
               "reconstruct_video", summary)
    return tab


def build_edit_tab(api) -> gr.Tab:
    """The Editing tab, hidden until the editing models have loaded. Endpoints ``/segment`` and ``/edit``."""
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

    def switch_style(source: str):
        if source == STYLE_TEXT:
            return gr.Textbox(visible=True), gr.Image(visible=False, value=None)
        return gr.Textbox(visible=False, value=""), gr.Image(visible=True)

    style_source.change(switch_style, style_source, [style_prompt, style_image], api_name=False, queue=False)
    run_button(segment_button, "Get segmentation map", segment_button.click, api.segment,
               [photo, seg_remove_background, seg_auto_crop, seg_whole_image, seg_source], [parsed, editor, segment_notes],
               "segment", parsed)
    run_button(edit_button, "Edit", edit_button.click, api.edit, [editor, style_prompt, style_image, snap, edit_frames],
               [ply, viewer, video, views, model_input, downloads, timings, summary], "edit", summary)
    return tab
