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
from pathlib import Path

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
CONCURRENCY = 1  # reconstructions at a time (the model is shared; CPUs are few)
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
            self.pipeline, self.description, self.notice = load_pipeline(self.requested, self.device)
        except Exception as error:  # the UI shows it; requests get a clear gr.Error
            log.exception("model loading failed")
            self.error = f"{type(error).__name__}: {error}"
        self.seconds = time.perf_counter() - start
        self._ready.set()

    def get(self, timeout: float = MODEL_TIMEOUT_S):
        if not self._ready.wait(timeout):
            raise gr.Error(f"the model is still loading after {timeout:.0f} s; please retry in a moment")
        if self.pipeline is None:
            raise gr.Error(f"the model could not be loaded: {self.error}")
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


# --------------------------------------------------------------------------------------------- handlers
def guard_uploads(component: gr.Image) -> gr.Image:
    """Makes an image input refuse unreadable uploads (empty, corrupt, non-image, bomb) with a clear gr.Error.

    Wraps the instance's ``preprocess`` (a subclass would make Gradio write an ``app.pyi`` stub next to
    this file): our header check runs first, then Gradio's own (which only opens the file for filepaths).
    """
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        path = getattr(payload, "path", None)
        if path:
            from perchead.preprocess import PreprocessError, check_file

            try:
                check_file(path)
            except PreprocessError as error:
                raise gr.Error(f"Bad input: {error}", title="Unusable image") from error
        try:
            return gradio_preprocess(payload)
        except Exception as error:  # anything PIL could not open
            raise gr.Error(f"Bad input: the file cannot be read as an image ({error})", title="Unusable image") from error

    component.preprocess = preprocess
    return component


def _session_folder(request: gr.Request | None) -> Path:
    session = getattr(request, "session_hash", None) or "anonymous"
    folder = OUTPUT_ROOT / session / time.strftime("%H%M%S") / os.urandom(3).hex()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _cleanup_session(request: gr.Request) -> None:
    """Deletes a session's output files when its browser tab closes."""
    session = getattr(request, "session_hash", None)
    if session:
        shutil.rmtree(OUTPUT_ROOT / session, ignore_errors=True)


def build_demo(holder: ModelHolder) -> gr.Blocks:
    """The Gradio UI (Reconstruction tab); ``holder`` supplies the model."""

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
        try:
            out = photo_to_outputs(
                pipeline, image, folder,
                remove_background=bool(remove_background), auto_crop=bool(auto_crop),
                use_whole_image=bool(use_whole_image), turntable_frames=int(turntable_frames or 0),
                progress=lambda fraction, stage: progress(fraction, desc=stage),
            )  # fmt: skip
        except PreprocessError as error:
            shutil.rmtree(folder, ignore_errors=True)
            raise gr.Error(f"Bad input: {error}", title="Unusable image") from error
        except gr.Error:
            raise
        except Exception as error:
            shutil.rmtree(folder, ignore_errors=True)
            log.error("reconstruction failed:\n%s", traceback.format_exc())
            raise gr.Error(f"Reconstruction failed ({type(error).__name__}: {error})") from error
        notes = ([holder.notice] if holder.notice else []) + out.notes
        timings = {k: round(v, 3) for k, v in out.timings.items()}
        return (
            str(out.files["ply"]),
            str(out.video) if out.video else None,
            [(view, caption) for caption, view in out.views],
            out.preprocessed.preview(),
            [str(path) for path in out.files.values()],
            timings,
            "\n".join(f"- {note}" for note in notes) or "Done.",
        )

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
                    viewer = gr.Model3D(
                        label="3D head (Gaussian splats, .ply)", clear_color=(1.0, 1.0, 1.0, 1.0), height=420,
                        elem_id="splat-viewer",
                    )  # fmt: skip
                    video = gr.Video(label="Turntable", autoplay=True, loop=True, height=360, elem_id="turntable")
                    views = gr.Gallery(label="Novel views", columns=7, height=200, object_fit="contain")
                    downloads = gr.File(label="Downloads (.ply, .splat, .glb)", file_count="multiple", elem_id="downloads")
                    timings = gr.JSON(label="Timings (s)")
                    notes = gr.Markdown(label="Notes", elem_id="notes")
        run.click(
            reconstruct,
            inputs=[image, remove_background, auto_crop, use_whole_image, turntable_frames],
            outputs=[viewer, video, views, model_input, downloads, timings, notes],
            api_name="reconstruct",
            concurrency_limit=CONCURRENCY,
        )
        demo.load(holder.status_markdown, outputs=status, api_name=False, queue=False)
        demo.unload(_cleanup_session)
    return demo


# ------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("PERCHEAD_MODEL") or None,
                        help="Hub repo id or local folder (default: PERCHEAD_MODEL, else the bundled weights_card/)")
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
    demo = build_demo(holder)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=32)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_SIZE,
        allowed_paths=[str(OUTPUT_ROOT)], show_error=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
