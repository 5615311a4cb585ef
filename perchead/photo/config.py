"""How photos become model inputs: :class:`PreprocessConfig`, every number of the crop and the matting."""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image


ParseFn = Callable[[np.ndarray], np.ndarray]  # RGB uint8 [H, W, 3] → class labels int [H, W] (0..18)


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
            the selfie matte (:mod:`perchead.photo.framing`; one more run of the matting network).
        fine_size: also cut the same crop at this larger size (:attr:`Preprocessed.fine`; the photo-fit's
            ``FitConfig.photo.crop_size``): only the crop and its matte are made again, not the search for the head.
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
