"""Matting: the foreground mask of a crop (alpha, face parser, selfie network or GrabCut) and the crop cut out
over white (:func:`cut_out`, steps 3–5 of :func:`perchead.photo.preprocess.preprocess`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from perchead.geometry.images import over_white
from perchead.photo.config import ParseFn, PreprocessConfig
from perchead.photo.crop import Box, crop_square, inside_crop, to_crop_pixels
from perchead.photo.load import PreprocessError


WHITE = 255


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
        analyzer: a :class:`perchead.photo.faces.FaceAnalyzer` for the selfie matte, or None (GrabCut).

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
