"""Crop geometry: where the head is (a Haar face box, an alpha silhouette, a head pose) and the square crop
around it with the training framing, turned upright; points and pixels in and out of that crop."""

from __future__ import annotations

import math
import os

import numpy as np

from perchead.photo.config import PreprocessConfig
from perchead.photo.load import PreprocessError


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive


_CASCADES = (  # (file, flipped): tried in this order until one finds a face
    ("haarcascade_frontalface_default.xml", False),
    ("haarcascade_frontalface_alt2.xml", False),
    ("haarcascade_profileface.xml", False),  # faces looking to the image's left
    ("haarcascade_profileface.xml", True),  # the same cascade on the mirrored image: faces looking right
)


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
