"""Photo preprocessing: any portrait → the square, white-background head crop PercHead was trained on.

PercHead (paper §3.1, §4) feeds the lift encoder an image of the head with its background removed and a
foreground mask (only foreground patches are encoded). Our model's input views are
``orbit_cameras(radius=0.7 m, fov_deg=30)`` renders of a head centred at the origin, so a photo has to be
cropped to the same framing before it goes in. Everything here works offline: face detection with
OpenCV's bundled Haar cascades, background removal with GrabCut seeded by the head box (or the image's
own alpha channel), and an optional 19-class face parser hook that replaces GrabCut when configured.

Real photos go through networks trained on real faces (:mod:`perchead.photo.faces`, MediaPipe's
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

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from perchead.geometry.images import to_uint8
from perchead.photo.config import PreprocessConfig
from perchead.photo.crop import (
    Box, detect_face, face_to_crop, inside_crop, pose_to_crop, silhouette_crop, silhouette_head_box, silhouette_to_crop,
    whole_image_crop,
)
from perchead.photo.load import ImageSource, PreprocessError, load_image
from perchead.photo.matting import cut_out


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
        pose: the head pose in the photo (:class:`perchead.photo.faces.HeadPose`) or None; its yaw and
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
    pose: object | None = None  # perchead.photo.faces.HeadPose
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
        :data:`perchead.photo.faces.REAL_FACE_PITCH_DEG`."""
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
        (:func:`perchead.photo.label_map.photo_label_map`), or None without landmarks.

        Args:
            parsed: optional face parser map of ``image`` ``[S, S]``: it then decides outside the face.

        Returns:
            ``[S, S]`` long, or None.
        """
        if self.landmarks is None:
            return None
        from perchead.photo.label_map import photo_label_map

        parsed = None if parsed is None else np.asarray(parsed)
        labels = photo_label_map(to_uint8(self.image[0]), self.mask[0, 0].numpy(), self.landmarks, parsed)  # [S, S]
        return torch.from_numpy(labels.astype(np.int64))

    def preview(self) -> Image.Image:
        """The model input (over white) beside its mask, as one RGB image ``[S, 2S]``."""
        rgb = to_uint8(self.image[0])  # [S, S, 3]
        mask = to_uint8(self.mask[0].expand(3, -1, -1))  # [S, S, 3]
        return Image.fromarray(np.concatenate([rgb, mask], axis=1))


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
        from perchead.photo import faces as face_module

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
                from perchead.photo import framing

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


def _is_grayscale(rgb: np.ndarray) -> bool:
    """True when the three channels (nearly) agree everywhere (checked on a subsample)."""
    sample = rgb[:: max(1, rgb.shape[0] // 128), :: max(1, rgb.shape[1] // 128)].astype(np.int16)  # [h, w, 3]
    return bool(np.abs(sample - sample[..., :1]).max() <= 3)


