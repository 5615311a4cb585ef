"""Framing refinement: the head pose's crop corrected by the head's silhouette.

The landmark pose (:func:`perchead.photo.faces.estimate_pose`) frames a photo from 38 face-mesh
landmarks alone. On the synthetic heads the model was trained on, that framing is off by a few percent
because the face mesh (trained on real faces) places the landmarks of these stylised faces loosely, and
because at large yaw the visible face is a small, foreshortened part of the head. The matte's
silhouette (top of the head, its width at several heights, its centroid and spread) carries what the
landmarks miss: where the back of the head is, how large the whole head is.

:func:`refine` measures the silhouette in an upright crop 1.4 × the pose's crop, around the pose's head
centre (one more run of the selfie network, ≈ 6 ms), and a small calibrated regressor (one hidden layer
of 96 tanh units, 63 inputs, 4 outputs; ``framing_model.json``, fitted on renders of 3,600 train-split
synthetic heads with known cameras by ``python -m perchead.training.framing``) turns those
measurements, the landmark pose and the face mesh's proportions (heights below the eyes, depths) into
corrections of the crop centre, the crop side and the yaw.
Views are mirrored to a non-negative yaw first, so the correction is exactly left/right symmetric. The
corrections are clipped to the range seen in fitting, and the refinement is skipped when the head's
silhouette is cut by the photo's edge above the chin or is missing (the pose's crop is kept).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ENLARGE = 1.4  # the silhouette is measured in a crop this many times the pose's crop
SIZE = 256  # that crop's side in pixels (the selfie network's input size)
ROWS = (-0.15, -0.05, 0.02, 0.10)  # heights (fractions of the pose's crop, + = down) where widths are measured
MORE_ROWS = (-0.3, -0.22, -0.15, -0.08, -0.02, 0.04, 0.10, 0.16)  # a finer set of such heights
# Face-mesh points whose height below the eyes is measured (brows, nose tip and base, lips, chin,
# forehead): on the synthetic heads the eyes, brows and mouth sit at fixed heights in metres.
BELOW_EYES = (1, 2, 13, 14, 152, 10, 0, 17)
DEPTHS = (1, 152, 10, 234, 454, 33, 263, 61, 291)  # face-mesh depths read (relative to the nose bridge, 168)
PAIRS = ((33, 263), (133, 362), (61, 291), (105, 334), (70, 300), (234, 454))  # the subject's right / left
MODEL_FILE = Path(__file__).with_name("framing_model.json")
FEATURES = 63
YAW_RAMP_DEG = (8.0, 20.0)  # the yaw correction fades in over this range of the landmark yaw


@dataclass
class Correction:
    """A framing correction in the pose's upright crop.

    Attributes:
        dx: crop centre shift to the right, in fractions of the pose's crop side.
        dy: crop centre shift downward, likewise.
        log_scale: natural log of (new crop side / pose's crop side).
        dyaw_deg: added to the pose's yaw.
    """

    dx: float
    dy: float
    log_scale: float
    dyaw_deg: float


def features(matte: np.ndarray, landmarks: np.ndarray, keypoints: np.ndarray, valid: np.ndarray, yaw_deg: float,
             pitch_deg: float, reprojection_px: float) -> tuple[np.ndarray, bool] | None:
    """The regressor's inputs, measured in the enlarged upright crop and mirrored to a non-negative yaw.

    Lengths are in units of the pose's crop side (``SIZE / ENLARGE`` pixels), relative to the crop centre
    (the pose's head centre), + right and + down.

    Args:
        matte: selfie matte of the enlarged crop. ``[SIZE, SIZE]`` float in [0, 1]
        landmarks: face-mesh landmarks in that crop's pixels, and their relative depth in the same units
            (taken as 0 when given without it). ``[468, 3]`` or ``[468, 2]``
        keypoints: BlazeFace key points in that crop's pixels (right eye, left eye, nose, mouth, right ear,
            left ear). ``[6, 2]``
        valid: True where the crop shows the photo (not padding). ``[SIZE, SIZE]`` bool
        yaw_deg, pitch_deg: the landmark pose.
        reprojection_px: the pose's landmark reprojection error in crop pixels.

    Returns:
        (features ``[FEATURES]``, mirrored) or None when the silhouette cannot be used (no matte at the
        face, or the head cut by the photo's edge above the chin).

    Raises:
        ValueError: on arrays of the wrong shape.
    """
    import cv2

    if matte.shape != (SIZE, SIZE) or valid.shape != (SIZE, SIZE):
        raise ValueError(f"matte and valid must be [{SIZE}, {SIZE}], got {matte.shape} and {valid.shape}")
    if landmarks.shape[0] != 468 or keypoints.shape[0] != 6:
        raise ValueError(f"expected [468, 2] landmarks and [6, 2] key points, got {landmarks.shape} and {keypoints.shape}")
    unit = SIZE / ENLARGE
    mirrored = yaw_deg < 0
    hard = matte > 0.5  # [S, S]
    raw = np.asarray(landmarks, np.float64)
    marks = raw[:, :2].copy()  # [468, 2]
    depth = raw[:, 2].copy() if raw.shape[1] > 2 else np.zeros(len(raw))  # [468]
    points = np.asarray(keypoints, np.float64)[:, :2].copy()  # [6, 2]
    if mirrored:  # x → S − x: the view with the opposite yaw, the subject's sides swapped
        hard, valid = hard[:, ::-1], valid[:, ::-1]
        marks[:, 0], points[:, 0] = SIZE - marks[:, 0], SIZE - points[:, 0]
        points[[4, 5]] = points[[5, 4]]
        right, left = np.array(PAIRS).T
        marks[np.r_[right, left]], depth[np.r_[right, left]] = marks[np.r_[left, right]], depth[np.r_[left, right]]
    count, labels = cv2.connectedComponents(np.ascontiguousarray(hard, dtype=np.uint8), connectivity=8)
    seed = np.clip(marks.mean(0).round().astype(int), 0, SIZE - 1)
    k = labels[seed[1], seed[0]]
    if k == 0:
        return None
    head = labels == k  # [S, S]
    chin = int(np.clip(round(marks[152, 1]), 1, SIZE))
    above = head[:chin]  # [chin, S]
    outside = ~np.ascontiguousarray(valid[:chin])
    if outside.any():  # the head touches the photo's edge above the chin: its silhouette is cut
        grown = cv2.dilate(above.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if (grown & outside).sum() > 2:
            return None
    ys, xs = np.nonzero(above)
    if len(xs) < 50:
        return None
    x, y = (xs + 0.5 - SIZE / 2) / unit, (ys + 0.5 - SIZE / 2) / unit
    top = (ys.min() - SIZE / 2) / unit

    def widths(rows):  # the head's left and right edge at each height
        out = []
        for row in rows:
            r = int(np.clip(round(SIZE / 2 + row * unit), 0, SIZE - 1))
            cols = np.nonzero(head[r])[0]
            out += [0.0, 0.0] if len(cols) == 0 else [(cols.min() - SIZE / 2) / unit, (cols.max() + 1 - SIZE / 2) / unit]
        return out

    L = (marks - SIZE / 2) / unit  # [468, 2]
    eye_r, eye_l = (L[33] + L[133]) / 2, (L[263] + L[362]) / 2
    mid = (eye_r + eye_l) / 2
    mouth = (L[61] + L[291]) / 2
    P = (points - SIZE / 2) / unit  # [6, 2]
    yaw = math.radians(abs(yaw_deg))
    brows = (L[105] + L[334]) / 2
    brow_line = (L[105] + L[334] + L[70] + L[300]) / 4
    below = [brows[1] - mid[1], *(L[list(BELOW_EYES), 1] - mid[1]), mouth[1] - brow_line[1], L[13, 1] - brow_line[1]]
    f = [yaw, math.radians(pitch_deg), top, *widths(ROWS), math.sqrt(len(xs)) / unit, x.mean(), y.mean(), x.std(), y.std(),
         mid[0], mid[1], float(np.linalg.norm(eye_l - eye_r)), mouth[1] - mid[1], L[152, 1] - mid[1], L[1, 0] - mid[0],
         P[4, 0] + P[5, 0], P[5, 0] - P[4, 0], reprojection_px / unit, yaw * yaw, yaw * math.radians(pitch_deg),
         *np.log(np.maximum(np.abs(below), 1e-3)), *(depth[list(DEPTHS)] - depth[168]) / unit, *widths(MORE_ROWS)]
    return np.asarray(f, np.float64), mirrored


@lru_cache(maxsize=1)
def load_model(path: str | None = None) -> dict | None:
    """The fitted regressor (``framing_model.json``) as numpy arrays, or None when the file is absent."""
    file = Path(path) if path else MODEL_FILE
    if not file.is_file():
        return None
    raw = json.loads(file.read_text())
    model = {k: np.asarray(v, np.float64) for k, v in raw.items() if k in ("mean", "std", "w1", "b1", "w2", "b2", "out_scale", "low", "high")}
    if model["w1"].shape[0] != FEATURES:
        raise ValueError(f"{file} expects {model['w1'].shape[0]} features, this code makes {FEATURES}")
    return model


def network(model: dict, feats: np.ndarray) -> np.ndarray:
    """The regressor's raw outputs (mirrored space, not clipped). ``[..., F]`` → ``[..., 4]``"""
    z = np.clip((feats - model["mean"]) / model["std"], -4.0, 4.0)  # [..., F]
    hidden = np.tanh(z @ model["w1"] + model["b1"])  # [..., H]
    return (hidden @ model["w2"] + model["b2"]) * model["out_scale"]  # [..., 4]


def predict(model: dict, feats: np.ndarray, mirrored: bool) -> Correction:
    """The regressor's correction for one view (clipped to the fitted range, unmirrored)."""
    out = np.clip(network(model, feats), model["low"], model["high"])  # [4]
    dx, dy, log_scale, dyaw = (float(v) for v in out)
    # Near a frontal view the landmarks alone give the yaw within a few degrees, while a real person's
    # silhouette (a side parting, a hat, a collar) is asymmetric in ways the synthetic heads are not:
    # the yaw correction fades in between YAW_RAMP_DEG.
    t = float(np.clip((math.degrees(feats[0]) - YAW_RAMP_DEG[0]) / (YAW_RAMP_DEG[1] - YAW_RAMP_DEG[0]), 0.0, 1.0))
    dyaw *= t * t * (3 - 2 * t)
    if mirrored:
        dx, dyaw = -dx, -dyaw
    return Correction(dx, dy, log_scale, dyaw)


def refine(analyzer, rgb: np.ndarray, face, pose, config) -> tuple[object, Correction] | None:
    """The pose corrected by the head's silhouette: a new :class:`perchead.photo.faces.HeadPose` whose
    ``centre``, ``pixels_per_metre`` and ``yaw_deg`` give the refined framing (its rotation and translation
    stay the landmark fit's), and the correction applied; None when the refinement does not apply.

    Args:
        analyzer: :class:`perchead.photo.faces.FaceAnalyzer` (its selfie network).
        rgb: the working image. ``[H, W, 3]`` uint8
        face: the :class:`perchead.photo.faces.Face` used (landmarks and key points, image pixels).
        pose: its landmark pose.
        config: :class:`perchead.photo.config.PreprocessConfig` (framing).
    """
    from dataclasses import replace

    from perchead.photo.crop import crop_square, pose_to_crop, to_crop_pixels

    model = load_model()
    if model is None or face.landmarks is None:
        return None
    box, roll = pose_to_crop(pose, config)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = box[2] - box[0]
    half = side * ENLARGE / 2
    big = (cx - half, cy - half, cx + half, cy + half)
    height, width = rgb.shape[:2]
    crop = crop_square(rgb, big, SIZE, 255, roll)  # [S, S, 3] upright
    valid = crop_square(np.full((height, width), 255, np.uint8), big, SIZE, 0, roll) > 127  # [S, S]
    matte = analyzer.segment(crop) * valid  # [S, S]
    marks = np.concatenate([to_crop_pixels(face.landmarks[:, :2], big, SIZE, roll),
                            face.landmarks[:, 2:3] * SIZE / (side * ENLARGE)], 1)  # [468, 3] with depth
    points = to_crop_pixels(face.keypoints[:, :2], big, SIZE, roll)  # [6, 2]
    measured = features(matte, marks, points, valid, pose.yaw_deg, pose.pitch_deg, pose.reprojection_px * SIZE / (side * ENLARGE))
    if measured is None:
        return None
    correction = predict(model, *measured)
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    shift = side * np.array([[c, s], [-s, c]]) @ np.array([correction.dx, correction.dy])  # [2] image pixels
    refined = replace(pose, yaw_deg=float(pose.yaw_deg + correction.dyaw_deg), centre=(float(cx + shift[0]), float(cy + shift[1])),
                      pixels_per_metre=float(pose.pixels_per_metre * math.exp(correction.log_scale)))
    return refined, correction
