"""Photo preprocessing: any portrait → the square, white-background head crop PercHead was trained on.

PercHead (paper §3.1, §4) feeds the lift encoder an image of the head with its background removed and a
foreground mask (only foreground patches are encoded). Our model's input views are
``orbit_cameras(radius=0.7 m, fov_deg=30)`` renders of a head centred at the origin, so a photo has to be
cropped to the same framing before it goes in. Everything here works offline: face detection with
OpenCV's bundled Haar cascades, background removal with GrabCut seeded by the head box (or the image's
own alpha channel), and an optional 19-class face parser hook that replaces GrabCut when configured.

Real photos go through networks trained on real faces (:mod:`perchead.pipelines.faces`, MediaPipe's
BlazeFace, face mesh and selfie segmentation on the CPU): every face is found (largest first, choose
another with ``face_index``), its 468 landmarks give the head pose by PnP, the pose gives the crop (centre
= the head centre's projection, side = the training frame at the head's depth, rotated so the head is
upright), and the selfie network gives the matte. Without those model files (or with
``detector="haar"``) the Haar cascade + GrabCut path below runs instead, with a note saying so; the
result records which path ran (``detector``, ``mask_source``).

Framing (how a face box becomes a crop), derived from the training cameras:

* The frame covers ``2 · radius · tan(fov / 2)`` = 2 · 0.7 · tan 15° ≈ 0.375 m at the head centre.
* A head is ≈ 0.23 m tall (crown to chin), so it fills 0.23 / 0.375 ≈ 61 % of the image height.
* A Haar face box spans roughly brow-to-mouth and cheek-to-cheek, ≈ 0.15 m on a real head (≈ 65 % of
  the head height). Hence crop side = box side × 0.375 / 0.15 = 2.5 × the box side.
* The box centre sits near the nose, below the head centre (whose height includes the hair), by
  ≈ 0.10 × the box side; the crop centre is moved up by that much.
* When the image has an alpha channel, the silhouette gives the head directly: its top row is the crown,
  and the head width is the widest row within 1.1 head widths below the crown (found by a short fixed
  point iteration, so shoulders further down are ignored). In the training views (measured on
  test-split synthetic heads over 7 azimuths, see tests) the head is 0.535 of the frame wide
  (≈ 0.2 m / 0.375 m) and its crown is 0.13 of the frame below the top, so the crop side is
  head width / 0.535 and the crop top is the crown minus 0.13 × side: renders made with the training
  cameras map (almost) onto themselves, and a cut-out portrait with shoulders is framed like them.

All the numbers live in :class:`PreprocessConfig`; :meth:`PreprocessConfig.from_model_config` takes the
image size, radius and field of view from a model's render config.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
ParseFn = Callable[[np.ndarray], np.ndarray]  # RGB uint8 [H, W, 3] → class labels int [H, W] (0..18)
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive

WHITE = 255
_CASCADES = (  # (file, flipped): tried in this order until one finds a face
    ("haarcascade_frontalface_default.xml", False),
    ("haarcascade_frontalface_alt2.xml", False),
    ("haarcascade_profileface.xml", False),  # faces looking to the image's left
    ("haarcascade_profileface.xml", True),  # the same cascade on the mirrored image: faces looking right
)


class PreprocessError(ValueError):
    """An input photo that cannot be turned into a model input; the message says why and what to do."""


@dataclass
class PreprocessConfig:
    """How photos become model inputs. Every value is ours (the paper does not give a crop recipe).

    Attributes:
        size: side of the square model input in pixels (the model's render image size).
        radius: training camera distance from the head centre in metres (framing).
        fov_deg: training camera field of view in degrees (framing).
        head_height_m: crown-to-chin height of a typical head in metres.
        face_box_m: physical side of a Haar face box on a typical head in metres.
        face_center_shift: face-box centre lies this many box sides below the head centre.
        alpha_width_fill: fraction of the frame width a head's silhouette fills in the training views.
        alpha_top: distance of the crown below the frame top, as a fraction of the frame, in the training views.
        remove_background: mask the background (alpha, face parser or GrabCut); off keeps the whole crop.
        auto_crop: find the head and crop around it; off uses the whole image padded to a square.
        use_whole_image: when no face is found, use the whole image instead of raising.
        max_side: working resolution: larger images are downscaled (early, while decoding) to this side.
        max_pixels: larger images are refused as decompression bombs (PIL's own default limit).
        min_side: smaller images are refused.
        grabcut_size: side of the crop GrabCut runs on (speed), the mask is resized to ``size`` after.
        grabcut_iters: GrabCut iterations.
        parser: optional 19-class face parser; labels ``!= 0`` (background) become the mask.
        detector: "auto" (MediaPipe networks when their files are there, else Haar), "mediapipe"
            (error when unavailable) or "haar" (the OpenCV fallback path, also for comparisons).
        matting: "auto" (selfie network when the MediaPipe path ran, else GrabCut), "network" or "grabcut".
        face_index: which detected face to use, 0 = the largest (default); faces are sorted by size.
        align_roll: rotate the crop so the head is upright (MediaPipe path).
        photo_fov_deg: field of view assumed for a photo across its longer side, for the head pose.
        small_face_px: faces narrower than this many pixels are used with a note that quality suffers.
        turned_face_deg: heads turned further than this (landmark yaw, degrees) get a note that their far
            side is guessed (measured: the far side of such faces is what the photo-fit cannot match).
        body_rows: the bottom rows (fraction of the frame) where the training views show only the top of
            the torso; a network or GrabCut matte is cut there to ``body_half_width`` around the centre.
        body_half_width: half the widest torso in those rows, as a fraction of the frame.
        refine_framing: correct the landmark pose's crop centre, side and yaw by the head's silhouette in
            the selfie matte (:mod:`perchead.pipelines.framing`; one more run of the matting network).
        fine_size: also cut the same crop at this larger size (:attr:`Preprocessed.fine`; the photo-fit's
            ``FitConfig.photo_size``): only the crop and its matte are made again, not the search for the head.
    """

    size: int = 256
    radius: float = 0.7
    fov_deg: float = 30.0
    head_height_m: float = 0.23
    face_box_m: float = 0.15
    face_center_shift: float = 0.10
    alpha_width_fill: float = 0.535  # measured on test-split synthetic renders (median over 70 views)
    alpha_top: float = 0.13  # likewise
    remove_background: bool = True
    auto_crop: bool = True
    use_whole_image: bool = False
    max_side: int = 2048
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    min_side: int = 32
    grabcut_size: int = 192
    grabcut_iters: int = 3
    parser: ParseFn | None = None
    detector: str = "auto"  # "auto" | "mediapipe" | "haar"
    matting: str = "auto"  # "auto" | "network" | "grabcut"
    face_index: int | None = None  # None = the largest face
    align_roll: bool = True  # level the head (training views have no roll)
    photo_fov_deg: float = 30.0  # ours: the training cameras' field of view, close to a portrait lens
    small_face_px: int = 64  # below this face width a note warns that quality will suffer
    turned_face_deg: float = 30.0  # beyond this yaw a note says the far side is guessed
    body_rows: float = 0.16  # measured: training views below 0.84 of the frame show only the torso's top
    body_half_width: float = 0.36  # measured: widest torso there 0.33 of the frame from the centre, + 0.03
    refine_framing: bool = True  # correct the landmark pose's crop and yaw by the head's silhouette
    fine_size: int | None = None  # a second, finer cut of the same crop (Preprocessed.fine)

    @property
    def frame_m(self) -> float:
        """Height of the training frame at the head centre in metres (≈ 0.375 m)."""
        return 2.0 * self.radius * math.tan(math.radians(self.fov_deg) / 2.0)

    @property
    def head_fill(self) -> float:
        """Fraction of the image height a head fills in the training views (≈ 0.61)."""
        return self.head_height_m / self.frame_m

    @classmethod
    def from_model_config(cls, render_config, **overrides) -> "PreprocessConfig":
        """Takes ``size`` / ``radius`` / ``fov_deg`` from a model's :class:`perchead.models.config.RenderConfig`.

        Args:
            render_config: ``model.config.render`` (its ``image_size``, ``radius`` and ``fov_deg``).
            **overrides: other fields of this config.
        """
        values = dict(
            size=int(render_config.image_size), radius=float(render_config.radius), fov_deg=float(render_config.fov_deg)
        )
        values.update(overrides)
        return cls(**values)


@dataclass
class Preprocessed:
    """A model-ready input and how it was made.

    Attributes:
        image: the crop composited over white. ``[1, 3, S, S]`` float32 in [0, 1]
        mask: foreground mask. ``[1, 1, S, S]`` float32 in [0, 1]
        crop_box: the square crop in the (EXIF-rotated, downscaled) working image, may reach outside it.
        head_box: the box the crop was derived from (face box, alpha bounding box or whole image).
        head_source: "alpha" | "face" | "whole".
        mask_source: "alpha" | "parser" | "network" (selfie segmentation) | "grabcut" | "none".
        working_size: (width, height) of the working image the boxes refer to.
        original_size: (width, height) of the file as stored.
        notes: human-readable remarks (downscaling, fallbacks, faces found) for the UI.
        detector: which path found the head: "mediapipe" | "haar" | "alpha" | "none".
        face_boxes: every face found, largest first, working-image pixels (empty on the alpha/whole paths
            unless the MediaPipe detector also ran).
        face_index: index into ``face_boxes`` of the face used, or None.
        crop_roll_deg: the crop is ``crop_box`` turned counter-clockwise on screen by this angle about
            its centre (the head's roll, so the model input is upright).
        pose: the head pose in the photo (:class:`perchead.pipelines.faces.HeadPose`) or None; its yaw and
            pitch are the model input's camera azimuth and elevation (see :meth:`input_camera`).
        landmarks: the 468 face-mesh landmarks in model-input pixels (x, y), or None. ``[468, 2]``
        grayscale: the photo had no colour.
        fine: the same crop cut at ``PreprocessConfig.fine_size`` (its image, mask and landmarks at that
            size, everything else as here), or None.
        framing: the rule that chose the crop from the alpha channel (``[H, W]`` uint8 → crop box, here
            :func:`silhouette_crop` with this config), so views of a head can be cropped alike; None when
            a face or the whole image framed it.
    """

    image: Tensor  # [1, 3, S, S]
    mask: Tensor  # [1, 1, S, S]
    crop_box: Box
    head_box: Box
    head_source: str
    mask_source: str
    working_size: tuple[int, int]
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    detector: str = "none"
    face_boxes: list[Box] = field(default_factory=list)
    face_index: int | None = None
    crop_roll_deg: float = 0.0
    pose: object | None = None  # perchead.pipelines.faces.HeadPose
    landmarks: np.ndarray | None = None  # [468, 2]
    grayscale: bool = False
    fine: Preprocessed | None = None
    framing: Callable[[np.ndarray], Box] | None = None

    @property
    def face_count(self) -> int:
        """How many faces the detector found."""
        return len(self.face_boxes)

    def input_camera(self, radius: float = 0.7, fov_deg: float = 30.0, pitch_offset_deg: float = 0.0):
        """The training-style camera that sees the head as the model input shows it (None without a pose):
        ``orbit_cameras([yaw], [pitch + pitch_offset_deg], radius, fov_deg, size)`` — the crop is upright and
        centred on the head centre, so only the azimuth and elevation remain. ``pitch_offset_deg``: see
        :data:`perchead.pipelines.faces.REAL_FACE_PITCH_DEG`."""
        if self.pose is None:
            return None
        from perchead.geometry.cameras import orbit_cameras

        pitch = max(-89.0, min(89.0, float(self.pose.pitch_deg) + pitch_offset_deg))
        return orbit_cameras([float(self.pose.yaw_deg)], [pitch], radius=radius, fov_deg=fov_deg, size=self.image.shape[-1])

    def inside_photo(self) -> Tensor:
        """Where the model input shows the photo: 1 inside it, 0 where the crop reaches past its edges (the
        white there is padding, not background), fractions along the edges. ``[1, 1, S, S]`` float32."""
        inside = inside_crop(self.working_size, self.crop_box, self.image.shape[-1], self.crop_roll_deg)  # [S, S]
        return torch.from_numpy(inside).float().div(255)[None, None]

    def label_map(self, parsed: Tensor | np.ndarray | None = None) -> Tensor | None:
        """A 19-class CelebAMask-HQ map of the model input from the face landmarks and the matte
        (:func:`perchead.pipelines.faces.photo_label_map`), or None without landmarks.

        Args:
            parsed: optional face parser map of ``image`` ``[S, S]``: it then decides outside the face.

        Returns:
            ``[S, S]`` long, or None.
        """
        if self.landmarks is None:
            return None
        from perchead.pipelines.faces import photo_label_map

        parsed = None if parsed is None else np.asarray(parsed)
        labels = photo_label_map(to_uint8(self.image[0]), self.mask[0, 0].numpy(), self.landmarks, parsed)  # [S, S]
        return torch.from_numpy(labels.astype(np.int64))

    def preview(self) -> Image.Image:
        """The model input (over white) beside its mask, as one RGB image ``[S, 2S]``."""
        rgb = to_uint8(self.image[0])  # [S, S, 3]
        mask = to_uint8(self.mask[0].expand(3, -1, -1))  # [S, S, 3]
        return Image.fromarray(np.concatenate([rgb, mask], axis=1))


# ------------------------------------------------------------------------------------ image conversions
def to_uint8(images: Tensor) -> np.ndarray:
    """Float images in [0, 1] → uint8 arrays with channels last (clamped, rounded).

    Args:
        images: ``[..., C, H, W]`` (any device, gradients ignored).

    Returns:
        ``[..., H, W, C]`` uint8.
    """
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def over_white(rgb, mask):
    """Composites colour over a white background: ``rgb · mask + (1 − mask)``.

    Works on tensors and numpy arrays alike; ``mask`` broadcasts against ``rgb`` (``[1, H, W]`` with
    ``[3, H, W]``, or ``[H, W, 1]`` with ``[H, W, 3]``), both in [0, 1].
    """
    return rgb * mask + (1.0 - mask)


# ---------------------------------------------------------------------------------------------- loading
def load_image(source: ImageSource, config: PreprocessConfig | None = None) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int], list[str]]:
    """Opens any supported image, refusing bad ones with a clear :class:`PreprocessError`.

    Handles RGB, RGBA/LA/PA (alpha kept), grayscale, palette (P, with transparency), 1-bit, 16-bit and
    32-bit integer (I;16, I), float (F), CMYK, YCbCr and LAB; applies the EXIF orientation; downscales
    huge images while decoding (JPEG draft mode) so a 50-megapixel photo never needs full-size buffers.

    Args:
        source: a path, raw file bytes, a PIL image or an ``[H, W]`` / ``[H, W, 3|4]`` uint8 array.
        config: limits (``max_side``, ``max_pixels``, ``min_side``); default :class:`PreprocessConfig`.

    Returns:
        (rgb ``[H, W, 3]`` uint8, alpha ``[H, W]`` uint8 or None when the image is opaque,
        original (width, height), notes).

    Raises:
        PreprocessError: empty, corrupt or non-image data, decompression bombs, too small or fully
            transparent images.
    """
    config = config or PreprocessConfig()
    notes: list[str] = []
    if isinstance(source, np.ndarray):
        image = _array_to_pil(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source, config)
    original = image.size
    _check_size(*original, config)
    try:
        if image.format == "JPEG" and max(image.size) > config.max_side:
            image.draft("RGB", (config.max_side, config.max_side))  # decode at 1/2, 1/4 or 1/8 scale
        image = ImageOps.exif_transpose(image)
        rgb, alpha = _to_rgb_alpha(image)
    except PreprocessError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PreprocessError(f"the image file is corrupt or truncated and cannot be decoded ({error})") from error
    if max(rgb.shape[:2]) > config.max_side:
        scale = config.max_side / max(rgb.shape[:2])
        new_size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0))
        if alpha is not None:
            alpha = np.asarray(Image.fromarray(alpha).resize(new_size, Image.Resampling.BILINEAR))
    if rgb.shape[1] != original[0] or rgb.shape[0] != original[1]:
        notes.append(f"downscaled from {original[0]}×{original[1]} to {rgb.shape[1]}×{rgb.shape[0]}")
    if alpha is not None:
        if alpha.max() < 8:
            raise PreprocessError("the image is fully transparent: there is nothing to reconstruct")
        if alpha.min() > 247:
            alpha = None  # an opaque alpha channel carries no mask
    return rgb, alpha, original, notes


def check_file(path: str | os.PathLike, config: PreprocessConfig | None = None) -> tuple[int, int]:
    """Cheap check of an image file's header (no decoding): readable, not a bomb, not too small.

    Returns:
        (width, height) as stored.

    Raises:
        PreprocessError: as :func:`load_image` for empty, non-image, bomb and tiny files.
    """
    config = config or PreprocessConfig()
    image = _open(path, config)
    try:
        width, height = image.size
    finally:
        image.close()
    _check_size(width, height, config)
    return width, height


def _check_size(width: int, height: int, config: PreprocessConfig) -> None:
    if width * height > config.max_pixels:
        raise PreprocessError(
            f"image is {width}×{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"{config.max_pixels / 1e6:.0f}-megapixel limit (a possible decompression bomb); please resize it"
        )
    if min(width, height) < config.min_side:
        raise PreprocessError(
            f"image is only {width}×{height} pixels; at least {config.min_side}×{config.min_side} is needed "
            "(a head photo of 256×256 or more works best)"
        )


def _open(source: str | os.PathLike | bytes, config: PreprocessConfig) -> Image.Image:
    """Opens (lazily, header only) a file path or bytes, mapping every failure to a PreprocessError."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise PreprocessError("the file is empty (0 bytes)")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise PreprocessError(f"no such file: {path}")
        if path.stat().st_size == 0:
            raise PreprocessError("the file is empty (0 bytes)")
        stream = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise PreprocessError(
            f"the image declares more than {config.max_pixels / 1e6:.0f} megapixels (a possible decompression bomb); "
            "please resize it"
        ) from error
    except UnidentifiedImageError as error:
        raise PreprocessError("the file is not an image that can be read (expected PNG, JPEG, WebP, ...)") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise PreprocessError(f"the image file is corrupt and cannot be opened ({error})") from error


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
        if array.dtype != np.uint8:
            scale = 255.0 if array.dtype.kind == "f" and array.max() <= 1.0 else 1.0
            array = np.clip(array.astype(np.float32) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    raise PreprocessError(f"an image array must be [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")


def _to_rgb_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any PIL mode → (rgb ``[H, W, 3]`` uint8, alpha ``[H, W]`` uint8 or None)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # high bit depth grayscale: rescale, don't clip
        values = np.asarray(image, dtype=np.float32)  # [H, W]
        top = 65535.0 if mode.startswith("I;16") else max(float(values.max()), 1.0)
        if mode == "I" and values.max() <= 65535 and values.max() > 255:
            top = 65535.0
        if mode == "F" and values.max() <= 1.0:
            top = 1.0
        gray = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1), None
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    elif mode == "RGBA":
        pass
    elif mode != "RGB":  # L, 1, CMYK, YCbCr, LAB, HSV
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise PreprocessError(f"unsupported image layout: mode {mode}, array shape {array.shape}")
    if array.shape[-1] == 4:
        return np.ascontiguousarray(array[..., :3]), np.ascontiguousarray(array[..., 3])
    return np.ascontiguousarray(array), None


# ------------------------------------------------------------------------------------------- detection
def detect_face(rgb: np.ndarray, detect_side: int = 640) -> Box | None:
    """Finds the largest face with OpenCV's bundled Haar cascades (frontal, then both profiles).

    Args:
        rgb: ``[H, W, 3]`` uint8.
        detect_side: the image is downscaled to this longest side for detection (speed).

    Returns:
        The face box ``(x0, y0, x1, y1)`` in ``rgb`` pixels, or None.
    """
    import cv2  # heavy import kept local

    height, width = rgb.shape[:2]
    scale = min(1.0, detect_side / max(height, width))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    min_face = max(20, round(0.08 * min(gray.shape)))
    for name, flipped in _CASCADES:
        cascade = _cascade(name)
        view = gray[:, ::-1].copy() if flipped else gray
        faces = cascade.detectMultiScale(view, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face))
        if len(faces) == 0:
            continue
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])  # the largest face is the subject
        if flipped:
            x = view.shape[1] - x - w
        return (x / scale, y / scale, (x + w) / scale, (y + h) / scale)
    return None


_CASCADE_CACHE: dict[str, object] = {}


def _cascade(name: str):
    import cv2

    if name not in _CASCADE_CACHE:
        path = os.path.join(cv2.data.haarcascades, name)
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise RuntimeError(f"OpenCV's Haar cascade {path} is missing (opencv-python-headless < 5 ships it)")
        _CASCADE_CACHE[name] = classifier
    return _CASCADE_CACHE[name]


def silhouette_head_box(alpha: np.ndarray, threshold: int = 128) -> Box:
    """The head inside a silhouette: a square box from the crown down, as wide as the head.

    The head width is the widest row within 1.1 widths below the crown (fixed point iteration from the
    crown's rows), so a neck and shoulders further down do not count.

    Args:
        alpha: ``[H, W]`` uint8.
        threshold: opacity above which a pixel is the head.

    Returns:
        ``(x0, top, x1, top + width)`` where x0/x1 bound the head rows.
    """
    inside = alpha >= threshold  # [H, W]
    rows = np.nonzero(inside.any(axis=1))[0]
    if len(rows) == 0:
        raise PreprocessError("the image's alpha channel has no opaque pixels: there is nothing to reconstruct")
    columns = np.arange(inside.shape[1])
    left = np.where(inside, columns, inside.shape[1]).min(axis=1)  # [H]
    right = np.where(inside, columns + 1, 0).max(axis=1)  # [H]
    widths = np.maximum(right - left, 0)  # [H]
    top = int(rows[0])
    width = int(widths[top : top + max(2, len(rows) // 20)].max())
    for _ in range(16):
        end = min(inside.shape[0], top + round(1.1 * width) + 1)
        grown = int(widths[top:end].max())
        if grown == width:
            break
        width = grown
    end = min(inside.shape[0], top + round(1.1 * width) + 1)
    x0 = int(left[top:end][widths[top:end] > 0].min())
    x1 = int(right[top:end][widths[top:end] > 0].max())
    return (float(x0), float(top), float(x1), float(top + width))


def face_to_crop(face: Box, config: PreprocessConfig) -> Box:
    """Square crop around a head from its face box, matching the training framing (module docstring)."""
    x0, y0, x1, y1 = face
    side = max(x1 - x0, y1 - y0)
    crop = side * config.frame_m / config.face_box_m  # ≈ 2.5 × the box side
    cx = (x0 + x1) / 2
    cy = (y0 + y1) / 2 - config.face_center_shift * side  # move up from the nose to the head centre
    return (cx - crop / 2, cy - crop / 2, cx + crop / 2, cy + crop / 2)


def silhouette_to_crop(head: Box, config: PreprocessConfig) -> Box:
    """Square crop from a silhouette head box (:func:`silhouette_head_box`) with the training framing."""
    x0, top, x1, bottom = head
    side = (bottom - top) / config.alpha_width_fill
    cx = (x0 + x1) / 2
    y0 = top - config.alpha_top * side
    return (cx - side / 2, y0, cx + side / 2, y0 + side)


def silhouette_crop(alpha: np.ndarray, config: PreprocessConfig) -> Box:
    """The crop an image with this alpha channel ``[H, W]`` (uint8) gets: :func:`silhouette_to_crop` of its
    :func:`silhouette_head_box`. Raises PreprocessError when nothing is opaque."""
    return silhouette_to_crop(silhouette_head_box(alpha), config)


def whole_image_crop(width: int, height: int) -> Box:
    """The smallest square containing the whole image, centred on it (the rest is padded white)."""
    side = max(width, height)
    cx, cy = width / 2, height / 2
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def crop_resize(array: np.ndarray, box: Box, size: int, fill: int) -> np.ndarray:
    """Crops a square ``box`` (may be fractional and reach outside the image; padded with ``fill``) and
    resizes it to ``size``².

    Output pixel ``u`` (centre ``u + 0.5``) samples the input at ``x0 + (u + 0.5) · side / size``. One
    affine warp does it (bilinear); when shrinking, the part of the image under the box is first reduced
    with area interpolation so that fine detail is averaged rather than aliased. The cost depends on the
    output and on the part of the image inside the box, not on how far the box reaches outside.

    Args:
        array: ``[H, W]`` or ``[H, W, C]`` uint8.
        box: ``(x0, y0, x1, y1)`` square in pixels (edges; pixel ``i`` spans ``[i, i + 1)``).
        size: output side.
        fill: padding value.

    Returns:
        ``[size, size]`` or ``[size, size, C]`` uint8.

    Raises:
        ValueError: a non-finite or empty box, or a size below 1.
    """
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box {box} is not a finite, non-empty box")
    if size < 1:
        raise ValueError(f"output size must be at least 1, got {size}")
    height, width = array.shape[:2]
    out_shape = (size, size) + array.shape[2:]
    scale = size / (x1 - x0)  # output pixels per input pixel
    source, origin, density = array, (0.0, 0.0), (1.0, 1.0)  # source pixels per input pixel
    if scale < 1:  # shrink the covered part with area interpolation first (2 px margin for the warp)
        ix0, iy0 = max(0, math.floor(x0) - 2), max(0, math.floor(y0) - 2)
        ix1, iy1 = min(width, math.ceil(x1) + 2), min(height, math.ceil(y1) + 2)
        if ix1 <= ix0 or iy1 <= iy0:
            return np.full(out_shape, fill, dtype=np.uint8)
        new_w, new_h = max(1, round((ix1 - ix0) * scale)), max(1, round((iy1 - iy0) * scale))
        region = np.ascontiguousarray(array[iy0:iy1, ix0:ix1])
        source = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
        origin, density = (ix0, iy0), (new_w / (ix1 - ix0), new_h / (iy1 - iy0))
    # source pixel centre s (continuous s + 0.5) ↔ input x = origin + (s + 0.5) / density ↔ output u + 0.5 = (x - x0) · scale
    kx, ky = scale / density[0], scale / density[1]
    matrix = np.array(
        [[kx, 0.0, (origin[0] - x0) * scale + 0.5 * kx - 0.5], [0.0, ky, (origin[1] - y0) * scale + 0.5 * ky - 0.5]]
    )  # [2, 3] source → output
    channels = 1 if array.ndim == 2 else array.shape[2]
    warped = cv2.warpAffine(
        np.ascontiguousarray(source), matrix, (size, size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * min(channels, 4),
    )  # fmt: skip
    return warped.reshape(out_shape)


def crop_square(array: np.ndarray, box: Box, size: int, fill: int, roll_deg: float = 0.0) -> np.ndarray:
    """:func:`crop_resize` of ``box`` turned counter-clockwise on screen by ``roll_deg`` about its centre.

    Output pixel centre ``q`` samples the input at ``c + A · (q − size/2)`` with ``c`` the box centre and
    ``A = side/size · [[cos r, sin r], [−sin r, cos r]]``, so a head rolled by ``r`` comes out upright.

    Args:
        array: ``[H, W]`` or ``[H, W, C]`` uint8.
        box: ``(x0, y0, x1, y1)`` square (before the turn).
        size: output side.
        fill: padding value.
        roll_deg: turn in degrees; 0 is exactly :func:`crop_resize`.

    Returns:
        ``[size, size]`` or ``[size, size, C]`` uint8.
    """
    import cv2

    if abs(roll_deg) < 1e-6:
        return crop_resize(array, box, size, fill)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1, roll_deg)) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop box {box} / roll {roll_deg} is not finite and non-empty")
    side, centre = x1 - x0, np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    cos, sin = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    A = side / size * np.array([[cos, sin], [-sin, cos]])  # [2, 2] output → input
    height, width = array.shape[:2]
    half = side * (abs(cos) + abs(sin)) / 2  # half side of the turned square's bounding box
    source, origin, density = array, np.zeros(2), 1.0
    if size / side < 1:  # shrink the covered part with area interpolation first, as crop_resize does
        ix0, iy0 = max(0, math.floor(centre[0] - half) - 2), max(0, math.floor(centre[1] - half) - 2)
        ix1, iy1 = min(width, math.ceil(centre[0] + half) + 2), min(height, math.ceil(centre[1] + half) + 2)
        if ix1 <= ix0 or iy1 <= iy0:
            return np.full((size, size) + array.shape[2:], fill, dtype=np.uint8)
        density = size / side
        new_w, new_h = max(1, round((ix1 - ix0) * density)), max(1, round((iy1 - iy0) * density))
        source = cv2.resize(np.ascontiguousarray(array[iy0:iy1, ix0:ix1]), (new_w, new_h), interpolation=cv2.INTER_AREA)
        origin, density = np.array([ix0, iy0], float), np.array([new_w / (ix1 - ix0), new_h / (iy1 - iy0)])
    # output index u ↦ q = u + 0.5 ↦ input p = c + A (q − size/2) ↦ source index (p − origin) · density − 0.5
    D = np.diag(np.broadcast_to(density, 2))
    M = np.zeros((2, 3))
    M[:, :2] = D @ A
    M[:, 2] = D @ (centre + A @ np.full(2, 0.5 - size / 2) - origin) - 0.5
    channels = 1 if array.ndim == 2 else array.shape[2]
    warped = cv2.warpAffine(np.ascontiguousarray(source), M, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * min(channels, 4))
    return warped.reshape((size, size) + array.shape[2:])


def inside_crop(working_size: tuple[int, int], box: Box, size: int, roll_deg: float = 0.0) -> np.ndarray:
    """Where :func:`crop_square` of ``box`` shows the image of ``working_size`` (width, height): 255 inside,
    0 in the padding, in between along the edges. ``[size, size]`` uint8."""
    width, height = working_size
    return crop_square(np.full((height, width), 255, np.uint8), box, size, 0, roll_deg)


def to_crop_pixels(points: np.ndarray, box: Box, size: int, roll_deg: float = 0.0) -> np.ndarray:
    """Working-image points ``[N, 2]`` → model-input pixels of :func:`crop_square` (continuous, edges)."""
    x0, y0, x1, y1 = box
    side, centre = x1 - x0, np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    cos, sin = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    A = side / size * np.array([[cos, sin], [-sin, cos]])
    return (np.asarray(points, np.float64)[:, :2] - centre) @ np.linalg.inv(A).T + size / 2


def pose_to_crop(pose, config: PreprocessConfig) -> tuple[Box, float]:
    """The training framing from a head pose: a square centred on the head centre's projection, as wide
    as the training frame (``2 · radius · tan(fov/2)`` metres) at the head's depth, turned by its roll.

    Returns:
        (crop box before the turn, roll in degrees).
    """
    cx, cy = pose.centre
    side = config.frame_m * pose.pixels_per_metre
    roll = float(pose.roll_deg) if config.align_roll else 0.0
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), roll


def body_envelope(size: int, rows: float, half_width: float) -> np.ndarray:
    """Where the training views can show foreground: everywhere, except in the bottom ``rows`` of the frame
    farther than ``half_width`` from the vertical centre line (ramped over 3 % of the frame). ``[S, S]``"""
    u = (np.arange(size, dtype=np.float32) + 0.5) / size  # [S] pixel centres in frame units
    ramp = max(0.03, 1.0 / size)
    across = np.clip((half_width - np.abs(u - 0.5)) / ramp + 0.5, 0.0, 1.0)  # [S] 1 inside the torso's width
    down = np.clip((u - (1.0 - rows)) / ramp + 0.5, 0.0, 1.0)  # [S] 1 in the bottom rows
    return (1.0 - down[:, None] * (1.0 - across[None, :])).astype(np.float32)


def network_mask(analyzer, rgb: np.ndarray, crop_rgb: np.ndarray, crop_box: Box, roll_deg: float, valid: np.ndarray,
                 seed: tuple[float, float] | None) -> np.ndarray:
    """Selfie-segmentation matte in the crop, cut to the head's person (the connected part holding
    ``seed``, the nose in crop pixels) and to the image (padding is background).

    The network sees the crop itself, unless the crop is mostly padding (a tight photo of a face): then
    it sees the whole photo and its matte is cropped like the image.

    Returns:
        ``[S, S]`` float32 in [0, 1].
    """
    import cv2

    size = crop_rgb.shape[0]
    if valid.mean() >= 0.75:
        matte = analyzer.segment(crop_rgb) * valid  # [S, S]
    else:
        whole = (analyzer.segment(rgb) * 255).round().astype(np.uint8)  # [H, W]
        matte = crop_square(whole, crop_box, size, 0, roll_deg).astype(np.float32) / 255.0  # [S, S]
    hard = (matte > 0.5).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    if count > 2:  # other people or stray blobs: keep the subject
        size = hard.shape[0]
        keep = 0
        if seed is not None:
            keep = labels[min(size - 1, max(0, int(seed[1]))), min(size - 1, max(0, int(seed[0])))]
        if keep == 0:
            keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        region = cv2.dilate((labels == keep).astype(np.uint8), np.ones((5, 5), np.uint8))
        matte = matte * region
    return matte.astype(np.float32)


# ------------------------------------------------------------------------------------------ segmentation
def grabcut_mask(rgb: np.ndarray, head: Box, valid: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Foreground mask by GrabCut, seeded by the head box (no network weights needed).

    Seeds: outside the image (padding) and a thin frame border are certain background; an ellipse inside
    the head box is probable foreground, its inner core certain foreground; everything else probable
    background.

    Args:
        rgb: the square crop. ``[S, S, 3]`` uint8
        head: the head box in crop pixels.
        valid: True where the crop shows the image (not padding). ``[S, S]`` bool
        iterations: GrabCut iterations.

    Returns:
        mask in [0, 1]. ``[S, S]`` float32
    """
    import cv2

    size = rgb.shape[0]
    seeds = np.full((size, size), cv2.GC_PR_BGD, dtype=np.uint8)  # [S, S]
    x0, y0, x1, y1 = head
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax, ay = max(2.0, (x1 - x0) / 2), max(2.0, (y1 - y0) / 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    radius = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2  # [S, S], 1 on the ellipse
    seeds[radius <= 1.0] = cv2.GC_PR_FGD
    seeds[radius <= 0.25] = cv2.GC_FGD
    border = max(1, size // 64)
    seeds[:border, :] = seeds[-border:, :] = cv2.GC_BGD
    seeds[:, :border] = seeds[:, -border:] = cv2.GC_BGD
    seeds[~valid] = cv2.GC_BGD
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    cv2.grabCut(rgb, seeds, None, background_model, foreground_model, iterations, cv2.GC_INIT_WITH_MASK)
    mask = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count > 2:  # keep the component holding the head centre (or the largest one)
        centre = labels[min(size - 1, int(cy)), min(size - 1, int(cx))]
        keep = centre if centre != 0 else 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        mask = (labels == keep).astype(np.uint8)
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=max(0.5, size / 256))  # soft edge


def parser_mask(parser: ParseFn, rgb: np.ndarray) -> np.ndarray:
    """Foreground mask from a 19-class face parser (every class but 0 = background). ``[S, S]`` float32"""
    labels = np.asarray(parser(rgb))
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"face parser returned labels of shape {labels.shape}, expected {rgb.shape[:2]}")
    if labels.min() < 0 or labels.max() > 18:
        raise ValueError(f"face parser labels must lie in 0..18, got {labels.min()}..{labels.max()}")
    return (labels != 0).astype(np.float32)


# ------------------------------------------------------------------------------------------------- main
def preprocess(source: ImageSource, config: PreprocessConfig | None = None, **overrides) -> Preprocessed:
    """Turns a portrait into the model input: square head crop over white, foreground mask, model size.

    Steps: 1. load (modes, EXIF, downscale, refusals); 2. find the head: alpha silhouette, else the faces
    (MediaPipe: every face, landmarks, head pose; fallback: a Haar face box), else the whole image (only
    if allowed); 3. square crop with the training framing (turned upright by the head's roll), resized to
    ``config.size``; 4. mask: alpha, else the face parser, else the selfie network (GrabCut as fallback),
    or none when background removal is off; 5. composite over white.

    Args:
        source: path, bytes, PIL image or uint8 array.
        config: settings; default :class:`PreprocessConfig`.
        **overrides: fields of the config to replace for this call (e.g. ``face_index=1``).

    Returns:
        :class:`Preprocessed`.

    Raises:
        PreprocessError: bad files, "no face found" (suggesting ``use_whole_image=True``) and a
            ``face_index`` beyond the faces found.
        ValueError: unknown ``detector`` / ``matting`` values, a size below 16.
    """
    config = config or PreprocessConfig()
    if overrides:
        config = PreprocessConfig(**{**config.__dict__, **overrides})
    if config.size < 16:
        raise ValueError(f"config.size must be at least 16, got {config.size}")
    if config.detector not in ("auto", "mediapipe", "haar"):
        raise ValueError(f"detector must be 'auto', 'mediapipe' or 'haar', got {config.detector!r}")
    if config.matting not in ("auto", "network", "grabcut"):
        raise ValueError(f"matting must be 'auto', 'network' or 'grabcut', got {config.matting!r}")
    if config.face_index is not None and config.face_index < 0:
        raise ValueError(f"face_index must be 0 or more (0 = the largest face), got {config.face_index}")
    # 1. load
    rgb, alpha, original, notes = load_image(source, config)
    height, width = rgb.shape[:2]
    grayscale = _is_grayscale(rgb)
    if grayscale:
        notes.append("grayscale photo: accepted, but colours are guessed and quality will suffer")
    analyzer, fallback_note = None, None
    if config.detector != "haar" and (config.auto_crop or config.matting != "grabcut"):
        from perchead.pipelines import faces as face_module

        analyzer = face_module.load_analyzer()
        if analyzer is None:
            reason = face_module.unavailable_reason()
            if config.detector == "mediapipe" or config.matting == "network":
                raise PreprocessError(f"the MediaPipe face networks are unavailable: {reason}")
            fallback_note = f"face networks unavailable ({reason}): used the fallback OpenCV Haar cascade and GrabCut, expect rougher crops and masks"
    # 2. head: faces first (their pose is useful even when an alpha channel frames the crop)
    found, face, pose, face_index, roll = [], None, None, None, 0.0
    if analyzer is not None and (config.auto_crop or alpha is None):
        found = analyzer.detect(rgb)
        if found:
            face_index = 0 if config.face_index is None else config.face_index
            if face_index >= len(found):
                raise PreprocessError(
                    f"face_index {face_index} was asked for, but only {len(found)} face(s) were found "
                    f"(valid: 0..{len(found) - 1}, largest first)"
                )
            face = found[face_index]
            if face.landmarks is None:  # weak detections come with landmarks already (their confirmation)
                face = analyzer.landmarks(rgb, face)
            try:
                pose = face_module.estimate_pose(face.landmarks, width, height, config.photo_fov_deg)
            except RuntimeError as error:
                notes.append(f"head pose estimation failed ({error}): framed by the face box")
            if pose is not None and config.refine_framing and config.auto_crop and alpha is None:
                from perchead.pipelines import framing

                refined = framing.refine(analyzer, rgb, face, pose, config)
                if refined is not None:
                    pose = refined[0]
    if len(found) > 1:
        which = "the largest" if config.face_index is None else f"face {face_index} (by size, 0 = largest)"
        notes.append(f"{len(found)} faces found: used {which}; choose another with 'Face' in the options "
                     f"(face_index 0..{len(found) - 1})")
    if face is not None and face.side < config.small_face_px:
        notes.append(f"the face is only {face.side:.0f} px wide (under {config.small_face_px} px): accepted, but quality will suffer")
    if pose is not None and abs(pose.yaw_deg) > config.turned_face_deg:
        notes.append(f"the head is turned by {abs(pose.yaw_deg):.0f}°: its far side is not in the photo and is "
                     "guessed (a photo facing the camera gives the best likeness)")
    if not config.auto_crop:
        detector, head_source, head_box = "none", "whole", (0.0, 0.0, float(width), float(height))
        crop_box = whole_image_crop(width, height)
    elif alpha is not None:
        detector, head_source, head_box = "alpha", "alpha", silhouette_head_box(alpha)
        crop_box = silhouette_to_crop(head_box, config)
    elif face is not None:
        detector, head_source, head_box = "mediapipe", "face", face.box
        if pose is not None:
            crop_box, roll = pose_to_crop(pose, config)
        else:
            crop_box = face_to_crop(face.box, config)
    else:
        haar = detect_face(rgb) if config.detector != "mediapipe" else None
        if haar is not None:
            if config.face_index not in (None, 0):
                raise PreprocessError(
                    f"face_index {config.face_index} was asked for, but only 1 face was found (the fallback "
                    "Haar detector reports the largest face only)"
                )
            detector, head_source, head_box = "haar", "face", haar
            crop_box = face_to_crop(haar, config)
            if analyzer is not None:
                notes.append("the face networks found no face, the fallback Haar cascade did: framed by its box, no head pose")
        elif config.use_whole_image:
            detector, head_source, head_box = "none", "whole", (0.0, 0.0, float(width), float(height))
            crop_box = whole_image_crop(width, height)
            notes.append("no face found: used the whole image")
        else:
            raise PreprocessError(
                "no face was found in the image; use a clearer, roughly frontal head photo, give the image a "
                "transparent background (the alpha channel then marks the head), or enable 'use the whole image'"
            )
    if face is None and detector == "haar":
        face_index = 0
    # 3.–5. crop, mask, composite over white
    image, mask_t, mask_source, landmarks, cut_notes = cut_out(
        rgb, crop_box, roll, config, alpha=alpha, head_box=head_box,
        landmarks=face.landmarks if face is not None else None, analyzer=analyzer)  # fmt: skip
    notes += cut_notes
    if fallback_note and (detector == "haar" or mask_source == "grabcut"):
        notes.append(fallback_note)
    face_boxes = [tuple(float(v) for v in f.box) for f in found] if found else ([tuple(float(v) for v in head_box)] if detector == "haar" else [])
    result = Preprocessed(
        image=image,  # [1, 3, S, S]
        mask=mask_t,  # [1, 1, S, S]
        crop_box=tuple(float(v) for v in crop_box),
        head_box=tuple(float(v) for v in head_box),
        head_source=head_source,
        mask_source=mask_source,
        working_size=(width, height),
        original_size=original,
        notes=notes,
        detector=detector,
        face_boxes=face_boxes,
        face_index=face_index if face_boxes else None,
        crop_roll_deg=float(roll),
        pose=pose,
        landmarks=landmarks,
        grayscale=grayscale,
        framing=partial(silhouette_crop, config=config) if head_source == "alpha" else None,
    )
    if config.fine_size is not None and config.fine_size > config.size:
        fine_image, fine_mask, _, fine_landmarks, _ = cut_out(
            rgb, crop_box, roll, replace(config, size=config.fine_size), alpha=alpha, head_box=head_box,
            landmarks=face.landmarks if face is not None else None, analyzer=analyzer)  # fmt: skip
        result.fine = replace(result, image=fine_image, mask=fine_mask, landmarks=fine_landmarks)
    return result


def cut_out(rgb: np.ndarray, crop_box: Box, roll_deg: float, config: PreprocessConfig, *, alpha: np.ndarray | None = None,
            head_box: Box | None = None, landmarks: np.ndarray | None = None,
            analyzer=None) -> tuple[Tensor, Tensor, str, np.ndarray | None, list[str]]:
    """Steps 3–5 of :func:`preprocess` for a crop already chosen: crop, mask, composite over white.

    Also used on video frames, whose crops are tracked and smoothed over time (:mod:`perchead.pipelines.sequence`).

    Args:
        rgb: the working image. ``[H, W, 3]`` uint8
        crop_box: the square crop before the turn (working-image pixels; may reach outside the image).
        roll_deg: the crop's turn (:func:`crop_square`).
        config: size, matting and body-envelope settings.
        alpha: the image's alpha channel (then the mask). ``[H, W]`` uint8
        head_box: the head box that seeds GrabCut (default: the middle of the crop).
        landmarks: face-mesh landmarks in working-image pixels (the nose seeds the matte's person). ``[468, 2+]``
        analyzer: a :class:`perchead.pipelines.faces.FaceAnalyzer` for the selfie matte, or None (GrabCut).

    Returns:
        (image ``[1, 3, S, S]``, mask ``[1, 1, S, S]``, mask source, landmarks in crop pixels ``[468, 2]`` or
        None, notes).

    Raises:
        PreprocessError: background removal left nothing.
    """
    height, width = rgb.shape[:2]
    size = config.size
    notes: list[str] = []
    if head_box is None:  # the middle half of the crop
        x0, y0, x1, y1 = crop_box
        head_box = (x0 + (x1 - x0) / 4, y0 + (y1 - y0) / 4, x1 - (x1 - x0) / 4, y1 - (y1 - y0) / 4)
    # 3. crop (padding is white in the image, 0 in the masks)
    crop_rgb = crop_square(rgb, crop_box, size, WHITE, roll_deg)  # [S, S, 3]
    valid = inside_crop((width, height), crop_box, size, roll_deg) > 127  # [S, S]
    if landmarks is not None:
        landmarks = to_crop_pixels(landmarks[:, :2], crop_box, size, roll_deg).astype(np.float32)  # [468, 2]
    # 4. mask
    mask_source = "none"
    if alpha is not None:
        mask = crop_square(alpha, crop_box, size, 0, roll_deg).astype(np.float32) / 255.0
        mask_source = "alpha"
    elif not config.remove_background:
        mask = valid.astype(np.float32)
    else:
        mask = None
        if config.parser is not None:
            try:
                mask, mask_source = parser_mask(config.parser, crop_rgb), "parser"
            except Exception as error:  # a configured but failing parser falls back, visibly
                notes.append(f"face parser failed ({error}); used the fallback matting")
        if mask is None and analyzer is not None and config.matting != "grabcut":
            nose = tuple(landmarks[1]) if landmarks is not None else None
            mask = network_mask(analyzer, rgb, crop_rgb, crop_box, roll_deg, valid, nose)
            mask_source = "network"
            if mask.max() <= 0.01:
                notes.append("the matting network found no person: used GrabCut")
                mask = None
        if mask is None:
            head_in_crop = _box_in_crop(head_box, crop_box, size) if abs(roll_deg) < 1e-6 else _centred_box(to_crop_pixels(
                np.array([[head_box[0], head_box[1]], [head_box[2], head_box[3]]]), crop_box, size, roll_deg))
            mask, mask_source = _grabcut_at(crop_rgb, head_in_crop, valid, config), "grabcut"
    if mask_source in ("network", "grabcut") and config.body_rows > 0:
        mask = mask * body_envelope(size, config.body_rows, config.body_half_width)  # no shoulders beyond the training torso
    if mask.max() <= 0.01:
        raise PreprocessError("background removal left nothing of the head; try turning background removal off")
    # 5. composite over white (in numpy: torch's parallel kernels would wake its OpenMP threads, which
    # spin on the cores the networks need when torch was imported before perchead)
    mask = np.ascontiguousarray(mask, dtype=np.float32)  # [S, S]
    composite = over_white(crop_rgb.astype(np.float32) / 255.0, mask[..., None])  # [S, S, 3]
    image = torch.from_numpy(np.ascontiguousarray(composite.transpose(2, 0, 1)))  # [3, S, S]
    return image[None].contiguous(), torch.from_numpy(mask)[None, None].contiguous(), mask_source, landmarks, notes


def _is_grayscale(rgb: np.ndarray) -> bool:
    """True when the three channels (nearly) agree everywhere (checked on a subsample)."""
    sample = rgb[:: max(1, rgb.shape[0] // 128), :: max(1, rgb.shape[1] // 128)].astype(np.int16)  # [h, w, 3]
    return bool(np.abs(sample - sample[..., :1]).max() <= 3)


def _centred_box(corners: np.ndarray) -> Box:
    """A square box around two (turned) corners' centre, as wide as their distance / √2."""
    centre = corners.mean(0)
    half = float(np.linalg.norm(corners[1] - corners[0])) / (2 * math.sqrt(2))
    return (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)


def _box_in_crop(box: Box, crop: Box, size: int) -> Box:
    scale = size / (crop[2] - crop[0])
    return ((box[0] - crop[0]) * scale, (box[1] - crop[1]) * scale, (box[2] - crop[0]) * scale, (box[3] - crop[1]) * scale)


def _grabcut_at(crop_rgb: np.ndarray, head: Box, valid: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """GrabCut on a ``grabcut_size`` copy of the crop (speed), mask resized back to the crop size."""
    import cv2

    size = crop_rgb.shape[0]
    work = min(size, config.grabcut_size)
    scale = work / size
    # The face box covers brow to mouth; the head (hair, chin, ears) is larger: grow it for the seed ellipse.
    x0, y0, x1, y1 = head
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 2
    grown = (cx - 1.1 * half, cy - 1.35 * half, cx + 1.1 * half, cy + 1.2 * half)
    small = cv2.resize(crop_rgb, (work, work), interpolation=cv2.INTER_AREA) if work != size else crop_rgb
    small_valid = cv2.resize(valid.astype(np.uint8), (work, work), interpolation=cv2.INTER_NEAREST) > 0
    mask = grabcut_mask(small, tuple(v * scale for v in grown), small_valid, config.grabcut_iters)
    if work != size:
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(mask, 0.0, 1.0)
