"""PercHead Space: one portrait → a 3D head as Gaussian splats (paper §3, Figure 1), and 3D editing (§3.5).

This file is the Space's API and the frame of its page, read top to bottom: the endpoints (``Endpoints``, one
method per API route, each calling one pipeline per task: ``PercHeadPipeline`` for /reconstruct and
/decoder_layers, ``SequencePipeline`` for /reconstruct_video, ``PercHeadEditPipeline`` for /segment and /edit,
``write_outputs`` for the files, each job's work a method registered with ``serving.gpu_task`` so that it can
run in a ZeroGPU worker), then ``build_demo``, which lays out the page from one builder per tab
(``layout.py``), then ``main``. Beside it: ``results.py`` turns a pipeline's result into the endpoint's outputs,
``serving.py`` loads the models and runs each job safely (see docs/app.md, "Limits and safety").

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

from perchead.export import write_outputs
from perchead.fit.config import FitConfig
from perchead.models.lift_encoder import EmptyMaskError
from perchead.photo.load import PreprocessError
from perchead.pipelines import PercHeadEditPipeline
from perchead.pipelines.edit import MAP_SOURCES
from perchead.pipelines.sequence import ClipError, SequencePipeline, probe_clip

from layout import (
    CLIP_LIMITS, CONCURRENCY, CSS, DEFAULT_FIT_STEPS, DEFAULT_FRAMES, EXPECT, MAP_DISPLAY_SIZE, MAX_FIT_STEPS,
    MAX_FRAMES, build_edit_tab, build_reconstruction_tab, build_video_tab,
)  # fmt: skip
from results import clip_result, edit_input, layers_result, map_result, result
from serving import (
    BUNDLED, EditHolder, JobRunner, ModelHolder, OutputStore, check_count, check_flag, gpu_seconds, gpu_task,
    guarded_app_kwargs, load_edit_holder, markdown_text, session_key, visitor_error,
)  # fmt: skip

MAX_FILE_SIZE = "32mb"  # uploads above this are refused by the server
QUEUE_SIZE = 32  # requests waiting at once; more are refused with "queue is full"
LAYER_VIEW_SIZE = 256  # side of each view in the decoder-layer strip
FIT_SHOW_EVERY = 10  # the head being fitted is shown every this many steps


# ---------------------------------------------------------------------------------------------- endpoints
class Endpoints:
    """The model endpoints, one method per API route: each checks its arguments (a bad one is refused at once
    with a short message), then runs one pipeline as a job of ``jobs`` (one at a time, cancellable, its files
    in a fresh job folder). Gradio reads each method's signature and docstring for the API page. The jobs'
    work (``photo_head``, ``layer_heads``, ``video_heads``, ``parse_photo``, ``edit_map``) follows the endpoints.

    Args:
        holder: the reconstruction model (/reconstruct, /decoder_layers, /reconstruct_video).
        edit_holder: the editing models (/segment, /edit), or None without an Editing tab.
        jobs: runs the model jobs.
    """

    def __init__(self, holder: ModelHolder, edit_holder: EditHolder | None, jobs: JobRunner) -> None:
        self.holder, self.edit_holder, self.jobs = holder, edit_holder, jobs
        # the jobs' work, registered by name now (not per request): a ZeroGPU worker forked later finds it
        self.photo_head, self.layer_heads, self.video_heads, self.parse_photo, self.edit_map = (
            gpu_task(work) for work in (self.photo_head, self.layer_heads, self.video_heads, self.parse_photo,
                                        self.edit_map))

    async def reconstruct(self, image: str | None, remove_background: bool = True, auto_crop: bool = True,
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
        if not image:
            raise visitor_error("Please upload a portrait (or pick an example) first.", "No image")
        options = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("auto_crop", auto_crop), ("use_whole_image", use_whole_image))}
        options["face_index"] = check_count(face_index, "face_index", 0, 99)
        fit = check_count(fit_steps, "fit_steps", 0, MAX_FIT_STEPS)
        frames = check_count(turntable_frames, "turntable_frames", 0, MAX_FRAMES)
        fit_config = FitConfig.preset("real" if check_flag(real_person, "real_person") else "fast")

        stream = self.jobs.stream(request, "reconstruction", self.photo_head, (PreprocessError, EmptyMaskError),
                                  args=(image, options, fit, frames, fit_config), progress=progress,
                                  duration=gpu_seconds(fit_steps=fit, turntable_frames=frames))
        async with aclosing(stream):
            async for outputs in stream:  # Gradio closing this handler (stop pressed) closes the stream: the job stops
                yield outputs

    async def decoder_layers(self, image: str | None, remove_background: bool = True, auto_crop: bool = True,
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
        if not image:
            raise visitor_error("Please upload a portrait (or pick an example) first.", "No image")
        flags = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("auto_crop", auto_crop), ("use_whole_image", use_whole_image))}
        flags["face_index"] = check_count(face_index, "face_index", 0, 99)

        return await self.jobs.run(request, "decoder visualisation", self.layer_heads,
                                   (PreprocessError, EmptyMaskError), args=(image, flags), progress=progress,
                                   duration=gpu_seconds())

    async def reconstruct_video(self, video: str | None, face_index: int = 0, remove_background: bool = True,
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
        if not video:
            raise visitor_error(f"Please upload a short video (up to {CLIP_LIMITS.max_seconds:g} s) first.", "No video")
        face = check_count(face_index, "face_index", 0, 99)
        options = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("use_whole_image", use_whole_image))}

        try:  # the upload was checked already; its length (0 when the header lacks it) sizes the GPU request
            seconds = probe_clip(video, CLIP_LIMITS)["duration"] or CLIP_LIMITS.max_seconds
        except ClipError as error:
            raise visitor_error(f"Bad video: {error}", "Unusable video") from None
        frames = math.ceil(min(seconds, CLIP_LIMITS.max_seconds) * CLIP_LIMITS.fps)
        fit_steps = CLIP_LIMITS.fit_first_steps + CLIP_LIMITS.fit_next_steps * (frames - 1)
        return await self.jobs.run(request, "video reconstruction", self.video_heads,
                                   (ClipError, PreprocessError, EmptyMaskError), args=(video, face, options),
                                   progress=progress, duration=gpu_seconds(fit_steps=fit_steps, video_frames=frames))

    async def segment(self, photo: str | None, remove_background: bool = True, auto_crop: bool = True,
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
        if not photo:
            raise visitor_error("Please upload a photo to parse first.", "No image")
        options = {name: check_flag(value, name) for name, value in (
            ("remove_background", remove_background), ("auto_crop", auto_crop), ("use_whole_image", use_whole_image))}
        if map_source not in MAP_SOURCES:
            raise visitor_error(f"map_source must be one of {', '.join(MAP_SOURCES)}, got {str(map_source)[:40]!r}.",
                                "Bad parameter")
        options["source"] = map_source

        return await self.jobs.run(request, "segmentation", self.parse_photo, (PreprocessError, EmptyMaskError),
                                   args=(photo, options), duration=gpu_seconds())

    async def edit(self, segmentation_map: dict | None, style_prompt: str = "", style_image: str | None = None,
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

        stream = self.jobs.stream(request, "editing", self.edit_map, (PreprocessError, ValueError),
                                  args=(segmentation_map, style_prompt, style_image, snap, frames), progress=progress,
                                  duration=gpu_seconds(turntable_frames=frames))
        async with aclosing(stream):
            async for outputs in stream:  # Gradio closing this handler (stop pressed) closes the stream: the job stops
                yield outputs

    # ------------------------------------------------------------------------------------------------ jobs
    # Each job's work, ``work(job, *args)`` with the checked request values as ``args``: registered with
    # ``gpu_task`` in ``__init__`` so that a ZeroGPU worker process (forked after the app is built) runs it.

    def photo_head(self, job, image: str, options: dict, fit: int, frames: int, fit_config: FitConfig):
        pipeline = self.holder.get()
        report = job.reporter()
        model_input = str(job.folder / "model_input.png")
        notice = [self.holder.notice] if self.holder.notice else []

        shown = [0]  # heads shown while fitting: the photo's colours on the predicted head, then the fit's

        def show_during_fit(part):  # each in its own folder: the page may still be reading the last one
            if not shown[0]:
                part.preprocessed[0].preview().save(model_input)
            shown[0] += 1
            early = write_outputs(pipeline.model, part.gaussians, job.folder / f"fitting_{shown[0]}",
                                  turntable_frames=0, view_size=0, formats=("ply",), timings=part.timings,
                                  notes=notice + part.notes)
            job.publish(result(early, model_input, early.notes, "fitting the head to the photo…"))

        rec = pipeline(image, progress=report, fit_steps=fit, fit=fit_config, before_fit=show_during_fit,
                       during_fit=show_during_fit, during_fit_every=FIT_SHOW_EVERY, **options)
        rec.preprocessed[0].preview().save(model_input)
        out = write_outputs(pipeline.model, rec.gaussians, job.folder, turntable_frames=frames, progress=report,
                            timings=rec.timings, notes=notice + rec.notes,
                            before_turntable=lambda part: job.publish(
                                result(part, model_input, part.notes, "the turntable video is on its way…")))
        return result(out, model_input, out.notes)

    def layer_heads(self, job, image: str, flags: dict):
        layers = self.holder.get().decoder_layers(image, size=LAYER_VIEW_SIZE, progress=job.reporter(), **flags)
        return layers_result(layers, job.folder, job.check)

    def video_heads(self, job, video: str, face: int, options: dict):
        out = SequencePipeline(self.holder.get(), CLIP_LIMITS)(video, job.folder, face_index=face,
                                                               progress=job.reporter(), **options)
        return clip_result(out)

    def parse_photo(self, job, photo: str, options: dict):
        start = time.perf_counter()
        labels, prep = self.edit_holder.get().segment(photo, return_preprocessed=True, **options)
        return map_result(labels, prep.notes, time.perf_counter() - start, job.folder / "segmentation.png",
                          MAP_DISPLAY_SIZE)

    def edit_map(self, job, segmentation_map: dict, style_prompt: str, style_image: str | None, snap: bool,
                 frames: int):
        pipeline = self.edit_holder.get()
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
        seen_path = edit_input(edited, job.folder / "model_input.png")
        style_note = f"style from the {edited.style_source}"
        style_note += f": “{markdown_text(style_prompt)}”" if style_prompt else ""  # shown literally
        notes = [style_note, *map_notes, *edited.notes]
        out = write_outputs(pipeline.editor, edited.gaussians, job.folder, turntable_frames=frames,
                            progress=report, timings=edited.timings, notes=notes,
                            before_turntable=lambda part: job.publish(
                                result(part, seen_path, part.notes, "the turntable video is on its way…")))
        return result(out, seen_path, out.notes)


# ------------------------------------------------------------------------------------------------- demo
def build_demo(holder: ModelHolder, edit_holder: EditHolder | None = None, jobs: JobRunner | None = None) -> gr.Blocks:
    """The Gradio UI: the Reconstruction tab (with the "Inside the model" panel) and the Video tab (``holder``
    supplies the model) and, when ``edit_holder`` has its checkpoints, the Editing tab (hidden until they have
    loaded). ``jobs`` runs the model jobs (default: one at a time, outputs under Gradio's cache folder)."""
    jobs = jobs or JobRunner(OutputStore(Path(get_upload_folder()) / "perchead"))
    api = Endpoints(holder, edit_holder, jobs)
    with gr.Blocks(title="PercHead — 3D head from one photo", delete_cache=(600, jobs.store.max_age_s)) as demo:
        gr.Markdown("# PercHead — a 3D head from one photo\nUpload a portrait or pick an example: the head is cut "
                    "out, lifted to 3D Gaussian splats, and shown in 3D, as a turntable and as downloads.")
        gr.Markdown(EXPECT)
        status = gr.Markdown("Loading the model…", elem_id="status")
        build_reconstruction_tab(api)
        build_video_tab(api)
        edit_tab = build_edit_tab(api) if edit_holder is not None and edit_holder.available else None

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
    store.kept = lambda: {file for block in demo.blocks.values() for file in getattr(block, "keep_in_cache", ())}
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE, api_open=False)  # model jobs: queue only
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
                show_error=False, css=CSS, app_kwargs=guarded_app_kwargs(store))


if __name__ == "__main__":
    main()
