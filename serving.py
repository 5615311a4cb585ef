"""What the Space needs besides its UI: model loading, per-job output folders, one cancellable job at a time
(on ZeroGPU too, where the model work runs in a separate GPU process), and the messages a visitor sees.

Nothing a client sends steers the file system: job folders get server-chosen random names under one root
inside Gradio's cache; a session id (client-chosen text) is only ever a dictionary key, and only when it
has the format Gradio issues. Every path written or deleted is checked to lie directly under that root.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import json
import logging
import math
import os
import pickle
import queue
import re
import secrets
import shutil
import threading
import time
import traceback
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import gradio as gr
import spaces  # before anything starts CUDA; its GPU decorator is a no-op outside ZeroGPU

import perchead.pipelines  # noqa: F401 - imported here, before any thread: concurrent first imports can deadlock

ROOT = Path(__file__).resolve().parent
BUNDLED = ROOT / "weights_card"
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what Gradio's page and gradio_client issue
MODEL_TIMEOUT_S = 300  # how long a request waits for the start-up model load
MAX_AGE_S = int(os.environ.get("PERCHEAD_OUTPUT_MAX_AGE_S", 3600))  # outputs older than this are deleted
MAX_OUTPUT_BYTES = int(os.environ.get("PERCHEAD_OUTPUT_MAX_BYTES", 2 * 1024**3))  # oldest deleted beyond this
MAX_JSON_BYTES = 256 * 1024  # the body of an API call (file arguments are references, the prompt ≤ 300 characters)
MAX_UPLOAD_BYTES = 32 * 1024**2 + 64 * 1024  # the body of one upload: one file at the 32 MB limit, plus the form
UPLOAD_GRACE_S = float(os.environ.get("PERCHEAD_UPLOAD_GRACE_S", 60))  # uploads younger than this are never evicted
EDITOR_MAX_LAYERS = 4  # layers of the map editor's value (the page sends one)
EDITOR_MAX_PIXELS = 16_000_000  # all images of one map-editor value together, read from their headers
EDITOR_MAX_BLOB_BYTES = 24 * 1024**2  # the editor's pending in-memory images, all visitors together
MAX_BLOB_REQUEST_BYTES = 4 * 1024**2 + 64 * 1024  # one editor image (the page sends its 512² canvas, a few KB)
_PROCESS = f"{os.getpid()} {secrets.token_hex(8)}"  # marks this process's running job folders
_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][\w.~@+-]+){2,}")  # absolute-looking paths in messages
log = logging.getLogger("perchead.app")


# --------------------------------------------------------------------------------------------- errors
class Cancelled(Exception):
    """The visitor cancelled the job, closed the page or lost the connection."""


def visitor_error(message: str, title: str = "Error") -> gr.Error:
    """A ``gr.Error`` for the visitor: no traceback in the log (the caller logs one line), no server paths."""
    return gr.Error(_SERVER_PATH.sub("<file>", message), title=title, print_exception=False)


def check_flag(value: Any, name: str) -> bool:
    """A real boolean from the API (``"no"``, ``1`` or ``None`` are refused, not read as True)."""
    if not isinstance(value, bool):
        raise visitor_error(f"{name} must be true or false, got {str(value)[:40]!r}.", "Bad parameter")
    return value


def check_count(value: Any, name: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]`` from the API (``7.5``, ``"ten"`` and ``True`` are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value:
        raise visitor_error(f"{name} must be a whole number from {low} to {high}, got {str(value)[:40]!r}.",
                            "Bad parameter")
    if not low <= int(value) <= high:
        raise visitor_error(f"{name} must be from {low} to {high}, got {int(value)}.", "Bad parameter")
    return int(value)


# ---------------------------------------------------------------------------------------------- inputs
def stored_file(path: Any) -> bool:
    """Whether ``path`` is a file Gradio stored for this server: under its upload/cache folder or the app's
    examples (symlinks and ``..`` resolved first). Says nothing about whether the file exists."""
    from gradio.utils import get_upload_folder

    if not isinstance(path, str) or not path or "\0" in path or len(path) > 4096:
        return False
    real = os.path.realpath(path)
    for root in (get_upload_folder(), str(ROOT / "examples")):
        root = os.path.realpath(root)
        if real.startswith(root + os.sep):
            return True
    return False


NOT_STORED = ("a file argument must be a file uploaded to this server (upload it first, e.g. with gradio_client's "
              "handle_file); other paths are not read.")


def guard_uploads(component, files_of: Callable[[Any], list], what: str, max_files: int | None = None,
                  max_pixels: int | None = None):
    """Makes an input refuse unusable files (not uploaded here, empty, corrupt, non-image, bomb, over budget)
    with a message naming them, before anything is decoded.

    Wraps the instance's ``preprocess`` (a subclass would make Gradio write a ``.pyi`` stub next to the
    app): our checks of every file in the payload run first — each must be a file Gradio stored for this
    server (:func:`stored_file`), with a readable header — then Gradio's own.

    Args:
        component: the Gradio input.
        files_of: payload → the uploaded file objects (with ``.path``) to check.
        what: how the message names the input ("Bad input", "Bad segmentation map").
        max_files: most files in one value (e.g. the map editor's layers); None = no limit.
        max_pixels: most pixels of all files of one value together, from their headers; None = no limit.
    """
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        from perchead.photo.load import PreprocessError, check_file

        files = [file for file in files_of(payload) if file is not None]
        if max_files is not None and len(files) > max_files:
            log.info("upload refused (%s): %d files", what, len(files))
            raise visitor_error(f"{what}: at most {max_files} images in one value, got {len(files)}.", "Too many images")
        pixels = 0
        for file in files:
            path = getattr(file, "path", None)
            if path is None and getattr(file, "url", None) is None:
                continue
            if not stored_file(path):
                log.info("upload refused (%s): not a stored file", what)
                raise visitor_error(f"{what}: {NOT_STORED}", "Not an upload")
            try:
                width, height = check_file(path)
            except PreprocessError as error:
                log.info("upload refused (%s): %s", what, error)
                raise visitor_error(f"{what}: {error}", "Unusable image") from None
            pixels += width * height
            if max_pixels is not None and pixels > max_pixels:
                log.info("upload refused (%s): %d pixels", what, pixels)
                raise visitor_error(f"{what}: its images hold more than {max_pixels / 1e6:.0f} megapixels together; "
                                    "please send smaller images.", "Images too large")
        try:
            return gradio_preprocess(payload)
        except gr.Error:
            raise
        except Exception as error:  # anything PIL could not open
            log.info("upload refused (%s): %s", what, type(error).__name__)
            raise visitor_error(f"{what}: the file cannot be read as an image; please upload a PNG, JPEG or "
                                "WebP photo.", "Unusable image") from None

    component.preprocess = preprocess
    return component


def guard_editor_blobs(editor, max_layers: int = EDITOR_MAX_LAYERS, max_pixels: int = EDITOR_MAX_PIXELS,
                       max_bytes: int = EDITOR_MAX_BLOB_BYTES):
    """Bounds the map editor's upload helper (``/component_server``, ``accept_blobs``): the page sends its
    images there before a job, and Gradio keeps them in memory under a client-chosen id.

    Refused with HTTP 400 before Gradio sees them: an unknown part, a layer index beyond ``max_layers``, an
    id not shaped like Gradio's, a blob that is not an image or whose header declares more than
    ``max_pixels``. The oldest pending values are dropped while all together exceed ``max_bytes``.
    """
    from fastapi import HTTPException
    from PIL import Image

    gradio_accept = editor.accept_blobs
    lock = threading.Lock()

    def declared_pixels(blob: bytes) -> int:
        with Image.open(io.BytesIO(blob)) as image:  # reads the header only
            return image.size[0] * image.size[1]

    def refuse(message: str):
        log.info("editor upload refused: %s", message)
        return HTTPException(status_code=400, detail=message)

    def accept_blobs(data):
        fields, files = getattr(data, "data", None), getattr(data, "files", None)
        if not isinstance(fields, dict) or not isinstance(files, list) or len(files) != 1:
            raise refuse("one image per request, with its type, index and id")
        kind, index, key = fields.get("type"), fields.get("index"), fields.get("id")
        if kind not in ("background", "layer", "composite"):
            raise refuse("type must be background, layer or composite")
        if not isinstance(key, str) or not SESSION_ID.fullmatch(key):
            raise refuse("id must be 1 to 64 letters, digits, '-' or '_'")
        if index not in (None, "", "null"):
            if not (isinstance(index, (str, int)) and str(index).isdigit() and int(index) < max_layers):
                raise refuse(f"index must be a whole number from 0 to {max_layers - 1}")
        blob = files[0][1]
        try:
            pixels = declared_pixels(blob)
        except Exception:
            raise refuse("the blob is not a readable image") from None
        if pixels > max_pixels:
            raise refuse(f"the image declares more than {max_pixels / 1e6:.0f} megapixels")
        storage = editor.blob_storage

        def held() -> int:
            return sum(len(p) for v in storage.values() for p in (v.background, v.composite, *v.layers) if p)

        try:
            with lock:  # the page sends a value's parts at once, on several threads: one at a time here
                pending = storage.get(key)
                if pending is not None:
                    parts = [pending.background, pending.composite, *pending.layers]
                    if sum(declared_pixels(part) for part in parts if part) + pixels > max_pixels:
                        raise refuse(f"the images of one value declare more than {max_pixels / 1e6:.0f} megapixels")
                while storage and held() + len(blob) > max_bytes:
                    storage.pop(next(iter(storage)))  # the oldest pending value (its job will say the map is missing)
                return gradio_accept(data)
        finally:
            if len(blob) > 1024**2:
                _release_memory()  # request copies of a large blob would otherwise stay in the heap

    accept_blobs._is_server_fn = True  # Gradio only calls functions marked as server functions
    editor.accept_blobs = accept_blobs
    return editor


def guard_video(component):
    """Makes a video input refuse unusable uploads before any job starts: not a video (only MP4/MOV, WebM/MKV
    and AVI containers are opened), longer than the pipeline's limit, frames too large or too small. Reads
    the file's header only (:func:`perchead.pipelines.sequence.probe_clip`)."""
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        from perchead.pipelines.sequence import ClipError, probe_clip

        if getattr(payload, "path", None) is not None or getattr(payload, "url", None) is not None:
            if not stored_file(getattr(payload, "path", None)):
                log.info("upload refused (video): not a stored file")
                raise visitor_error(f"Bad video: {NOT_STORED}", "Not an upload")
            try:
                probe_clip(payload.path)
            except ClipError as error:
                log.info("upload refused (video): %s", error)
                raise visitor_error(f"Bad video: {error}", "Unusable video") from None
        try:
            return gradio_preprocess(payload)
        except gr.Error:
            raise
        except Exception as error:
            log.info("upload refused (video): %s", type(error).__name__)
            raise visitor_error("Bad video: the file cannot be read; please upload an MP4, MOV, WebM, MKV or AVI "
                                "clip.", "Unusable video") from None

    component.preprocess = preprocess
    return component


def guard_value(component, name: str, expected: str, whole: tuple[int, int] | None = None):
    """Makes an input refuse values Gradio cannot convert (e.g. text for a slider) with a message naming it.

    Args:
        component: the Gradio input.
        name: the parameter's API name, for messages.
        expected: what it must be, in words.
        whole: ``(low, high)`` to check the value as sent, before Gradio rounds it (``true`` and ``1e-7``
            are refused, not read as 1 and 0).
    """
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        if whole is not None:
            check_count(payload, name, *whole)
        try:
            return gradio_preprocess(payload)
        except Exception:
            log.info("parameter refused: %s = %.40r", name, payload)
            raise visitor_error(f"{name} must be {expected}, got {str(payload)[:40]!r}.", "Bad parameter") from None

    component.preprocess = preprocess
    return component


def guard_choice(component, name: str, allowed: tuple[str, ...]):
    """Makes a choice input accept exactly ``allowed`` (which may document more values than the page shows)
    and refuse anything else with a message listing them."""
    gradio_preprocess = component.preprocess

    def preprocess(payload):
        if not isinstance(payload, str) or payload not in allowed:
            log.info("parameter refused: %s = %.40r", name, payload)
            raise visitor_error(f"{name} must be one of {', '.join(allowed)}, got {str(payload)[:40]!r}.",
                                "Bad parameter")
        choices = [value for _, value in getattr(component, "choices", [])]
        return gradio_preprocess(payload) if payload in choices else payload

    component.preprocess = preprocess
    return component


def markdown_text(text: str) -> str:
    """``text`` shown literally in Markdown: markup characters escaped, HTML made inert."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~])", r"\\\1", text)


# ---------------------------------------------------------------------------------------------- model
def on_zero_gpu() -> bool:
    """True on a ZeroGPU Space, read as ``spaces`` reads it (``SPACES_ZERO_GPU``)."""
    return spaces.config.Config.zero_gpu


class ModelHolder:
    """Loads a pipeline once, in a background thread, and hands it to requests when ready."""

    what = "model"  # for messages

    def __init__(self, requested: str | None, device: str | None = None, revision: str | None = None) -> None:
        self.requested = requested
        self.device = device
        self.revision = revision
        self.pipeline = None
        self.notice = ""
        self.error: str | None = None
        self.description = ""
        self.seconds = 0.0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._load, name="perchead-model-load", daemon=True)

    def start(self) -> "ModelHolder":
        """Starts the load: in a background thread (the page is up at once), or, on ZeroGPU, right here in
        the calling thread — ``spaces`` stands in for CUDA only in the thread that imported it, and it packs
        the weights for its GPU worker at ``launch()``, so the model must be on ``cuda`` before then."""
        if on_zero_gpu():
            self._load()
        else:
            self._thread.start()
        return self

    def _load(self) -> None:
        start = time.perf_counter()
        try:
            self.pipeline, self.description, self.notice = self.load()
        except Exception as error:  # the page shows a short line; the log has the traceback
            log.exception("loading the %s failed", self.what)
            self.error = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        self.seconds = time.perf_counter() - start
        self._ready.set()

    def load(self):
        """Returns (pipeline, description, notice); runs in the background thread. Also readies the face
        networks of the photo preprocessing (fetching their files once), so the first visitor does not wait."""
        from perchead.photo.faces import load_analyzer, unavailable_reason

        loaded = load_pipeline(self.requested, self.device, self.revision)
        if load_analyzer() is None:
            log.warning("face networks unavailable (%s): photos use the Haar + GrabCut fallback", unavailable_reason())
        return loaded

    def ready(self) -> bool:
        """Waits for the start-up load; True when the pipeline is usable."""
        self._ready.wait(MODEL_TIMEOUT_S)
        return self.pipeline is not None

    def get(self, timeout: float = MODEL_TIMEOUT_S):
        if not self._ready.wait(timeout):
            raise visitor_error(f"The {self.what} is still loading; please retry in a moment.", "Still loading")
        if self.pipeline is None:
            raise visitor_error(f"The {self.what} could not be loaded; the page header says why.", "Not available")
        return self.pipeline

    def status_markdown(self) -> str:
        """One line for the page: ready with which model, or why not (the log has the details)."""
        if not self.ready():
            return f"⚠️ The model could not be loaded ({self.error})."
        text = f"Ready: {self.description}."
        return f"⚠️ {self.notice}\n\n{text}" if self.notice else text


def load_pipeline(requested: str | None, device: str | None = None, revision: str | None = None):
    """The pipeline for ``requested`` (Hub id or folder), else the bundled checkpoint, else a fresh demo model.

    Args:
        requested: a Hub model repo id or a checkpoint folder (None: the bundled one).
        device: torch device (default: CUDA if available, else CPU).
        revision: Hub branch, tag or commit of ``requested``.

    Returns:
        (pipeline, description, notice) — the notice is empty unless something fell back; it says why in one line.
    """
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead
    from perchead.pipelines.reconstruct import PercHeadPipeline, default_device

    device = device or str(default_device())
    notices = []
    if requested:
        try:
            pipeline = PercHeadPipeline.from_pretrained(requested, revision=revision, device=device)
            return pipeline, f"the model `{model_words(requested, revision)}`, on {_device_words(device)}", ""
        except Exception as error:
            log.warning("could not load the requested model %r: %s", requested, error)
            notices.append(f"Could not load the requested model `{model_words(requested, revision)}` "
                           f"({load_reason(error)}); using the bundled one instead.")
    if (BUNDLED / "model.safetensors").is_file():
        pipeline = PercHeadPipeline.from_pretrained(str(BUNDLED), device=device)
        return pipeline, f"the bundled demo model (synthetic heads), on {_device_words(device)}", " ".join(notices)
    notices.append(
        "No trained checkpoint is bundled yet (weights_card/model.safetensors is missing): this is a freshly "
        "initialised `demo` model, so reconstructions are random-looking. Train one with "
        "`python -m perchead.training.train --preset demo` or pass `--model`."
    )
    pipeline = PercHeadPipeline(PercHead(PercHeadConfig.preset("demo")), device=device)
    return pipeline, f"an untrained demo model, on {_device_words(device)}", " ".join(notices)


def model_words(requested: str, revision: str | None = None) -> str:
    """How the page names a requested model: a repo id with its revision, or a folder's last name (no server path)."""
    if Path(requested).expanduser().is_dir() or requested.startswith((".", "/", "~")):
        return Path(requested).name or requested
    return f"{requested}@{revision}" if revision else requested


def load_reason(error: Exception) -> str:
    """An exception as one short line for the page: its first line, server paths replaced by ``<file>``."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return _SERVER_PATH.sub("<file>", text)[:300].rstrip(". ")


def _device_words(device: str) -> str:
    return "the GPU" if str(device).startswith("cuda") else "the CPU"


class EditHolder(ModelHolder):
    """Loads the editing pipeline (``edit/``, ``style/``, ``parser/`` of a folder or Hub repo) in the background.

    Whether the Editing tab exists is decided at start-up (:attr:`available`, cheap): a local folder must hold
    the three checkpoints; a Hub repo id is fetched in the background. The tab is built hidden and shown once
    the models have loaded. A requested folder or repo that fails to load falls back to the bundled editing
    models with a visible notice (:meth:`status_line`); missing local checkpoints give a one-line notice instead.
    """

    what = "editing models"

    def __init__(self, folder: str | None, device: str | None = None, revision: str | None = None) -> None:
        super().__init__(folder, device, revision)
        if not folder:
            self.missing = {"all": "disabled with --edit-model none"}
        elif Path(folder).expanduser().is_dir() or folder.startswith((".", "/", "~")) or folder.count("/") != 1:
            from perchead.pipelines.edit import missing_parts

            self.missing = missing_parts(folder)
        else:  # a Hub repo id: known once fetched; the bundled models stand in if it fails
            self.missing = {}

    @property
    def available(self) -> bool:
        """All checkpoint files are present, or a Hub repo is requested (the tab and its endpoints are built)."""
        return not self.missing

    def start(self) -> "EditHolder":
        if not self.available:
            self.error = "missing " + "; ".join(self.missing.values())
            self._ready.set()
            return self
        return super().start()

    def load(self):
        from perchead.pipelines.edit import PercHeadEditPipeline, missing_parts
        from perchead.pipelines.reconstruct import default_device

        device = self.device or str(default_device())
        try:
            pipeline = PercHeadEditPipeline.from_pretrained(self.requested, device=device, revision=self.revision)
            return pipeline, "editing models", ""
        except Exception as error:
            if Path(self.requested).resolve() == BUNDLED.resolve() or missing_parts(BUNDLED):
                raise
            log.warning("could not load the requested editing models %r: %s", self.requested, error)
            notice = (f"Could not load the requested editing models `{model_words(self.requested, self.revision)}` "
                      f"({load_reason(error)}); using the bundled ones instead.")
        return PercHeadEditPipeline.from_pretrained(str(BUNDLED), device=device), "the bundled editing models", notice

    def status_line(self) -> str:
        """One line for the page's status markdown."""
        if self.ready():
            return f"⚠️ {self.notice} Editing: ready." if self.notice else "Editing: ready."
        if self.requested is None:
            return "ℹ️ No Editing tab (disabled with `--edit-model none`)."
        if not self.available:
            from perchead.pipelines.edit import train_command

            commands = ", ".join(f"`{' '.join(train_command(name).split()[:5])} ...`" for name in self.missing)
            return (f"ℹ️ No Editing tab: `{self.requested}` lacks the editing checkpoints "
                    f"{', '.join(name + '/' for name in self.missing)} (train them with {commands}; see docs/app.md).")
        return f"⚠️ No Editing tab: the editing models could not be loaded ({self.error})."


def load_edit_holder(requested: str | None, device: str | None = None, revision: str | None = None) -> EditHolder:
    """The editing holder for ``--edit-model`` (a folder or Hub repo id; ``none`` disables editing), started."""
    folder = None if (requested or "").strip().lower() in ("none", "off", "") else requested
    return EditHolder(folder, device, revision).start()


# -------------------------------------------------------------------------------------------- outputs
def session_key(request: gr.Request | None) -> str | None:
    """The request's session id when it has the format Gradio issues, else None (no per-session clean-up)."""
    session = getattr(request, "session_hash", None)
    return session if isinstance(session, str) and SESSION_ID.fullmatch(session) else None


class OutputStore:
    """Job folders ``<root>/<random hex>``: created, deleted and pruned only here, only under ``root``.

    One clean-up policy covers every output, whether the page or a REST call asked for it: a folder is
    deleted when its browser session ends, when it is older than ``max_age_s``, and, oldest first, while
    all folders together exceed ``max_bytes``. Pruning runs before every job, so the disk used by outputs
    never exceeds ``max_bytes`` plus one job's files.
    """

    def __init__(self, root: str | os.PathLike, max_age_s: float = MAX_AGE_S, max_bytes: int = MAX_OUTPUT_BYTES,
                 uploads: str | os.PathLike | None = None):
        """
        Args:
            root: the folder of the job folders (created).
            max_age_s: folders (and uploads) older than this are deleted.
            max_bytes: outputs and uploads together are kept under this.
            uploads: Gradio's upload folder, whose files count against ``max_bytes`` (:meth:`admit_upload`);
                None = uploads are not counted.
        """
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploads = Path(uploads).resolve() if uploads is not None else None
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._upload_lock = threading.Lock()
        self._sessions: dict[str, set[Path]] = {}  # session id → its job folders
        self._busy: set[Path] = set()  # folders of jobs that are running (never pruned)
        self._orphans: set[Path] = set()  # folders of ended sessions whose job was still running
        self._pending = 0  # bytes of admitted uploads whose bodies may still be arriving
        self.kept: Callable[[], set[str]] = set  # files Gradio keeps for good (examples): never evicted
        removed = self.prune()  # half-written folders of a process that was killed mid-job go at start-up
        if removed:
            log.info("removed %d bytes of job folders left by an earlier run", removed)

    def _inside(self, folder: Path) -> Path:
        """``folder`` resolved (symlinks followed: a link out of the root resolves outside it), if it is a direct
        child of the root; raises otherwise."""
        resolved = Path(folder).resolve()
        if resolved.parent != self.root:
            raise RuntimeError(f"refusing to touch {resolved}: not a job folder under {self.root}")
        return resolved

    def new_folder(self, session: str | None = None) -> Path:
        """A fresh, empty job folder with a random name (the session id only files it for clean-up)."""
        self.prune()
        folder = self._inside(self.root / secrets.token_hex(8))
        with self._lock:
            folder.mkdir()
            (folder / RUNNING).write_text(_PROCESS)  # a folder whose writer is gone is half-written
            self._busy.add(folder)
            if session is not None and SESSION_ID.fullmatch(session):
                self._sessions.setdefault(session, set()).add(folder)
        return folder

    def release(self, folder: Path) -> None:
        """The job writing into ``folder`` has ended; the folder may now be pruned."""
        with self._lock:
            self._busy.discard(folder)
        (folder / RUNNING).unlink(missing_ok=True)

    def remove(self, folder: Path) -> None:
        """Deletes one job folder (only ever a direct child of the root)."""
        folder = self._inside(folder)
        with self._lock:
            self._busy.discard(folder)
            for session in [key for key, folders in self._sessions.items() if folder in folders]:
                self._sessions[session].discard(folder)
                if not self._sessions[session]:
                    del self._sessions[session]  # API clients never end their sessions: no empty entries
        shutil.rmtree(folder, ignore_errors=True)

    def end_session(self, session: str | None) -> int:
        """Deletes the finished job folders of a session; a running job's folder goes when the job stops.

        Returns:
            the number of folders deleted now.
        """
        if session is None:
            return 0
        with self._lock:
            folders = self._sessions.pop(session, set())
            idle = [f for f in folders if f not in self._busy]
            self._orphans |= folders - set(idle)
        for folder in idle:
            self.remove(folder)
        return len(idle)

    def usage(self) -> int:
        """Bytes in all job folders."""
        return sum(size for _, _, size in self._folders())

    def _folders(self) -> list[tuple[float, Path, int]]:
        """(modification time, folder, bytes) of every job folder, oldest first."""
        rows = []
        for entry in os.scandir(self.root):
            if entry.is_dir(follow_symlinks=False):
                row = _entry_row(entry, skip=RUNNING)
                if row is not None:
                    rows.append(row)
        return sorted(rows)

    def prune(self) -> int:
        """Applies the age and size limits (and deletes folders left by ended sessions). Returns bytes freed."""
        now, freed = time.time(), 0
        rows = self._folders()
        total = sum(size for _, _, size in rows)
        with self._lock:
            busy = set(self._busy)
            orphans = self._orphans - busy
            self._orphans &= busy
        for mtime, folder, size in rows:
            if folder in busy:
                continue
            if folder in orphans or now - mtime > self.max_age_s or total > self.max_bytes or _abandoned(folder):
                self.remove(folder)
                total -= size
                freed += size
        return freed


    def admit_upload(self, size: int) -> bool:
        """Makes room for an upload of ``size`` bytes under the one disk limit (outputs and uploads together
        under ``max_bytes``): prunes the outputs, then deletes uploads older than ``max_age_s`` and, oldest
        first, uploads older than ``UPLOAD_GRACE_S`` (younger ones may be on their way into a job).

        Returns:
            False when it still does not fit (the upload is refused).
        """
        if self.uploads is None:
            return True
        with self._upload_lock:
            self.prune()
            now, outputs = time.time(), self.usage()
            rows = []
            for entry in os.scandir(self.uploads):
                if Path(entry.path) == self.root or entry.is_symlink():
                    continue
                row = _entry_row(entry)
                if row is not None:
                    rows.append(row)
            total = outputs + sum(row[2] for row in rows) + self._pending + size
            kept = {Path(os.path.realpath(file)) for file in self.kept()}
            kept |= {file.parent for file in kept}  # Gradio caches a file as <upload folder>/<hash>/<name>
            for mtime, path, bytes_ in sorted(rows):
                if path in kept:
                    continue
                if now - mtime > self.max_age_s or (total > self.max_bytes and now - mtime > UPLOAD_GRACE_S):
                    if path.parent == self.uploads:  # only ever a direct child of the upload folder
                        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                        total -= bytes_
            if total > self.max_bytes:
                return False
            self._pending += size  # held until the upload has ended (:meth:`upload_done`)
            return True

    def upload_done(self, size: int) -> None:
        """An upload admitted by :meth:`admit_upload` has ended (its file is on disk, or it failed)."""
        with self._upload_lock:
            self._pending = max(0, self._pending - size)


def _entry_row(entry: os.DirEntry, skip: str | None = None) -> tuple[float, Path, int] | None:
    """(modification time, path, bytes) of a file or folder (symlinks inside not followed, files named ``skip``
    not counted), or None when it vanished while being measured: Gradio and other jobs delete their
    folders at any time, and a scan must not fail on that."""
    path = Path(entry.path)
    try:
        mtime = entry.stat(follow_symlinks=False).st_mtime
        if not entry.is_dir(follow_symlinks=False):
            return mtime, path, entry.stat(follow_symlinks=False).st_size
        size = 0
        for folder, _, names in os.walk(path):
            for name in names:
                if name != skip:
                    try:
                        size += os.lstat(os.path.join(folder, name)).st_size
                    except FileNotFoundError:  # deleted since the listing
                        pass
        return mtime, path, size
    except FileNotFoundError:
        return None


RUNNING = ".running"  # in a job folder while its job writes: "<pid> <token>" of the writing process


def _abandoned(folder: Path) -> bool:
    """A job folder whose writing process is gone (killed mid-job): its marker names another process, dead."""
    try:
        owner = (folder / RUNNING).read_text()
    except OSError:
        return False
    if owner == _PROCESS:
        return False
    pid = owner.split()[0] if owner.split() else ""
    if not pid.isdigit() or int(pid) == os.getpid():
        return True  # ours by pid but not by token: a restart that reused the pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


# ----------------------------------------------------------------------------------------------- requests
API = "/gradio_api/"
POST_ROUTES = ("queue/join", "cancel", "reset", "upload", "component_server")  # and call/, run/, api/ below
CALL_ROUTES = ("call/", "run/", "api/")
FILE_ROUTES = ("upload", "component_server")  # multipart bodies


class RequestGuard:
    """ASGI middleware in front of Gradio's routes: what a request may be before Gradio reads it.

    - POST only to the routes the page and ``gradio_client`` use (``queue/join``, ``call/…``, ``run/…`` for
      the page's instant UI updates — model endpoints refuse it, see ``api_open``, ``upload``,
      ``component_server``, ``cancel``, ``reset``); others get 404.
    - A declared body size (``Content-Length``; 411 without it): at most ``MAX_JSON_BYTES`` for API calls,
      ``MAX_UPLOAD_BYTES`` for uploads, ``MAX_BLOB_REQUEST_BYTES`` for an editor image (413 beyond).
    - An upload must fit the disk limit (:meth:`OutputStore.admit_upload`; 507 when it does not).
    - Every file argument of an API call (a dict with ``path`` or ``url``) must be a file Gradio stored for
      this server (:func:`stored_file`), and ``data:`` URLs are refused (they skip the upload limits); 400.
    """

    def __init__(self, app, store: OutputStore | None = None):
        self.app = app
        self.store = store

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path.split(API, 1)[1].strip("/") if API in path else None
        if route is None or not (route in POST_ROUTES or route.startswith(CALL_ROUTES)):
            return await _reply(send, 404, "Not found.")
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if not length.isdigit():
            return await _reply(send, 411, "Send the body with a Content-Length header.")
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        limit = {"upload": MAX_UPLOAD_BYTES, "component_server": MAX_BLOB_REQUEST_BYTES}.get(route, MAX_JSON_BYTES)
        limit = limit if multipart else MAX_JSON_BYTES  # a JSON body is read whole here: the small limit
        if int(length) > limit:
            log.info("request refused: %s body of %s bytes", route, length)
            return await _reply(send, 413, f"The request body is over {limit // 1024} KiB.")
        if route == "upload" and self.store is not None and multipart:
            if not await asyncio.to_thread(self.store.admit_upload, int(length)):
                log.info("upload refused: the disk limit for uploads and outputs is reached")
                return await _reply(send, 507, "The server's space for uploads is full; please try again in a minute.")
            try:  # uploads arriving at the same time each hold their room until they end
                return await self.app(scope, _limited(receive, limit), send)
            finally:
                self.store.upload_done(int(length))
        if route in FILE_ROUTES and multipart:
            return await self.app(scope, _limited(receive, limit), send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _reply(send, 413, f"The request body is over {limit // 1024} KiB.")
        problem = _file_arguments_problem(body)
        if problem:
            log.info("request refused: %s: %s", route, problem)
            return await _reply(send, 400, problem)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def _limited(receive, limit: int):
    """``receive`` that ends the request (as a disconnect) once more than ``limit`` bytes have come."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        return {"type": "http.disconnect"} if seen > limit else message

    return wrapped


def _file_arguments_problem(body: bytes) -> str | None:
    """Why an API call's JSON body is refused (a ``data:`` URL, a path Gradio did not store), else None."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None  # Gradio answers malformed JSON itself (422)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            url, path = item.get("url"), item.get("path")
            if isinstance(url, str) and url.lstrip().lower().startswith("data:"):
                return "data: URLs are not accepted; upload the file first (gradio_client's handle_file does)."
            if "path" in item and path is not None and not stored_file(path):
                return NOT_STORED[0].upper() + NOT_STORED[1:]
            stack.extend(item.values())
    return None


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def guarded_app_kwargs(store: OutputStore) -> dict:
    """``demo.launch(app_kwargs=...)`` that puts :class:`RequestGuard` in front of Gradio's routes."""
    from starlette.middleware import Middleware

    return {"middleware": [Middleware(RequestGuard, store=store)]}


# ----------------------------------------------------------------------------------------------- jobs
STOP_FILE = ".stop"  # written into a job's own folder to stop it: a signal a ZeroGPU worker process can see too
WATCH_EVERY_S = 0.02  # how often the main process looks for a cancel or a lost client while a job runs
GPU_BASE_S = 10.0  # per GPU call on ZeroGPU: its worker moves the weights to the GPU (upper bound)
GPU_FIT_STEP_S = 0.05  # per photo-fit step (2 CPU cores: ~2 s for 40 steps; a GPU is faster)
GPU_FRAME_S = 0.1  # per 512² turntable frame (2 CPU cores)
GPU_VIDEO_FRAME_S = 1.0  # per video frame (preprocessing, head, side-by-side render; 2 CPU cores)
GPU_MAX_S = 300  # never ask ZeroGPU for more than this per call
_MAIN_PID = os.getpid()  # a forked ZeroGPU worker sees a different os.getpid()
_FINAL = ("result", "cancelled", "error")  # the last message of a GPU job


def gpu_seconds(fit_steps: int = 0, turntable_frames: int = 0, video_frames: int = 0, base: float = GPU_BASE_S) -> int:
    """How long to ask ZeroGPU for, from what the request asks the model to do (checked values only).

    The per-item costs are CPU timings (2 cores), an upper bound for a GPU; ZeroGPU stops a call that runs
    past its duration, and schedules shorter requests sooner.

    Args:
        fit_steps: photo-fit steps.
        turntable_frames: turntable frames to render.
        video_frames: frames of a video to reconstruct.
        base: fixed cost of the call (moving the weights, the feed-forward pass, the files).

    Returns:
        whole seconds, at most ``GPU_MAX_S``.
    """
    seconds = base + GPU_FIT_STEP_S * fit_steps + GPU_FRAME_S * turntable_frames + GPU_VIDEO_FRAME_S * video_frames
    return min(GPU_MAX_S, math.ceil(seconds))


@dataclass(eq=False)  # hashed by identity
class Job:
    """One model job: its output folder and how it learns that it should stop.

    The same class serves both sides of ZeroGPU's process boundary. In the app's process ``cancel`` and
    ``alive`` say whether to stop; the job's GPU side (a forked worker on ZeroGPU, a thread elsewhere) gets a
    fresh ``Job`` for the same folder and sees a stop as the file ``STOP_FILE`` appearing in that folder.
    """

    folder: Path
    session: str | None
    cancel: threading.Event = field(default_factory=threading.Event)
    alive: Callable[[], bool] = lambda: True  # False once the visitor's connection is gone
    publish: Callable[[Any], None] = lambda value: None  # hands an early result to the visitor
    progress: Callable[..., Any] | None = None  # progress(fraction, desc=stage): the visitor's progress display

    @property
    def stop_file(self) -> Path:
        """The file whose presence tells the GPU side to stop (inside the job's server-chosen folder)."""
        return self.folder / STOP_FILE

    def stopped(self) -> bool:
        """True when the job should stop: cancelled, the visitor gone, or the stop file written."""
        return self.cancel.is_set() or not self.alive() or self.stop_file.exists()

    def check(self) -> None:
        """Raises :class:`Cancelled` when the job should stop (called between frames and stages)."""
        if self.stopped():
            raise Cancelled()

    def reporter(self, progress: Callable[..., Any] | None = None) -> Callable[[float, str], None]:
        """The pipelines' ``progress(fraction, stage)`` callback: checks for cancellation, then shows the stage.

        Args:
            progress: where to show it (``progress(fraction, desc=stage)``); default: the job's own display.

        Returns:
            the callback.
        """
        show = progress if progress is not None else self.progress

        def report(fraction: float, stage: str) -> None:
            self.check()
            if show is not None:
                show(fraction, desc=stage)

        return report


_TASKS: dict[str, Callable[..., Any]] = {}  # registered work functions, inherited by a forked GPU worker


class GpuTask:
    """A job's work function, registered by name: pickled, it is only that name, so it can cross to a
    ZeroGPU worker process (forked from the app after the functions were registered) and be found there."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function
        self.key = f"{function.__module__}.{function.__qualname__}#{len(_TASKS)}"
        self.__doc__ = function.__doc__
        _TASKS[self.key] = function

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __reduce__(self):
        return _registered_task, (self.key,)


def _registered_task(key: str) -> Callable[..., Any]:
    if key not in _TASKS:
        raise RuntimeError(f"the GPU task {key!r} was registered after the GPU worker started: register work "
                           "functions with gpu_task when the app is built")
    return _TASKS[key]


def gpu_task(function: Callable[..., Any]) -> GpuTask:
    """Registers a job's work function ``function(job, *args)`` so that it can run in ZeroGPU's worker process.

    Call it when the app is built (before the first job), not per request: the worker only knows functions
    that existed when it was forked. The per-request values go to :meth:`JobRunner.stream` as ``args`` and
    must pickle (images, numbers, strings, small dataclasses).

    Args:
        function: ``function(job, *args)``; writes only into ``job.folder``, calls ``job.check()`` between
            steps, ``job.publish(value)`` for early results and ``job.reporter()`` for progress.

    Returns:
        a callable that pickles by name.
    """
    return GpuTask(function)


def _portable(error: Exception) -> Exception:
    """``error`` if it survives pickling (it must cross back from a ZeroGPU worker), else a stand-in."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _gpu_seconds(work: Callable[..., Any], folder: str, args: tuple, duration: float) -> int:
    """ZeroGPU's ``duration`` callable: called with :func:`_gpu_job`'s arguments, returns the request's estimate."""
    return max(1, math.ceil(duration))


def _gpu_job(work: Callable[..., Any], folder: str, args: tuple, duration: float) -> Iterator[tuple]:
    """The GPU side of a job: runs ``work(job, *args)`` and yields what the app's process must see.

    On ZeroGPU this generator runs in the GPU worker process: ``spaces`` pickles the arguments across, and
    every yielded message back. It yields ``("progress", fraction, stage)`` and ``("publish", value)`` while
    the work runs, then one of ``("result", value)``, ``("cancelled",)`` or ``("error", exception,
    traceback)``. The work stops at its next check when the stop file appears in ``folder`` (the app's
    process writes it) or when this generator is closed (``spaces`` closes it when the app stops reading).

    Args:
        work: the registered work function (:func:`gpu_task`; any callable when the job runs in-process).
        folder: the job's server-chosen folder.
        args: the per-request arguments after ``job``.
        duration: the requested GPU time in seconds (read by ``spaces``; unused here).

    Yields:
        the messages above.
    """
    messages: queue.Queue = queue.Queue()
    job = Job(Path(folder), None, publish=lambda value: messages.put(("publish", value)),
              progress=lambda fraction, desc="": messages.put(("progress", fraction, desc)))

    def run() -> None:
        try:
            messages.put(("result", work(job, *args)))
        except Cancelled:
            messages.put(("cancelled",))
        except Exception as error:
            messages.put(("error", _portable(error), traceback.format_exc()))

    thread = threading.Thread(target=run, name="perchead-gpu-job", daemon=True)
    thread.start()
    try:
        while True:
            message = messages.get()
            yield message
            if message[0] in _FINAL:
                return
    finally:
        job.cancel.set()  # closed early (the app stopped reading): the work stops at its next check
        thread.join()
        if os.getpid() != _MAIN_PID:
            _release_memory()


gpu_job = spaces.GPU(duration=_gpu_seconds)(_gpu_job)  # ZeroGPU: a forked GPU worker; elsewhere: _gpu_job itself


def _connection_probe() -> Callable[[], bool]:
    """A cheap check, callable from the worker thread, that the current Gradio event still has a client.

    Gradio marks an event dead when its client's event stream disconnects; a missing queue or event (an
    older or newer Gradio) counts as alive, so the job then stops only on an explicit cancel.
    """
    from gradio.context import LocalContext

    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue_ = getattr(blocks, "_queue", None)
    events = getattr(queue_, "event_ids_to_events", None)
    if event_id is None or not isinstance(events, dict):
        return lambda: True
    event = events.get(event_id)
    return (lambda: True) if event is None else (lambda: getattr(event, "alive", True))


def _release_memory() -> None:
    """Hands freed heap pages back to the OS after a job (glibc keeps them otherwise; RSS would only grow)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _watch(job: Job, done: threading.Event) -> None:
    """Until ``done``: writes the job's stop file as soon as it is cancelled or its visitor is gone."""
    while not done.wait(WATCH_EVERY_S):
        if job.cancel.is_set() or not job.alive():
            try:
                job.stop_file.touch()
            except OSError:  # the folder is gone: nothing left to stop
                pass
            return


class JobRunner:
    """Runs model jobs one at a time, stoppable between frames and stages, also across ZeroGPU's worker process.

    A job's work runs through :data:`gpu_job` (``@spaces.GPU``: in a forked GPU worker on ZeroGPU, in a
    thread elsewhere); the app's process drives it from a worker thread, relays its progress and early
    results, and writes its stop file when the visitor cancels or leaves. The lock is taken in that thread
    and held until the GPU side has stopped, so the next job waits (at most one frame batch) instead of
    running beside a cancelled one.
    """

    def __init__(self, store: OutputStore, gpu: Callable[..., Iterator[tuple]] | None = None):
        """
        Args:
            store: where job folders are made.
            gpu: the GPU-side generator (default :data:`gpu_job`; tests pass ``spaces``' ZeroGPU wrapper of
                :func:`_gpu_job`).
        """
        self.store = store
        self.gpu = gpu or gpu_job
        self.lock = threading.Lock()
        self._jobs: set[Job] = set()
        self._jobs_lock = threading.Lock()

    def cancel_session(self, session: str | None) -> None:
        """Stops the running jobs of a session (its page was closed) and deletes its outputs."""
        if session is None:
            return
        with self._jobs_lock:
            for job in self._jobs:
                if job.session == session:
                    job.cancel.set()
        self.store.end_session(session)

    async def stream(self, request: gr.Request | None, action: str, work: Callable[..., Any],
                     bad_input: tuple[type[Exception], ...] = (), *, args: tuple = (),
                     duration: float = GPU_BASE_S, progress: Callable[..., Any] | None = None) -> AsyncIterator[Any]:
        """Runs ``work(job, *args)`` under the model lock; yields what it publishes, then its result.

        Failures become messages for the visitor; a cancelled or abandoned stream tells the job to stop
        (it does at its next check, and the next job waits for the model lock until then).

        Args:
            request: the Gradio request (its session files the job folder for clean-up).
            action: what the job does, for messages and the log ("reconstruction", "editing").
            work: does the job; writes only into ``job.folder``; calls ``job.check()`` between steps,
                ``job.publish(value)`` for early results (e.g. the head before its turntable) and reports
                through ``job.reporter()``. On ZeroGPU it must come from :func:`gpu_task`.
            bad_input: exception types whose message tells the visitor what is wrong with the input.
            args: the request's values for ``work`` (they must pickle on ZeroGPU).
            duration: GPU seconds to ask ZeroGPU for (:func:`gpu_seconds`); ignored elsewhere.
            progress: the visitor's progress display (the handler's ``gr.Progress``).

        Yields:
            every published value, then whatever ``work`` returns.
        """
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        session = session_key(request)
        job = Job(self.store.new_folder(session), session, alive=_connection_probe(), progress=progress,
                  publish=lambda value: loop.call_soon_threadsafe(updates.put_nowait, (False, value)))
        with self._jobs_lock:
            self._jobs.add(job)
        future = asyncio.ensure_future(asyncio.to_thread(self._locked, job, action, work, tuple(args), duration))
        future.add_done_callback(lambda done: done.cancelled() or done.exception())  # retrieved even if abandoned
        future.add_done_callback(lambda done: updates.put_nowait((True, None)))  # after every published value
        try:
            while True:
                finished, value = await updates.get()
                if finished:
                    break
                yield value
            yield future.result()
        except (asyncio.CancelledError, GeneratorExit):  # the visitor pressed stop or left: let the worker wind down
            job.cancel.set()
            raise
        except Cancelled:
            raise visitor_error("The job was stopped.", "Stopped") from None
        except bad_input as error:
            log.info("%s refused: %s", action, str(error).splitlines()[0] if str(error) else type(error).__name__)
            raise visitor_error(str(error), "Unusable input") from None
        except gr.Error:
            raise
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("%s failed unexpectedly (reference %s)", action, reference)
            raise visitor_error(f"The {action} failed unexpectedly (reference {reference}). Please try again, "
                                "or with another input.") from None
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)

    async def run(self, request: gr.Request | None, action: str, work: Callable[..., Any],
                  bad_input: tuple[type[Exception], ...] = (), **options) -> Any:
        """:meth:`stream` for jobs without early results: returns ``work``'s result (same ``options``)."""
        result = None
        async with aclosing(self.stream(request, action, work, bad_input, **options)) as stream:
            async for result in stream:
                pass
        return result

    def _locked(self, job: Job, action: str, work: Callable[..., Any], args: tuple, duration: float) -> Any:
        with self.lock:
            start = time.perf_counter()
            log.info("%s started (job %s)", action, job.folder.name)
            try:
                job.check()  # it may have been cancelled while it waited for the lock
                return self._drive(job, work, args, duration)
            except BaseException as error:
                self.store.remove(job.folder)
                if isinstance(error, Cancelled):
                    log.info("%s stopped after %.2f s (job %s): cancelled, or the visitor left", action,
                             time.perf_counter() - start, job.folder.name)
                raise
            finally:
                job.stop_file.unlink(missing_ok=True)  # a stop that came as the job finished
                self.store.release(job.folder)
                _release_memory()
                log.info("%s ended after %.2f s (job %s)", action, time.perf_counter() - start, job.folder.name)

    def _drive(self, job: Job, work: Callable[..., Any], args: tuple, duration: float) -> Any:
        """Runs the GPU side of ``job`` and relays its messages; returns its result or raises its outcome."""
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(job, done), name="perchead-job-watch", daemon=True)
        watcher.start()
        messages = self.gpu(work, str(job.folder), args, duration)
        outcome: tuple | None = None
        try:
            for message in messages:
                if message[0] == "progress":
                    if job.progress is not None:
                        job.progress(message[1], desc=message[2])
                elif message[0] == "publish":
                    job.publish(message[1])
                else:
                    outcome = message
        finally:
            done.set()
            watcher.join()
            if outcome is None:  # an error on this side: stop the GPU side at its next check, and wait for it
                try:
                    job.stop_file.touch()
                except OSError:
                    pass
            messages.close()  # on ZeroGPU: spaces closes the worker's generator at its next yield and waits
        if outcome is None:
            raise RuntimeError("the GPU job ended without a result")
        if outcome[0] == "result":
            return outcome[1]
        if outcome[0] == "cancelled":
            raise Cancelled()
        error, trace = outcome[1], outcome[2]
        error.add_note(f"raised in the GPU job:\n{trace}")
        raise error
