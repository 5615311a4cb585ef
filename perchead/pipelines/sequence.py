"""Video → one 3D head per frame (paper §4.3, Figure 4: reconstructions across video frames).

The paper applies the single-image model frame by frame, without fine-tuning or a temporal model, and
finds the heads consistent in geometry and appearance while mouth and eyes follow the video. So does
this pipeline; what it adds is what a video needs before the model sees it:

1. **decode** the clip with imageio-ffmpeg's bundled ffmpeg, sampled at ``fps`` (at most 10 per second by
   default), downscaled while decoding; only ordinary video containers are opened (MP4/MOV, WebM/MKV,
   AVI; no playlists, no other protocols than local files), and clips longer than ``max_seconds`` are
   refused rather than cut, so a visitor knows what was reconstructed;
2. **track** one face: the first frame with faces picks one (``face_index``, 0 = the largest), every later
   frame takes the face whose box overlaps the previous one best, so another person who comes closer is
   never picked up; frames where it is not found take their crop from their neighbours;
3. **smooth** the crop (centre, side, roll) over time with a centred moving average (``smooth_s``; the
   window shrinks symmetrically at the ends, so steady motion passes unchanged), so the detector's frame
   to frame jitter does not become a shaking head;
4. **cut out** every frame with the smoothed crop (:func:`perchead.photo.matting.cut_out`: the same
   matte and white background as a photo) and **reconstruct** the frames in batches;
5. **write** a side-by-side H.264 video — the model input | the head rendered from a camera that swings
   slowly around it — and a zip with one ``.ply`` per frame.

Example::

    from perchead.pipelines.sequence import SequencePipeline

    seq = SequencePipeline.from_pretrained("weights_card")
    out = seq("talking.mp4", "outputs/talking")          # out.video, out.heads (zip of .ply), out.timings

The network's head alone is an averaged likeness, so the heads are then fitted to the frames
(:mod:`perchead.fit`, ``fit_first_steps`` / ``fit_next_steps``): the first frame's head fully (its latent
stage and ``fit_first_steps`` Gaussian steps, a few seconds on a CPU), and every next frame starting from
the previous frame's fitted head, for only ``fit_next_steps`` steps. Each frame is seen from its own head
pose (from the face-mesh landmarks, as a photo's, smoothed over time like the crop), so a head that turns
in the clip is compared from the turned view rather than painted over. Fitting each frame from scratch would
cost the full fit per frame and undo the consistency that smoothing buys; warm-started, a frame changes only
where its photo differs from the last (the mouth, the eyes, the turn of the head). What the frames never
show (the back, the sides turned away) keeps the first frame's fit. ``fit_first_steps = 0`` gives the
network's heads, unfitted, as the paper does.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from perchead.fit.config import FitConfig, check_steps, with_steps
from perchead.fit.driver import fit_to_photo
from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians, save_ply
from perchead.progress import Progress, no_progress
from perchead.geometry.images import to_uint8
from perchead.photo.config import PreprocessConfig
from perchead.photo.crop import Box, detect_face, face_to_crop, pose_to_crop, whole_image_crop
from perchead.photo.matting import cut_out
from perchead.pipelines.reconstruct import PercHeadPipeline
from perchead.export.turntable import write_mp4

# Demuxers ffmpeg may use on an upload (no playlists, concat lists or image formats) and the only protocol.
FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi"
FFMPEG_INPUT = ["-protocol_whitelist", "file", "-format_whitelist", FORMATS]


class ClipError(ValueError):
    """A video that cannot be used (not a video, too long, too large, no face); the message says what to do."""


@dataclass
class SequenceConfig:
    """How a clip becomes heads and videos. Every value is ours (the paper gives no video recipe).

    Attributes:
        fps: frames per second taken from the clip (fewer when the clip has fewer).
        max_seconds: longer clips are refused (trim them first), not cut silently.
        max_side: frames are downscaled while decoding to this longest side.
        max_source_pixels: larger frames (as stored) are refused (4K UHD is the largest accepted).
        min_side: smaller frames are refused.
        smooth_s: span of the centred moving average over the crop (centre, log side, roll); 0 = off.
        min_iou: a face in the next frame continues the track when its box overlaps the last one by this much.
        batch_size: frames per model call.
        panel_size: side of each half of the side-by-side video, pixels.
        orbit_deg: the render camera swings this far to either side of the front …
        orbit_period_s: … once per this many seconds of video.
        elevation_deg: the render camera's elevation.
        refine: run the CNN refiner on the renders; None = only on CUDA (as the turntable).
        crf: x264 quality of the side-by-side video (lower = better, larger).
        fit_first_steps: photo-fit steps of the first frame's head (after the fit's latent stage); 0 = no
            fit at all: the network's heads, as in the paper.
        fit_next_steps: photo-fit steps of every next frame, starting from the previous frame's fitted head
            (no latent stage, no new split, the previous input camera, no camera or head-outline change: only
            the Gaussians move, so the crop's jitter does not shake the head); 0 = the first frame's fitted
            head for every frame.
        fit_preset: the :class:`~perchead.fit.config.FitConfig` preset of those fits (its finer split of the
            face is left out: the warm-started frames need one Gaussian per template point).
    """

    fps: float = 10.0
    max_seconds: float = 10.0
    max_side: int = 960
    max_source_pixels: int = 3840 * 2160
    min_side: int = 32
    smooth_s: float = 0.5
    min_iou: float = 0.1
    batch_size: int = 8
    panel_size: int = 256
    orbit_deg: float = 30.0
    orbit_period_s: float = 6.0
    elevation_deg: float = 5.0
    refine: bool | None = None
    crf: int = 20
    fit_first_steps: int = 40
    fit_next_steps: int = 5
    fit_preset: str = "fast"

    def __post_init__(self) -> None:
        check_steps(self.fit_first_steps)
        check_steps(self.fit_next_steps)
        FitConfig.preset(self.fit_preset)  # raises for an unknown name
        if not (0 < self.fps <= 60):
            raise ValueError(f"fps must lie in (0, 60], got {self.fps}")
        if not (0 < self.max_seconds <= 600):
            raise ValueError(f"max_seconds must lie in (0, 600], got {self.max_seconds}")
        if self.batch_size < 1 or self.panel_size < 16 or self.max_side < self.min_side:
            raise ValueError("batch_size must be ≥ 1, panel_size ≥ 16 and max_side ≥ min_side")
        if self.smooth_s < 0:
            raise ValueError(f"smooth_s must be 0 or more, got {self.smooth_s}")

    def fit_configs(self) -> tuple[FitConfig, FitConfig] | None:
        """(the first frame's fit, every next frame's warm-started fit), or None without a fit."""
        if not self.fit_first_steps:
            return None
        first = with_steps(FitConfig.preset(self.fit_preset, {"gaussians.split_share": 0.0}), self.fit_first_steps)
        # the next frames keep the first frame's camera, head outline and turn: a few steps of the Gaussians
        following = with_steps(first.with_overrides({"latent.steps": 0, "pose.search": False, "camera.steps": 0,
                                                     "head.enabled": False}), self.fit_next_steps)
        return first, following

    @property
    def max_frames(self) -> int:
        """The most frames a clip of ``max_seconds`` gives at ``fps`` (the fps filter may round one up)."""
        return math.floor(self.max_seconds * self.fps) + 1


@dataclass
class Clip:
    """Decoded frames of a video.

    Attributes:
        frames: RGB frames at ``fps``, downscaled. ``[T, H, W, 3]`` uint8
        fps: frames per second of ``frames``.
        source_size: (width, height) as stored.
        duration: seconds, as the container states (0 when it does not).
        notes: remarks (downscaling, sampling).
    """

    frames: np.ndarray  # [T, H, W, 3]
    fps: float
    source_size: tuple[int, int]
    duration: float
    notes: list[str] = field(default_factory=list)


@dataclass
class HeadSequence:
    """What :class:`SequencePipeline` returns.

    Attributes:
        video: the side-by-side .mp4 (model input | the head from a swinging camera).
        heads: a zip with one 3DGS ``.ply`` per frame (``frame_0000.ply`` …).
        frames: number of frames (= heads).
        fps: frames per second of the video.
        raw_crops: per-frame crop from the tracked face, NaN where it was not found. ``[T, 4]`` (cx, cy, side, roll°)
        crops: the smoothed crops that were used. ``[T, 4]``
        face_boxes: the tracked face's box per frame, None where it was not found.
        timings: seconds per stage (``decode``, ``track``, ``cut_out``, ``reconstruct``, ``fit`` when fitted,
            ``render``, ``write``) and ``total``.
        fitted: whether the heads were fitted to the frames (``SequenceConfig.fit_first_steps``).
        notes: remarks for the user.
    """

    video: Path
    heads: Path
    frames: int
    fps: float
    raw_crops: np.ndarray  # [T, 4]
    crops: np.ndarray  # [T, 4]
    face_boxes: list[Box | None]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)
    fitted: bool = False


# ----------------------------------------------------------------------------------------------- decoding
def probe_clip(path: str | os.PathLike, config: SequenceConfig | None = None) -> dict:
    """Reads a video's header only (no decoding) and refuses what the pipeline would refuse anyway.

    Returns:
        ``{"size": (width, height), "fps": float, "duration": float}`` (0 where the file does not say).

    Raises:
        ClipError: missing or empty file, not a video in a supported container, frames too large or too
            small, longer than ``max_seconds``.
    """
    config = config or SequenceConfig()
    meta, frames = _open(path, ["-frames:v", "1"])
    frames.close()  # stops ffmpeg: only the header was wanted
    width, height = meta["source_size"]
    if width * height > config.max_source_pixels:
        raise ClipError(f"the video's frames are {width}×{height}, above the {config.max_source_pixels / 1e6:.1f}-megapixel "
                        "limit (4K); please scale it down")
    if min(width, height) < config.min_side:
        raise ClipError(f"the video's frames are only {width}×{height} pixels; at least {config.min_side}×{config.min_side} "
                        "is needed")
    duration = float(meta.get("duration") or 0.0)
    if duration > config.max_seconds + 0.05:
        raise ClipError(f"the clip is {duration:.1f} s long; at most {config.max_seconds:g} s is accepted: please trim it")
    return {"size": (width, height), "fps": float(meta.get("fps") or 0.0), "duration": duration}


def read_clip(path: str | os.PathLike, config: SequenceConfig | None = None) -> Clip:
    """Decodes a short clip at ``config.fps`` (or the clip's own rate when lower), downscaled to ``max_side``.

    Decoding stops after ``max_frames`` + 1 frames whatever the header claims, so a file that lies about its
    length costs no more than a legitimate one.

    Raises:
        ClipError: as :func:`probe_clip`, a clip with fewer than 2 frames, or one that decodes to more
            frames than ``max_seconds`` allows.
    """
    config = config or SequenceConfig()
    info = probe_clip(path, config)
    fps = min(config.fps, info["fps"]) if info["fps"] > 0 else config.fps
    side = config.max_side
    scale = f"scale=w='min(iw,{side})':h='min(ih,{side})':force_original_aspect_ratio=decrease:force_divisible_by=2"
    output = ["-an", "-sn", "-dn", "-vf", f"fps={fps:.6g},{scale}", "-frames:v", str(config.max_frames + 1)]
    meta, frames_bytes = _open(path, output)
    width, height = meta["size"]
    frames = []
    try:
        for raw in frames_bytes:
            frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
    except RuntimeError as error:  # a truncated or corrupt stream
        if len(frames) < 2:
            raise ClipError("the video is corrupt or truncated and cannot be decoded") from error
    finally:
        frames_bytes.close()
    if len(frames) > config.max_frames:
        raise ClipError(f"the clip is longer than {config.max_seconds:g} s; please trim it")
    if len(frames) < 2:
        raise ClipError("the file holds a single frame (a still image?): use the Reconstruction tab for photos, "
                        "or upload a clip of at least two frames")
    notes = []
    if (width, height) != info["size"]:
        notes.append(f"frames downscaled from {info['size'][0]}×{info['size'][1]} to {width}×{height}")
    if info["fps"] > fps + 0.01:
        notes.append(f"{len(frames)} frames taken at {fps:g} per second (the clip has {info['fps']:.3g})")
    return Clip(np.stack(frames), fps, info["size"], info["duration"], notes)


def _open(path: str | os.PathLike, output: list[str]):
    """(metadata, frame generator) from imageio-ffmpeg with the whitelisted containers; failures → ClipError."""
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise ClipError("no such video file")
    if path.stat().st_size == 0:
        raise ClipError("the file is empty (0 bytes)")
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)  # "frame size differs from the source": intended
    frames = imageio_ffmpeg.read_frames(str(path), input_params=FFMPEG_INPUT, output_params=output)
    try:
        meta = next(frames)
    except Exception as error:  # ffmpeg could not open it: not a video, an unlisted format, corrupt header
        frames.close()
        raise ClipError("the file is not a video that can be read; please upload an MP4, MOV, WebM, MKV or AVI "
                        "clip") from error
    if not meta.get("source_size") or not meta.get("size"):
        frames.close()
        raise ClipError("the file holds no video stream")
    return meta, frames


# ----------------------------------------------------------------------------------------------- tracking
def _iou(a: Box, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of box ``a`` with each of ``boxes`` ``[K, 4]`` → ``[K]``."""
    ix = np.clip(np.minimum(a[2], boxes[:, 2]) - np.maximum(a[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], boxes[:, 3]) - np.maximum(a[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def track_face(frames: np.ndarray, config: PreprocessConfig, face_index: int = 0, min_iou: float = 0.1,
               analyzer=None, progress: Progress = no_progress) -> tuple[np.ndarray, list, list, list[str]]:
    """Follows one face through the frames and gives its crop (the photo framing) in each.

    Args:
        frames: ``[T, H, W, 3]`` uint8.
        config: the photo framing (:meth:`PercHeadPipeline.preprocess_config`).
        face_index: which face of the first frame with faces to follow (0 = the largest).
        min_iou: the least overlap with the previous box for a face to continue the track.
        analyzer: a :class:`perchead.photo.faces.FaceAnalyzer`, or None for the Haar cascade (largest face only).
        progress: called with (fraction of frames done, stage) per frame; may raise to stop.

    Returns:
        (crops ``[T, 4]`` cx, cy, side, roll° with NaN rows where the face was not found, face boxes or None,
        face-mesh landmarks ``[468, 3]`` or None, notes).
    """
    from perchead.photo import faces as face_module

    T = len(frames)
    crops = np.full((T, 4), np.nan)
    boxes: list[Box | None] = [None] * T
    landmarks: list[np.ndarray | None] = [None] * T
    previous, others, lost = None, 0, 0
    for t, rgb in enumerate(frames):
        progress(t / T, f"finding the face: frame {t + 1}/{T}")
        height, width = rgb.shape[:2]
        found = analyzer.detect(rgb) if analyzer is not None else []
        if analyzer is None:
            haar = detect_face(rgb)
            found = [] if haar is None else [face_module.Face(tuple(haar), 1.0, np.zeros((6, 2)))]
        if not found:
            continue
        if previous is None:
            if face_index >= len(found):
                continue  # the asked-for face is not in this frame yet
            face = found[face_index]
            others = max(others, len(found) - 1)
        else:
            overlap = _iou(previous, np.array([f.box for f in found], dtype=np.float64))
            if overlap.max() < min_iou:
                lost += 1
                continue  # only other people: the tracked face is hidden or gone in this frame
            face = found[int(overlap.argmax())]
            others = max(others, len(found) - 1)
        previous = boxes[t] = tuple(float(v) for v in face.box)
        box, roll = face_to_crop(face.box, config), 0.0
        if analyzer is not None:
            if face.landmarks is None:
                face = analyzer.landmarks(rgb, face)
            landmarks[t] = face.landmarks
            try:
                box, roll = pose_to_crop(face_module.estimate_pose(face.landmarks, width, height, config.photo_fov_deg), config)
            except RuntimeError:
                pass  # framed by the face box, as a photo would be
        crops[t] = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], roll)
    found_in = int(np.isfinite(crops[:, 0]).sum())
    notes = []
    if found_in and found_in < T:
        notes.append(f"the face was found in {found_in} of {T} frames; the others take their crop from their neighbours")
    if others:
        notes.append(f"up to {others + 1} faces in a frame: followed face {face_index} of the first frame with faces "
                     "(by size, 0 = the largest) by its overlap from frame to frame")
    if analyzer is None:
        notes.append("face networks unavailable: the fallback Haar cascade found the faces (no head pose, rougher crops)")
    return crops, boxes, landmarks, notes


def smooth_crops(crops: np.ndarray, radius: int) -> np.ndarray:
    """Fills missing crops from their neighbours and smooths them over time.

    Gaps (NaN rows) are interpolated linearly between the nearest frames with a crop (held at the ends);
    then every value becomes the mean of the ``2·k + 1`` frames centred on it, ``k = min(radius, t, T−1−t)``
    (the window shrinks symmetrically at the ends, so a constant or steadily moving crop is unchanged).
    The side is averaged in log space (a zoom is a ratio), the roll unwrapped first.

    Args:
        crops: ``[T, 4]`` (cx, cy, side, roll°), at least one row finite.
        radius: frames on each side of the window; 0 only fills the gaps.

    Returns:
        ``[T, 4]`` without NaN.
    """
    crops = np.asarray(crops, dtype=np.float64)
    valid = np.isfinite(crops).all(axis=1)
    if not valid.any():
        raise ValueError("smooth_crops needs at least one frame with a crop")
    T = len(crops)
    t, known = np.arange(T), np.nonzero(valid)[0]
    values = crops[valid].copy()  # [K, 4]
    values[:, 2] = np.log(values[:, 2])
    values[:, 3] = np.degrees(np.unwrap(np.radians(values[:, 3])))
    filled = np.stack([np.interp(t, known, values[:, c]) for c in range(4)], axis=1)  # [T, 4]
    cumulative = np.concatenate([np.zeros((1, 4)), np.cumsum(filled, axis=0)])  # [T + 1, 4]
    k = np.minimum(np.minimum(t, T - 1 - t), max(0, int(radius)))  # [T]
    smoothed = (cumulative[t + k + 1] - cumulative[t - k]) / (2 * k + 1)[:, None]  # [T, 4]
    smoothed[:, 2] = np.exp(smoothed[:, 2])
    return smoothed


def _box(crop: np.ndarray) -> Box:
    cx, cy, side = (float(v) for v in crop[:3])
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


# ----------------------------------------------------------------------------------------------- pipeline
class SequencePipeline:
    """A short video → one 3D head per frame, a side-by-side video and a zip of ``.ply`` files.

    Args:
        pipeline: the single-image :class:`~perchead.pipelines.reconstruct.PercHeadPipeline` (its model,
            device and photo framing).
        config: :class:`SequenceConfig` (default settings when None).
    """

    def __init__(self, pipeline: PercHeadPipeline, config: SequenceConfig | None = None):
        self.pipeline = pipeline
        self.config = config or SequenceConfig()

    @classmethod
    def from_pretrained(cls, repo_id_or_folder: str, device: str | torch.device | None = None,
                        config: SequenceConfig | None = None) -> "SequencePipeline":
        """Loads a checkpoint (folder or Hub repo id) as :meth:`PercHeadPipeline.from_pretrained` does."""
        return cls(PercHeadPipeline.from_pretrained(repo_id_or_folder, device=device), config)

    @torch.no_grad()
    def __call__(self, video: str | os.PathLike, folder: str | os.PathLike, *, face_index: int = 0,
                 remove_background: bool = True, use_whole_image: bool = False,
                 progress: Progress = no_progress) -> HeadSequence:
        """Reconstructs the tracked face of every sampled frame and writes the videos and heads into ``folder``.

        Args:
            video: path of the clip (MP4, MOV, WebM, MKV or AVI; at most ``config.max_seconds``).
            folder: where ``side_by_side.mp4`` and ``heads.zip`` go (created).
            face_index: which face to follow, by size in the first frame with faces (0 = the largest).
            remove_background: cut the head out (selfie matte, else GrabCut); off keeps the crop's background.
            use_whole_image: when no frame shows a face, use the whole frames instead of failing.
            progress: called with (fraction, stage) per frame and stage; may raise to stop the work (the
                files written so far stay in ``folder`` for the caller to remove).

        Returns:
            :class:`HeadSequence`.

        Raises:
            ClipError: the clip cannot be used (see :func:`read_clip`), or no frame shows a face.
            ValueError: a negative ``face_index``.
        """
        from perchead.photo import faces as face_module

        if isinstance(face_index, bool) or not isinstance(face_index, int) or face_index < 0:
            raise ValueError(f"face_index must be a whole number ≥ 0 (0 = the largest face), got {face_index!r}")
        config, pipe, timings = self.config, self.pipeline, {}
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        start = last = time.perf_counter()

        def stage(name: str) -> None:
            nonlocal last
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - last
            last = now

        # 1. decode
        progress(0.0, "reading the video")
        clip = read_clip(video, config)
        frames, T = clip.frames, len(clip.frames)  # [T, H, W, 3]
        notes = list(clip.notes)
        stage("decode")
        # 2. track one face; 3. smooth its crop over time
        prep_config = pipe.preprocess_config(remove_background=remove_background)
        analyzer = face_module.load_analyzer()
        raw, boxes, landmarks, track_notes = track_face(
            frames, prep_config, face_index, config.min_iou, analyzer,
            progress=lambda done, what: progress(0.02 + 0.28 * done, what))  # fmt: skip
        notes += track_notes
        if np.isfinite(raw[:, 0]).any():
            crops = smooth_crops(raw, round(config.smooth_s * clip.fps / 2))  # [T, 4]
        elif use_whole_image:
            height, width = frames.shape[1:3]
            whole = np.array(_centre_side(whole_image_crop(width, height)) + (0.0,))
            crops = np.tile(whole, (T, 1))
            notes.append("no face found in any frame: used the whole frames")
        else:
            which = "" if face_index == 0 else f" (face {face_index} was asked for)"
            raise ClipError(f"no face was found in any frame of the video{which}; use a clip showing a face, or "
                            "enable 'use the whole image'")
        stage("track")
        fits, previous = config.fit_configs(), None
        views = self._input_views(fits, landmarks, frames.shape[2], frames.shape[1], prep_config, clip.fps)
        # 4.–5. cut out, reconstruct in batches, (fit,) render, write as they come
        refine = pipe.device.type == "cuda" if config.refine is None else config.refine
        azimuths = config.orbit_deg * np.sin(2 * np.pi * np.arange(T) / clip.fps / config.orbit_period_s)  # [T]
        cameras = pipe.model.default_cameras(azimuths.tolist(), config.elevation_deg, size=config.panel_size)
        heads_path, video_path = folder / "heads.zip", folder / "side_by_side.mp4"
        mask_sources: set[str] = set()

        def side_by_side():
            nonlocal previous
            with zipfile.ZipFile(heads_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
                for first in range(0, T, config.batch_size):
                    batch = range(first, min(T, first + config.batch_size))
                    images, masks = [], []
                    for t in batch:
                        progress(0.3 + 0.7 * first / T, f"frame {t + 1}/{T}: cutting out")
                        image, mask, source, _, _ = cut_out(
                            frames[t], _box(crops[t]), float(crops[t, 3]), prep_config, head_box=boxes[t],
                            landmarks=landmarks[t], analyzer=analyzer)  # fmt: skip
                        images.append(image)
                        masks.append(mask)
                        mask_sources.add(source)
                    stage("cut_out")
                    inputs = torch.cat(images)  # [B, 3, S, S]
                    if fits is None or previous is None:  # warm-started frames need no prediction
                        gaussians = pipe(inputs, torch.cat(masks)).gaussians  # [B, N, …]
                        stage("reconstruct")
                    heads = []
                    for b, t in enumerate(batch):
                        if fits is not None:
                            progress(0.3 + 0.7 * first / T, f"frame {t + 1}/{T}: fitting the head to the frame")
                            predicted = gaussians[b] if previous is None else None  # only the first is used
                            previous = self._fit(fits, previous, predicted, images[b], masks[b], views[t])
                            heads.append(previous.gaussians)
                            stage("fit")
                        else:
                            heads.append(gaussians[b])
                    gaussians = Gaussians.stack(heads)  # [B, N, …]
                    for b, t in enumerate(batch):
                        rgb = pipe.model.render_views(gaussians[b : b + 1], cameras[t : t + 1], refine=refine).rgb
                        right = to_uint8(rgb[0, 0])  # [P, P, 3]
                        left = np.asarray(Image.fromarray(to_uint8(inputs[b])).resize(
                            (config.panel_size, config.panel_size), Image.Resampling.BICUBIC))  # [P, P, 3]
                        stage("render")
                        path = folder / f"frame_{t:04d}.ply"
                        save_ply(gaussians[b].detach().to("cpu"), path)
                        archive.write(path, path.name)
                        path.unlink()
                        stage("write")
                        yield np.concatenate([left, right], axis=1)  # [P, 2P, 3]
                        progress(0.3 + 0.7 * (t + 1) / T, f"frame {t + 1}/{T}: 3D head rendered")

        written = write_mp4(side_by_side(), video_path, fps=clip.fps, crf=config.crf)
        stage("write")
        if "grabcut" in mask_sources and analyzer is None:
            notes.append("the heads were cut out with GrabCut (the matting network is unavailable)")
        if not refine:
            notes.append("the renders skip the final sharpening step to stay quick on a CPU")
        if fits is None:
            notes.append("the heads are the network's prediction for each frame, not fitted to the frames: an "
                         "averaged likeness")
        else:
            notes.append(f"the heads are fitted to the frames: the first frame's head for {config.fit_first_steps} "
                         f"steps, every next frame starting from the previous frame's fitted head for "
                         f"{config.fit_next_steps} steps; the sides and back that no frame shows are the network's "
                         "guess")
        progress(1.0, "done")
        timings["total"] = time.perf_counter() - start
        return HeadSequence(video_path, heads_path, written, clip.fps, raw, crops, boxes, timings, notes,
                            fitted=fits is not None)

    def _input_views(self, fits, landmarks: list, width: int, height: int, prep_config: PreprocessConfig,
                     fps: float) -> list[Cameras | None]:
        """Each frame's input camera for the fit: the head pose from its face-mesh landmarks (as a photo's),
        smoothed over time like the crop (frames without landmarks take their neighbours'); all None without a
        fit or without any landmarks (the first frame's camera is then searched and kept)."""
        from perchead.geometry.cameras import orbit_cameras
        from perchead.photo import faces as face_module

        T = len(landmarks)
        if fits is None:
            return [None] * T
        angles = np.full((T, 4), np.nan)  # (yaw, pitch, 1, 0): smoothed as a crop is
        for t, points in enumerate(landmarks):
            if points is not None:
                try:
                    pose = face_module.estimate_pose(points, width, height, prep_config.photo_fov_deg)
                except RuntimeError:
                    continue
                angles[t] = (pose.yaw_deg, pose.pitch_deg, 1.0, 0.0)
        if not np.isfinite(angles[:, 0]).any():
            return [None] * T
        angles = smooth_crops(angles, round(self.config.smooth_s * fps / 2))  # [T, 4]
        r, offset = self.pipeline.model.config.render, fits[0].pose.landmark_pitch_offset_deg
        return [orbit_cameras([float(yaw)], [max(-89.0, min(89.0, float(pitch) + offset))], radius=r.radius,
                              fov_deg=r.fov_deg, size=self.pipeline.image_size) for yaw, pitch, _, _ in angles]

    def _fit(self, fits: tuple[FitConfig, FitConfig], previous, predicted: Gaussians | None, image: torch.Tensor,
             mask: torch.Tensor, camera: Cameras | None):
        """One frame's photo-fit: the first frame's from the network's head ``[N, …]``, every next one
        warm-started from ``previous`` (a :class:`~perchead.fit.driver.FitResult`). ``image`` ``[1, 3, S, S]``,
        ``mask`` ``[1, 1, S, S]``; ``camera``: the frame's head pose (None: searched for the first frame, the
        previous one's after). Returns the FitResult."""
        first, following = fits
        with torch.enable_grad():
            if previous is None:
                return fit_to_photo(self.pipeline.model, predicted, image, mask, camera=camera, config=first)
            return fit_to_photo(self.pipeline.model, previous.gaussians, image, mask,
                                camera=camera if camera is not None else previous.camera, config=following)


def _centre_side(box: Box) -> tuple[float, float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0])
