"""PercHead Space: one portrait → a 3D head as Gaussian splats (paper §3, Figure 1), and 3D editing (§3.5).

This file only builds the UI and calls one pipeline per task (``perchead.pipelines``: ``PercHeadPipeline``
for /reconstruct, ``PercHeadEditPipeline`` for /segment and /edit, ``write_outputs`` for the files);
``serving.py`` loads the models and runs each job safely (see docs/app.md, "Limits and safety").

    python app.py                          # bundled weights_card/, http://127.0.0.1:7860
    python app.py --model user/perchead    # a Hub repo id or a local folder (also: PERCHEAD_MODEL=...)
    python app.py --host 0.0.0.0 --port 7861
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from serving import (
    BUNDLED, EditHolder, JobRunner, ModelHolder, OutputStore, check_count, check_flag, load_edit_holder, session_key,
    visitor_error,
)  # fmt: skip

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
MAX_FILE_SIZE = "32mb"  # uploads above this are refused by the server
QUEUE_SIZE = 32  # requests waiting at once; more are refused with "queue is full"
CONCURRENCY = 1  # model jobs at a time (the models share the device; CPUs are few)
MODEL_QUEUE = "model"  # one concurrency group for /segment, /edit and /reconstruct
MAX_FRAMES = 120  # longest turntable
log = logging.getLogger("perchead.app")


# --------------------------------------------------------------------------------------------- handlers
def _guard(component, files_of, what: str):
    """Makes an input component refuse unreadable uploads (empty, corrupt, non-image, bomb) with a clear message.

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
                    log.info("upload refused (%s): %s", what, error)
                    raise visitor_error(f"{what}: {error}", "Unusable image") from None
        try:
            return gradio_preprocess(payload)
        except Exception as error:  # anything PIL could not open
            log.info("upload refused (%s): %s", what, type(error).__name__)
            raise visitor_error(f"{what}: the file cannot be read as an image; please upload a PNG, JPEG or "
                                "WebP photo.", "Unusable image") from None

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


def guard_value(component, name: str, expected: str):
    """Makes an input refuse values Gradio cannot convert (e.g. text for a slider) with a message naming it."""
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        try:
            return gradio_preprocess(payload)
        except Exception:
            log.info("parameter refused: %s = %.40r", name, payload)
            raise visitor_error(f"{name} must be {expected}, got {str(payload)[:40]!r}.", "Bad parameter") from None

    component.preprocess = preprocess
    return component


def reporter(job, progress: gr.Progress):
    """The pipelines' ``progress(fraction, stage)`` callback: checks for cancellation, then shows the stage."""

    def report(fraction: float, stage: str) -> None:
        job.check()
        progress(fraction, desc=stage)

    return report


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


def result_tuple(out, model_input, notes: list[str], folder: Path) -> tuple:
    """The handlers' 7 outputs from :class:`perchead.pipelines.outputs.Outputs`: .ply first (both tabs, API order).

    ``model_input`` (a PIL image) is written into the job's ``folder`` like every other output, so one
    clean-up policy covers it and Gradio serves it without another copy.
    """
    model_input.save(folder / "model_input.png")
    return (
        str(out.files["ply"]),
        str(out.video) if out.video else None,
        [(str(path), caption) for caption, path in out.views],
        str(folder / "model_input.png"),
        [str(path) for path in out.files.values()],
        {k: round(v, 3) for k, v in out.timings.items()},
        "\n".join(f"- {note}" for note in notes) or "Done.",
    )


MAP_DISPLAY_SIZE = 512  # parsed maps are shown (and painted) at this side; labels go back to the model size
STYLE_TEXT, STYLE_IMAGE = "Text prompt", "Reference image"


def build_edit_tab(edit_holder: EditHolder, jobs: JobRunner) -> gr.Tab:
    """The Editing tab (paper §3.5, supplement §8), built inside the current Blocks; hidden until the editing
    models have loaded. Endpoints ``/segment`` and ``/edit``; ``jobs`` runs them."""
    from perchead.geometry.segmentation import PALETTE_HEX, labels_to_color, legend_html

    async def segment(
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
        from PIL import Image

        from perchead.preprocess import PreprocessError
        from perchead.geometry.segmentation import resize_labels

        if not photo:
            raise visitor_error("Please upload a photo to parse first.", "No image")
        options = dict(remove_background=check_flag(remove_background, "remove_background"),
                       auto_crop=check_flag(auto_crop, "auto_crop"),
                       use_whole_image=check_flag(use_whole_image, "use_whole_image"))

        def work(job):
            pipeline = edit_holder.get()
            start = time.perf_counter()
            labels, prep = pipeline.segment(photo, return_preprocessed=True, **options)
            seconds = time.perf_counter() - start
            path = job.folder / "segmentation.png"
            Image.fromarray(labels_to_color(resize_labels(labels, MAP_DISPLAY_SIZE))).save(path)
            notes = [f"parsed in {seconds:.2f} s ({labels.shape[-1]}² map, shown at {MAP_DISPLAY_SIZE}²)", *prep.notes]
            if not (labels != 0).any():
                notes.append("the parser found no head (all background): paint one, or try another photo")
            return str(path), str(path), "\n".join(f"- {note}" for note in notes)

        return await jobs.run(request, "segmentation", work, (PreprocessError,))

    async def edit(
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

        from perchead.pipelines.edit import PercHeadEditPipeline
        from perchead.pipelines.outputs import write_outputs
        from perchead.preprocess import PreprocessError, to_uint8

        has_map = isinstance(segmentation_map, dict) and (
            segmentation_map.get("composite") is not None or segmentation_map.get("background") is not None)
        if not has_map:
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

        def work(job):
            pipeline = edit_holder.get()
            report = reporter(job, progress)
            try:
                labels, map_notes = pipeline.labels_from_color(segmentation_map, snap=snap, return_notes=True)
            except ValueError as error:
                hint = "" if snap else " (or tick 'Snap foreign colours to the nearest class colour')"
                raise ValueError(f"Bad segmentation map: {error}{hint}") from None
            try:
                result = pipeline(labels, style_prompt or None, style_image or None, progress=report)
            except PreprocessError as error:  # only the style image is a photo here
                raise PreprocessError(f"Bad style image: {error}") from None
            out = write_outputs(pipeline.editor, result.gaussians, job.folder, turntable_frames=frames,
                                progress=report, timings=result.timings, notes=map_notes + result.notes)
            seen = labels_to_color(result.labels[0])  # [S, S, 3]
            if result.style_input is not None:
                seen = np.concatenate([seen, to_uint8(result.style_input.image[0])], axis=1)  # [S, 2S, 3]
            style_note = f"style from the {result.style_source}" + (f": “{style_prompt}”" if style_prompt else "")
            return result_tuple(out, Image.fromarray(seen), [style_note, *out.notes], job.folder)

        return await jobs.run(request, "editing", work, (PreprocessError, ValueError))

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
                edit_frames = guard_value(
                    gr.Slider(0, MAX_FRAMES, value=60, step=12, label="Turntable length (frames, 0 = none)",
                              info="30 fps, 512²"),
                    "turntable_frames", f"a whole number from 0 to {MAX_FRAMES}",
                )  # fmt: skip
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


def build_demo(holder: ModelHolder, edit_holder: EditHolder | None = None, jobs: JobRunner | None = None) -> gr.Blocks:
    """The Gradio UI: the Reconstruction tab (``holder`` supplies the model) and, when ``edit_holder`` has
    its checkpoints, the Editing tab (hidden until they have loaded). ``jobs`` runs the model jobs (default:
    one at a time, outputs under Gradio's cache folder)."""
    jobs = jobs or JobRunner(OutputStore(Path(get_upload_folder()) / "perchead"))
    store = jobs.store

    async def reconstruct(
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
        from perchead.pipelines.outputs import write_outputs
        from perchead.preprocess import PreprocessError

        if not image:
            raise visitor_error("Please upload a portrait (or pick an example) first.", "No image")
        options = dict(remove_background=check_flag(remove_background, "remove_background"),
                       auto_crop=check_flag(auto_crop, "auto_crop"),
                       use_whole_image=check_flag(use_whole_image, "use_whole_image"))
        frames = check_count(turntable_frames, "turntable_frames", 0, MAX_FRAMES)

        def work(job):
            pipeline = holder.get()
            report = reporter(job, progress)
            rec = pipeline(image, progress=report, **options)
            out = write_outputs(pipeline.model, rec.gaussians, job.folder, turntable_frames=frames, progress=report,
                                timings=rec.timings, notes=([holder.notice] if holder.notice else []) + rec.notes)
            return result_tuple(out, rec.preprocessed[0].preview(), out.notes, job.folder)

        return await jobs.run(request, "reconstruction", work, (PreprocessError,))

    with gr.Blocks(title="PercHead — 3D head from one photo", delete_cache=(600, store.max_age_s)) as demo:
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
                        turntable_frames = guard_value(
                            gr.Slider(0, MAX_FRAMES, value=60, step=12, label="Turntable length (frames, 0 = none)",
                                      info="30 fps, 512²"),
                            "turntable_frames", f"a whole number from 0 to {MAX_FRAMES}",
                        )  # fmt: skip
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
            edit_tab = build_edit_tab(edit_holder, jobs)

        def page_status():
            text = holder.status_markdown()
            if edit_holder is None:
                return text
            text = f"{text}\n\n{edit_holder.status_line()}"
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
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
        show_error=False,
    )  # fmt: skip


if __name__ == "__main__":
    main()
