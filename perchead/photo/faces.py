"""Face detection, 468 face landmarks, head pose and portrait matting with networks trained on real faces.

Three MediaPipe networks (Apache-2.0) run on the CPU through ``ai-edge-litert`` (the TensorFlow Lite
runtime; importing ``mediapipe`` itself is never needed, so none of its jax / protobuf pins come along):

* **BlazeFace** (``face_detection_short_range.tflite``, 128² input, faces filling ≳ 10 % of the image, and
  ``face_detection_full_range_sparse.tflite``, 192² input, small faces in large pictures): face boxes
  and six key points (eyes, nose tip, mouth, ear tragions).
* **Face mesh** (``face_landmark.tflite``, 192² input): 468 landmarks on a crop rotated so the eyes are
  level; run twice, the second time on the crop the first landmarks give (as MediaPipe's tracker does).
* **Selfie segmentation** (``selfie_segmentation.tflite``, 256² input): a person matte.

The files ship inside the ``mediapipe==0.10.14`` wheel on PyPI. :func:`fetch_models` downloads that wheel
with pip (no install, ``--no-deps``) and extracts only these files (2.4 MB) into the first writable
folder of :func:`model_dirs`; ``python3 tasks.py install`` does it, and on a machine without them the
first use does it once unless ``HF_HUB_OFFLINE=1`` / ``PERCHEAD_NO_FETCH=1`` is set. When they are absent,
:func:`load_analyzer` returns None and preprocessing falls back to OpenCV's Haar cascades and GrabCut.

Head pose: the landmarks are matched by PnP (OpenCV ``solvePnP``) against :data:`FACE_POINTS_3D`, the
3D positions of a subset of landmarks in canonical head space (origin at the head centre, +Y up, the face
toward +Z, metres). Those positions were triangulated from the face mesh run on renders of the test-split
synthetic heads seen by known cameras (``python -m perchead.training.framing --face-points``), so a pose
found on a photo is in the frame of the training cameras: the crop built from it is centred on the head
centre and as wide as the training frame at the head's depth (``perchead.photo.crop.pose_to_crop``).
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perchead.models.hub import hub_offline
from perchead.photo.mediapipe_files import fetch_models, find_models


# Face-mesh landmark indices (MediaPipe's 468-point topology) used for pose, roll and the 19-class map.
RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER, LEFT_EYE_OUTER = 33, 133, 362, 263  # subject's right = image left
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10


# ------------------------------------------------------------------------------------------- runtime
class _Net:
    """One TFLite network on the CPU (ai-edge-litert); float32 NHWC in, outputs in the model's order."""

    def __init__(self, path: Path, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = [d["index"] for d in self.interpreter.get_output_details()]
        self.size = (int(self.input["shape"][2]), int(self.input["shape"][1]))  # (width, height)
        self.lock = threading.Lock()  # one interpreter is not re-entrant (the app serves several users)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(x[None], dtype=np.float32))
            self.interpreter.invoke()
            return [self.interpreter.get_tensor(i)[0].copy() for i in self.outputs]


def _ssd_anchors(size: int, strides: tuple[int, ...], per_layer: int) -> np.ndarray:
    """MediaPipe's SSD anchor centres (fixed size) for BlazeFace. ``[A, 2]`` in [0, 1]"""
    anchors = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        count = (j - i) * per_layer  # layers sharing a stride are merged
        cells = math.ceil(size / strides[i])
        yy, xx = np.mgrid[0:cells, 0:cells]
        centres = np.stack([(xx + 0.5) / cells, (yy + 0.5) / cells], -1).reshape(-1, 1, 2)  # [cells², 1, 2]
        anchors.append(np.repeat(centres, count, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(anchors).astype(np.float32)


@dataclass
class Face:
    """One detected face in image pixels.

    Attributes:
        box: ``(x0, y0, x1, y1)`` of BlazeFace (brows to chin, cheek to cheek).
        score: detection confidence in (0, 1).
        keypoints: right eye, left eye, nose tip, mouth, right ear, left ear (subject's sides). ``[6, 2]``
        landmarks: the 468 face-mesh landmarks (x, y, relative depth z in pixels) or None. ``[468, 3]``
        presence: face-mesh face presence score (0..1), NaN before the mesh ran.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray  # [6, 2]
    landmarks: np.ndarray | None = None  # [468, 3]
    presence: float = float("nan")

    @property
    def side(self) -> float:
        """The larger side of the box in pixels."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass
class HeadPose:
    """A head's pose relative to the camera that took the photo.

    Attributes:
        yaw_deg: the camera's azimuth around the head as in :func:`perchead.geometry.cameras.orbit_cameras`
            (0 = frontal; positive when the camera sees more of the head's own left side (+X), i.e. the
            face is turned toward the image's left).
        pitch_deg: the camera's elevation (+ = seen from above, as ``orbit_cameras``).
        roll_deg: in-plane rotation of the head in the photo, counter-clockwise on screen (degrees).
        rotation: head → camera rotation (OpenCV camera axes). ``[3, 3]``
        translation: the head centre in camera coordinates, metres for an assumed focal length. ``[3]``
        focal: the focal length assumed for the photo, pixels.
        centre: the head centre projected into the photo, pixels ``(x, y)``.
        pixels_per_metre: image scale at the head centre's depth.
        reprojection_px: RMS landmark reprojection error in pixels.
    """

    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    rotation: np.ndarray  # [3, 3]
    translation: np.ndarray  # [3]
    focal: float
    centre: tuple[float, float]
    pixels_per_metre: float
    reprojection_px: float = 0.0


# 3D positions (canonical head space, metres) of face-mesh landmarks (face_points.json), triangulated on
# renders of the test-split synthetic heads with known cameras (median over 12 heads × 27 views; ``python -m
# perchead.training.framing --face-points``): eye corners and lids, brows, nose, mouth, chin, forehead and
# cheeks.
# On real faces these synthetic positions read the camera too low: PnP of the same 38 landmarks against
# MediaPipe's canonical face model (a real-face average, Apache-2.0; measured offline, not shipped) gives
# pitches 17.0° higher on average (± 6.0° over the 13 faces of our real-portrait set; Obama's official
# portrait: −20.7° here, −2.4° there). The synthetic heads' faces are proportioned like a real face tipped
# forward, so an eye-level portrait matches them best seen from below. ``FitConfig.pose.landmark_pitch_offset_deg``
# can add this to the landmark pitch of the photo-fit's input camera (off by default: it puts synthetic
# heads, whose landmark pose is right, that far off); the framing keeps the landmark pose it was fitted on.
REAL_FACE_PITCH_DEG = 17.0
FACE_POINTS_FILE = Path(__file__).with_name("face_points.json")  # written by perchead.training.framing
FACE_POINTS_3D: dict[int, tuple[float, float, float]] = {
    int(index): tuple(xyz) for index, xyz in json.loads(FACE_POINTS_FILE.read_text()).items()}


class FaceAnalyzer:
    """BlazeFace + face mesh + selfie segmentation, loaded once from a model folder.

    Args:
        folder: holds :data:`MODEL_FILES`.
        threads: CPU threads per network.
        min_score: detection score threshold.
        confirm_score: detections scoring below this are kept only when the face mesh also sees a face.
        confirm_presence: the face mesh's presence score (after its second pass) that confirms a weak
            detection: on noise and textures, where BlazeFace alone fires up to 0.72, it stays below
            0.003; on a space suit 0.06; on real and synthetic faces 0.8–1.
    """

    def __init__(self, folder: str | os.PathLike, threads: int = 2, min_score: float = 0.5, confirm_score: float = 0.75,
                 confirm_presence: float = 0.5):
        folder = Path(folder)
        self.folder = folder
        self.short = _Net(folder / "face_detection_short_range.tflite", threads)
        self.full = _Net(folder / "face_detection_full_range_sparse.tflite", threads)
        self.mesh = _Net(folder / "face_landmark.tflite", threads)
        self.selfie = _Net(folder / "selfie_segmentation.tflite", threads)
        self.min_score = min_score
        self.confirm_score = confirm_score
        self.confirm_presence = confirm_presence
        self.short_anchors = _ssd_anchors(128, (8, 16, 16, 16), 2)  # [896, 2]
        self.full_anchors = _ssd_anchors(192, (4,), 1)  # [2304, 2]

    # ------------------------------------------------------------------------------------- detection
    def _run_detector(self, rgb: np.ndarray, net: _Net, anchors: np.ndarray, min_score: float) -> list[Face]:
        """One BlazeFace pass on the whole (letterboxed) image. Boxes in image pixels."""
        import cv2

        height, width = rgb.shape[:2]
        side = max(width, height)
        size = net.size[0]
        scale = size / side
        # letterbox: the image centred on a black square (MediaPipe's keep-aspect-ratio padding)
        ox, oy = (side - width) / 2, (side - height) / 2
        matrix = np.array([[scale, 0, ox * scale], [0, scale, oy * scale]], np.float32)
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.warpAffine(rgb, matrix, (size, size), flags=interp, borderValue=(0, 0, 0))  # [s, s, 3]
        if scale < 0.5:  # warpAffine does not average: shrink with area interpolation first
            small = cv2.warpAffine(cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA),
                                   np.array([[1, 0, ox * scale], [0, 1, oy * scale]], np.float32), (size, size),
                                   borderValue=(0, 0, 0))
        outputs = net(small.astype(np.float32) / 127.5 - 1.0)
        raw = next(o for o in outputs if o.shape[-1] == 16)  # [A, 16]
        logits = next(o for o in outputs if o.shape[-1] == 1)[:, 0]  # [A]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -50, 50)))  # [A]
        keep = np.nonzero(scores >= min_score)[0]
        if len(keep) == 0:
            return []
        raw, scores = raw[keep] / size, scores[keep]  # normalised units
        centres = anchors[keep]  # [K, 2]
        cxy = raw[:, :2] + centres  # [K, 2]
        wh = raw[:, 2:4]  # [K, 2]
        points = raw[:, 4:].reshape(-1, 6, 2) + centres[:, None]  # [K, 6, 2]
        boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], 1)  # [K, 4] normalised letterbox
        to_image = lambda v, o: v * side - o  # noqa: E731
        boxes = np.stack([to_image(boxes[:, 0], ox), to_image(boxes[:, 1], oy), to_image(boxes[:, 2], ox),
                          to_image(boxes[:, 3], oy)], 1)  # [K, 4] pixels
        points = np.stack([to_image(points[..., 0], ox), to_image(points[..., 1], oy)], -1)  # [K, 6, 2]
        return [Face(tuple(float(v) for v in b), float(s), p.astype(np.float32)) for b, s, p in zip(boxes, scores, points)]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces, largest first: short- and full-range BlazeFace on the whole image; on overlapping
        tiles (60 % of the shorter side) when the faces found are small (group photos); on a padded copy when a face
        fills the frame (tight crops); and, if nothing is found, on the image turned by 90°, 180° and 270°.

        Args:
            rgb: ``[H, W, 3]`` uint8 (grayscale photos as three equal channels).

        Returns:
            faces sorted by box area, largest first (after weighted non-maximum suppression).
        """
        import cv2

        height, width = rgb.shape[:2]
        largest = lambda found: max((f.side for f in found), default=0.0)  # noqa: E731
        faces = self._run_detector(rgb, self.short, self.short_anchors, self.min_score)
        faces += self._run_detector(rgb, self.full, self.full_anchors, max(self.min_score, 0.6))
        if max(width, height) >= 384 and largest(faces) < 0.15 * max(width, height):  # small faces: tiles
            tile = max(192, math.ceil(0.6 * min(width, height)))  # overlapping squares, a quarter overlap
            starts = lambda extent: np.linspace(0, max(0, extent - tile), max(1, math.ceil(max(0, extent - tile) / (0.75 * tile)) + 1))  # noqa: E731
            for ty in starts(height).round().astype(int):
                for tx in starts(width).round().astype(int):
                    part = rgb[ty : ty + tile, tx : tx + tile]
                    faces += [_shift(f, tx, ty) for f in self._run_detector(part, self.short, self.short_anchors, self.min_score)]
        if not faces or largest(faces) > 0.45 * min(width, height):  # a tight crop: beyond the largest anchors
            pad = max(width, height) // 3
            padded = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            faces += [_shift(f, -pad, -pad) for f in self._run_detector(padded, self.short, self.short_anchors, self.min_score)]
        if not faces:
            for turns in (1, 3, 2):  # sideways or upside-down photos without EXIF orientation
                turned = np.ascontiguousarray(np.rot90(rgb, turns))
                found = self._run_detector(turned, self.short, self.short_anchors, self.min_score)
                found += self._run_detector(turned, self.full, self.full_anchors, max(self.min_score, 0.6))
                if found:
                    faces = [_unrotate(f, turns, width, height) for f in found]
                    break
        faces = _drop_contained(_weighted_nms(faces, 0.3))
        confirmed = []
        for face in faces:  # weak detections must look like a face to the face mesh too
            if face.score >= self.confirm_score:
                confirmed.append(face)
            elif self.landmarks(rgb, face, passes=2).presence >= self.confirm_presence:  # the second pass,
                confirmed.append(face)  # on the crop the first landmarks give, tells faces from look-alikes
        return sorted(confirmed, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))

    # ------------------------------------------------------------------------------------- landmarks
    def landmarks(self, rgb: np.ndarray, face: Face, passes: int = 2) -> Face:
        """The 468 face-mesh landmarks of one detected face (in place and returned).

        The first pass crops around the detection (1.5 × the box, rotated so the eyes are level); later
        passes crop around the previous landmarks, as MediaPipe's face mesh tracker does.
        """
        left, right = face.keypoints[1], face.keypoints[0]
        centre = np.array([(face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2])
        side = 1.5 * face.side
        angle = math.atan2(left[1] - right[1], left[0] - right[0])  # eye line, image y down
        for _ in range(max(1, passes)):
            points, presence = self._mesh_at(rgb, centre, side, angle)
            face.landmarks, face.presence = points, presence
            right, left = points[RIGHT_EYE_OUTER, :2], points[LEFT_EYE_OUTER, :2]
            angle = math.atan2(left[1] - right[1], left[0] - right[0])
            c, s = math.cos(-angle), math.sin(-angle)
            level = (points[:, :2] - points[:, :2].mean(0)) @ np.array([[c, s], [-s, c]]).T  # eyes level
            lo, hi = level.min(0), level.max(0)
            mid = (lo + hi) / 2
            centre = points[:, :2].mean(0) + mid @ np.array([[c, -s], [s, c]]).T
            side = 1.5 * float((hi - lo).max())
        return face

    def _mesh_at(self, rgb: np.ndarray, centre: np.ndarray, side: float, angle: float) -> tuple[np.ndarray, float]:
        import cv2

        size = self.mesh.size[0]
        c, s = math.cos(angle), math.sin(angle)
        # crop pixel u ↦ image point: centre + R(angle) · (u − size/2) · side/size
        k = side / size
        forward = np.array([[c * k, -s * k, 0.0], [s * k, c * k, 0.0]])  # [2, 3] crop → image
        forward[:, 2] = centre - forward[:, :2] @ np.array([size / 2, size / 2])
        inverse = cv2.invertAffineTransform(forward)  # [2, 3] image → crop
        crop = cv2.warpAffine(rgb, inverse, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        raw, flag = self.mesh(crop.astype(np.float32) / 255.0)
        points = raw.reshape(-1, 3)  # [468, 3] crop pixels
        xy = points[:, :2] @ forward[:, :2].T + forward[:, 2]  # [468, 2]
        presence = float(1.0 / (1.0 + math.exp(-float(np.ravel(flag)[0]))))
        return np.concatenate([xy, points[:, 2:] * k], 1).astype(np.float32), presence

    # -------------------------------------------------------------------------------------- matting
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """Person matte of a (square) crop from the selfie segmentation network.

        Args:
            rgb: ``[S, S, 3]`` uint8.

        Returns:
            ``[S, S]`` float32 in [0, 1].
        """
        import cv2

        height, width = rgb.shape[:2]
        size = self.selfie.size
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if width > size[0] else cv2.INTER_LINEAR)
        (matte,) = self.selfie(small.astype(np.float32) / 255.0)
        matte = np.clip(matte[..., 0], 0.0, 1.0)  # [256, 256]
        return cv2.resize(matte, (width, height), interpolation=cv2.INTER_LINEAR)


def _shift(face: Face, dx: float, dy: float) -> Face:
    x0, y0, x1, y1 = face.box
    return Face((x0 + dx, y0 + dy, x1 + dx, y1 + dy), face.score, face.keypoints + np.array([dx, dy], np.float32))


def _unrotate(face: Face, turns: int, width: int, height: int) -> Face:
    """Maps a face found on ``np.rot90(image, turns)`` back to the original image."""
    points = face.keypoints.astype(np.float64)
    corners = np.array([[face.box[0], face.box[1]], [face.box[2], face.box[3]]])

    def back(p: np.ndarray) -> np.ndarray:
        x, y = p[..., 0], p[..., 1]
        if turns % 4 == 1:  # rot90 once: new (x, y) = (y_old, W − 1 − x_old) → old = (W − y, x)
            return np.stack([width - y, x], -1)
        if turns % 4 == 2:
            return np.stack([width - x, height - y], -1)
        if turns % 4 == 3:
            return np.stack([y, height - x], -1)
        return p
    points, corners = back(points), back(corners)
    box = (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()), float(corners[:, 1].max()))
    return Face(box, face.score, points.astype(np.float32))


def _iou(a: tuple, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(np.asarray(a)) + area(b) - inter, 1e-9)


def _drop_contained(faces: list[Face], share: float = 0.6) -> list[Face]:
    """Drops detections lying mostly (``share`` of their area) inside a larger one: a face within a face
    is a false positive (an eye or a mouth region seen as a small face)."""
    keep = []
    for face in faces:
        area = (face.box[2] - face.box[0]) * (face.box[3] - face.box[1])
        inside = False
        for other in faces:
            other_area = (other.box[2] - other.box[0]) * (other.box[3] - other.box[1])
            if other is face or other_area <= 1.5 * area:
                continue
            ix = max(0.0, min(face.box[2], other.box[2]) - max(face.box[0], other.box[0]))
            iy = max(0.0, min(face.box[3], other.box[3]) - max(face.box[1], other.box[1]))
            inside |= ix * iy >= share * area
        if not inside:
            keep.append(face)
    return keep


def _weighted_nms(faces: list[Face], threshold: float) -> list[Face]:
    """MediaPipe's weighted non-maximum suppression: overlapping detections are averaged by score."""
    if not faces:
        return []
    faces = sorted(faces, key=lambda f: -f.score)
    boxes = np.array([f.box for f in faces])  # [K, 4]
    used = np.zeros(len(faces), bool)
    merged = []
    for i, face in enumerate(faces):
        if used[i]:
            continue
        group = np.nonzero((_iou(face.box, boxes) > threshold) & ~used)[0]
        used[group] = True
        w = np.array([faces[j].score for j in group])[:, None]  # [G, 1]
        box = (boxes[group] * w).sum(0) / w.sum()
        points = (np.stack([faces[j].keypoints for j in group]) * w[:, :, None]).sum(0) / w.sum()
        merged.append(Face(tuple(float(v) for v in box), face.score, points.astype(np.float32)))
    return merged


# ----------------------------------------------------------------------------------------------- pose
def estimate_pose(landmarks: np.ndarray, width: int, height: int, fov_deg: float = 30.0) -> HeadPose:
    """Head pose from face-mesh landmarks by PnP against :data:`FACE_POINTS_3D`.

    Args:
        landmarks: ``[468, 2+]`` image pixels.
        width, height: the photo's size.
        fov_deg: field of view assumed for the photo across its larger side (the training cameras' 30°;
            a portrait lens is close to it, and the framing barely depends on it).

    Returns:
        :class:`HeadPose`.
    """
    import cv2

    if not FACE_POINTS_3D:
        raise RuntimeError("FACE_POINTS_3D is empty: run python -m perchead.training.framing --face-points")
    index = np.array(sorted(FACE_POINTS_3D))
    obj = np.array([FACE_POINTS_3D[i] for i in index], np.float64)  # [P, 3]
    img = np.asarray(landmarks, np.float64)[index, :2]  # [P, 2]
    focal = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], np.float64)
    # OpenCV camera: x right, y down, z forward; head space: +Y up, face toward +Z. A start facing the camera:
    start = np.array([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]])  # head → camera for a frontal view
    rvec0, _ = cv2.Rodrigues(start)
    depth0 = focal * 0.09 / max(1.0, float(np.linalg.norm(img[obj[:, 0].argmax()] - img[obj[:, 0].argmin()])))
    centre0 = img.mean(0)
    tvec0 = np.array([(centre0[0] - width / 2) * depth0 / focal, (centre0[1] - height / 2) * depth0 / focal, depth0])
    if not np.all(np.isfinite(img)):
        raise RuntimeError("the landmarks are not finite")
    try:
        ok, rvec, tvec = cv2.solvePnP(obj, img, K, None, rvec0.copy(), tvec0.reshape(3, 1).copy(), True, cv2.SOLVEPNP_ITERATIVE)
    except cv2.error as error:
        raise RuntimeError(f"head pose estimation failed ({error})") from error
    if not ok or not np.all(np.isfinite(tvec)) or tvec[2, 0] <= 0:
        raise RuntimeError("head pose estimation failed")
    rotation, _ = cv2.Rodrigues(rvec)  # [3, 3] head → camera
    translation = tvec[:, 0]  # [3]
    projected, _ = cv2.projectPoints(obj, rvec, tvec, K, None)
    error = float(np.sqrt(((projected[:, 0] - img) ** 2).sum(1).mean()))
    eye = -rotation.T @ translation  # the camera centre in head space
    yaw = math.degrees(math.atan2(eye[0], eye[2]))
    pitch = math.degrees(math.asin(float(np.clip(eye[1] / np.linalg.norm(eye), -1, 1))))
    cx = focal * translation[0] / translation[2] + width / 2
    cy = focal * translation[1] / translation[2] + height / 2
    up = rotation @ np.array([0.0, 0.1, 0.0]) + translation  # a point above the head centre
    ux, uy = focal * up[0] / up[2] + width / 2 - cx, focal * up[1] / up[2] + height / 2 - cy
    roll = math.degrees(math.atan2(-ux, -uy))  # 0 when "up" points straight up on screen; + = counter-clockwise
    return HeadPose(yaw, pitch, roll, rotation, translation, focal, (float(cx), float(cy)),
                    float(focal / translation[2]), error)


# ------------------------------------------------------------------------------------------- loading
_ANALYZER: FaceAnalyzer | None = None
_ANALYZER_ERROR: str | None = None
_ANALYZER_LOCK = threading.Lock()


def load_analyzer(fetch: bool | None = None) -> FaceAnalyzer | None:
    """The shared :class:`FaceAnalyzer`, or None (reason in :func:`unavailable_reason`) when the runtime
    or the model files are missing.

    Args:
        fetch: download the model files when absent; default: unless ``HF_HUB_OFFLINE`` or
            ``PERCHEAD_NO_FETCH`` is set.
    """
    global _ANALYZER, _ANALYZER_ERROR
    with _ANALYZER_LOCK:
        if _ANALYZER is not None or _ANALYZER_ERROR is not None:
            return _ANALYZER
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            _ANALYZER_ERROR = "the TFLite runtime (pip package ai-edge-litert) is not installed"
            return None
        folder = find_models()
        if folder is None:
            if fetch is None:
                fetch = not (hub_offline() or os.environ.get("PERCHEAD_NO_FETCH"))
            if fetch:
                try:
                    folder = fetch_models()
                except RuntimeError as error:
                    _ANALYZER_ERROR = f"the MediaPipe face models are missing and could not be fetched ({error})"
                    return None
            else:
                _ANALYZER_ERROR = "the MediaPipe face models are missing (run: python3 tasks.py install)"
                return None
        try:
            _ANALYZER = FaceAnalyzer(folder)
        except (OSError, RuntimeError, ValueError) as error:
            _ANALYZER_ERROR = f"the MediaPipe face models could not be loaded ({error})"
        return _ANALYZER


def unavailable_reason() -> str | None:
    """Why :func:`load_analyzer` returned None (None when it did not)."""
    return _ANALYZER_ERROR


def reset_analyzer() -> None:
    """Forgets the shared analyzer and its error (tests, or after fetching the files)."""
    global _ANALYZER, _ANALYZER_ERROR
    with _ANALYZER_LOCK:
        _ANALYZER, _ANALYZER_ERROR = None, None


