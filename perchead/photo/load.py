"""Loading a photo and refusing the ones that cannot be used (:class:`PreprocessError` says why)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from perchead.photo.config import PreprocessConfig


ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class PreprocessError(ValueError):
    """An input photo that cannot be turned into a model input; the message says why and what to do."""


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
