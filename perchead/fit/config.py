"""Photo-fit settings: :class:`FitConfig`, one group per stage of the fit (all values ours: the PercHead paper has
no per-subject stage; ID-TS optimises for ~400 s on a GPU, this fit is sized for seconds on a CPU).

Groups, in the order the fit uses them: ``photo`` (what is compared with the photo, and how), ``pose`` (the
input camera when the photo gives none), ``latent`` (the latent stage), ``face`` (the face-shape step),
``head`` (the head transform), ``gaussians`` (the Gaussian stage), ``camera`` (the input camera refined
during it) and ``priors`` (what keeps the views the photo does not show close to the prediction).

Presets (:meth:`FitConfig.preset`) and overrides (:meth:`FitConfig.with_overrides`) name a field by its
group and name: ``"latent.steps"``, ``"face.enabled"``; benchmarks take the same names as ``--set
latent.steps=0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from perchead.photo.faces import REAL_FACE_PITCH_DEG

MAX_FIT_STEPS = 2000  # more than this is a mistake, not a setting


def check_steps(steps) -> int:
    """Validates a step count: an int in ``[0, MAX_FIT_STEPS]`` (bools and floats are refused)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"fit steps must be an integer, got {steps!r}")
    if steps < 0:
        raise ValueError(f"fit steps must be >= 0 (0 = no fit), got {steps}")
    if steps > MAX_FIT_STEPS:
        raise ValueError(f"fit steps must be at most {MAX_FIT_STEPS}, got {steps}")
    return steps


def _check_non_negative(group: Any, names: tuple[str, ...]) -> None:
    """Raises ``ValueError`` unless each named field of ``group`` is a finite number >= 0."""
    for name in names:
        value = getattr(group, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"FitConfig.{group.GROUP}.{name} must be a finite number >= 0, got {value!r}")


def _check_range(group: Any, name: str, lo: float, hi: float) -> None:
    """Raises ``ValueError`` unless the field lies in ``[lo, hi]``."""
    value = getattr(group, name)
    if not lo <= value <= hi:
        raise ValueError(f"FitConfig.{group.GROUP}.{name} must lie in [{lo:g}, {hi:g}], got {value}")


@dataclass
class PhotoConfig:
    """What the fit compares with the photo, and how.

    Attributes:
        w_photo: weight of the masked L1 photo term in the input view.
        w_silhouette: weight of the L1 between rendered alpha and the matte in the input view.
        outside_matte_color: the share of the photo term's colour gradient kept outside the matte (0: there
            it moves only coverage — opacity, position — so a Gaussian at the silhouette clears by turning
            transparent or moving rather than by taking the background's white, which other views show
            as a white band; 1: colour and coverage alike).
        fit_size: largest image size the fit renders at; a larger model input is compared at this size
            (area-downsampled), so the paper preset's 518² input costs about a quarter (None = full size).
        crop_size: the side of the photo crop the fit compares with, when a pipeline fits a photo: None =
            the model input itself; larger = the same crop box cut a second time at this size (the network
            still reads the model-size crop), for the eyes and mouth that the finer face Gaussians can show
            but the model input's pixels are too coarse to carry. Compared at most at ``fit_size``.
        through_refiner: compare the photo with the CNN-refined render (what the outputs show); off by
            default: the same PSNR on synthetic heads (measured) for a third less time.
    """

    GROUP = "photo"
    w_photo: float = 1.0
    w_silhouette: float = 1.0
    outside_matte_color: float = 0.3
    fit_size: int | None = 256
    crop_size: int | None = None
    through_refiner: bool = False

    def __post_init__(self) -> None:
        _check_non_negative(self, ("w_photo", "w_silhouette", "outside_matte_color"))
        _check_range(self, "outside_matte_color", 0, 1)
        if self.fit_size is not None and self.fit_size < 8:
            raise ValueError(f"FitConfig.photo.fit_size must be None or >= 8, got {self.fit_size}")
        if self.crop_size is not None and (isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int)
                                           or not 8 <= self.crop_size <= 1024):
            raise ValueError("FitConfig.photo.crop_size must be None or an integer in [8, 1024], got "
                             f"{self.crop_size!r}")


@dataclass
class PoseConfig:
    """The input camera when the photo gives no head pose: a render-and-compare search; and the landmark pose's
    pitch offset when it does.

    Attributes:
        search: without a known pose, search yaw, then pitch, by render-and-compare before the fit.
        azimuths: yaw grid of the search, degrees: the whole circle, since a photo may show the head from
            the side or from behind (the model predicts every head facing the front).
        azimuth_offsets: the yaws tried around the grid's best, degrees, to refine it.
        elevations: pitch grid of the search, degrees.
        size: image size of the search renders.
        landmark_pitch_offset_deg: added to the landmark pose's pitch for the input camera (a pipeline on a
            photo with landmarks). Our synthetic heads' landmark layout reads real faces about
            :data:`perchead.photo.faces.REAL_FACE_PITCH_DEG` too low; setting that here fits real portraits
            from their measured camera height but puts renders of synthetic heads (whose landmark pose is
            right) that far off, so the default is 0.
    """

    GROUP = "pose"
    search: bool = True
    azimuths: tuple[float, ...] = tuple(float(a) for a in range(-165, 181, 15))
    azimuth_offsets: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    elevations: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0)
    size: int = 48
    landmark_pitch_offset_deg: float = 0.0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"FitConfig.pose.size must be >= 8, got {self.size}")
        if not self.azimuths or not self.elevations:
            raise ValueError("FitConfig.pose.azimuths and pose.elevations must not be empty")
        if not (math.isfinite(self.landmark_pitch_offset_deg) and abs(self.landmark_pitch_offset_deg) <= 45):
            raise ValueError("FitConfig.pose.landmark_pitch_offset_deg must lie in [-45, 45], got "
                             f"{self.landmark_pitch_offset_deg}")


@dataclass
class LatentConfig:
    """The latent stage: an offset to the lift encoder's 2D tokens is optimised, the network frozen, so that the
    decoded head's render matches the photo.

    Attributes:
        steps: its steps, before the Gaussian stage (0 = none).
        lr: Adam step size on the 2D-token offset.
        w_alpha: weight of its silhouette prior: the decoded head's alpha in the distillation views against
            the network's own prediction's, weighted like the self-distillation (0 = none). A real face is not
            what the network was trained on, and the latent stage then pulls Gaussians off the surface along
            the input camera's rays (invisible from there, streaks across the eyes from the side); on
            synthetic heads the latent stage's free change of the head's shape is what helps, so the default
            is 0.
    """

    GROUP = "latent"
    steps: int = 20
    lr: float = 0.1
    w_alpha: float = 0.0

    def __post_init__(self) -> None:
        check_steps(self.steps)
        _check_non_negative(self, ("lr", "w_alpha"))


@dataclass
class FaceShapeConfig:
    """The face-shape step before the Gaussian stage: the head's face moved toward the face mesh's depth profile
    (:mod:`perchead.fit.face_shape`; needs the landmarks, e.g. from the pipeline).

    Attributes:
        enabled: run it.
        weight: how far toward the mesh's profile (0 = the prediction's, 1 = the mesh's).
        depth_scale: metres of depth per metre of the mesh's relative z.
        sigma: width of the kernel that spreads the landmarks' changes to the Gaussians, metres.
        max_depth: bound on each landmark's depth change, metres.
    """

    GROUP = "face"
    enabled: bool = False
    weight: float = 0.25
    depth_scale: float = 0.6
    sigma: float = 0.01
    max_depth: float = 0.01

    def __post_init__(self) -> None:
        _check_non_negative(self, ("depth_scale", "max_depth"))
        _check_range(self, "weight", 0, 1)
        if not self.sigma > 0:
            raise ValueError(f"FitConfig.face.sigma must be > 0, got {self.sigma}")


@dataclass
class HeadTransformConfig:
    """The head transform: one bounded change of the whole head in the input camera's image plane.

    Attributes:
        enabled: fit it (off = the head keeps its predicted size and place).
        taper_degree: terms of the height change that vary with the height (0: one height scale; 1: linear;
            2: linear and quadratic), so crown and chin scale apart.
        lr: Adam step size on its raw parameters.
        max_log_scale: bound on its log width / height scale and on each of its taper terms.
        max_shift: bound on its shift along the image axes, metres.
    """

    GROUP = "head"
    enabled: bool = True
    taper_degree: int = 2
    lr: float = 0.04
    max_log_scale: float = 0.1
    max_shift: float = 0.01

    def __post_init__(self) -> None:
        _check_non_negative(self, ("lr", "max_log_scale", "max_shift"))
        if self.taper_degree not in (0, 1, 2):
            raise ValueError(f"FitConfig.head.taper_degree must be 0, 1 or 2, got {self.taper_degree!r}")


@dataclass
class GaussianStageConfig:
    """The Gaussian stage: bounded changes of every Gaussian, after splitting the ones facing the camera.

    Attributes:
        steps: its optimisation steps (0 = none).
        lr_color: Adam step size on colour logits.
        lr_opacity: Adam step size on opacity logits.
        lr_offset: Adam step size on the (tanh) position-offset parameters.
        lr_scale: Adam step size on the (tanh) log-scale parameters.
        lr_final: every step size decays by a half cosine from its value at the first step to this fraction of
            it at the last (1 = constant).
        geometry_from: fraction of the steps after which positions and scales start to move.
        max_offset: bound on each Gaussian's position change per axis, metres.
        max_log_scale: bound on each Gaussian's log-scale change (log 1.5: at most ×1.5 or ÷1.5).
        split_share: before the stage, this share of the head's Gaussians — those facing the input camera most
            squarely — are each split into four finer ones (:func:`perchead.fit.gaussians.split_gaussians`),
            for the detail the predicted Gaussians are too large to show (eyes, mouth; the bundled model's face
            Gaussians lie 3 mm apart and are 6 mm wide). The fitted head then has ``3 × share × N`` more
            Gaussians.
        unseen_colors: after the stage, what the photo did not see takes no colour from it: each Gaussian keeps
            its fitted colour as far as the input camera saw it (a depth test against the head's depth rendered
            from there, times a ramp from ``grazing_cos`` to ``facing_cos`` of how squarely it faces the camera,
            or its transmittance there: :func:`perchead.fit.views.seen_share`), the rest from its left–right
            mirror as far as that was seen (matched in local mean colour), else from the stage's starting head
            (:func:`perchead.fit.priors.unseen_colors`).
        grazing_cos: the cosine between a Gaussian's normal and the ray to the input camera at or below which the
            photo's pixels count as not seeing it (grazing rays).
        facing_cos: the cosine at or above which they see it wholly (> ``grazing_cos``).
        depth_tolerance: how far behind the surface rendered from the input camera a Gaussian still counts as
            seen (wholly up to this, not at all from twice this), metres.
        shown_full: the share of a Gaussian the input view shows past the others (its transmittance) from which
            it counts as wholly seen whatever the depth test says (above 1: the depth test alone).
        mirror_match: how a mirrored colour is matched to its side: ``"patch"`` (the mirror's colour plus the
            difference of the starting head's mean colours of the two 16-Gaussian patches) or ``"gaussian"``
            (the mirror's change from its start added to the Gaussian's own start).
    """

    GROUP = "gaussians"
    steps: int = 40
    lr_color: float = 0.1
    lr_opacity: float = 0.2
    lr_offset: float = 0.05
    lr_scale: float = 0.05
    lr_final: float = 0.1
    geometry_from: float = 0.3
    max_offset: float = 0.004
    max_log_scale: float = math.log(1.5)
    split_share: float = 0.125
    unseen_colors: bool = True
    grazing_cos: float = 0.25
    facing_cos: float = 0.5
    depth_tolerance: float = 0.01
    shown_full: float = 0.2
    mirror_match: str = "gaussian"

    def __post_init__(self) -> None:
        check_steps(self.steps)
        _check_range(self, "grazing_cos", -1, 1)
        _check_range(self, "facing_cos", -1, 1)
        if not (math.isfinite(self.depth_tolerance) and self.depth_tolerance > 0):
            raise ValueError(f"FitConfig.gaussians.depth_tolerance must be > 0, got {self.depth_tolerance}")
        if not (math.isfinite(self.shown_full) and self.shown_full > 0):
            raise ValueError(f"FitConfig.gaussians.shown_full must be > 0, got {self.shown_full}")
        if self.mirror_match not in ("patch", "gaussian"):
            raise ValueError(f"FitConfig.gaussians.mirror_match must be 'patch' or 'gaussian', got {self.mirror_match!r}")
        if not self.facing_cos > self.grazing_cos:
            raise ValueError(f"FitConfig.gaussians.facing_cos must exceed gaussians.grazing_cos, got "
                             f"{self.facing_cos} and {self.grazing_cos}")
        _check_non_negative(self, ("lr_color", "lr_opacity", "lr_offset", "lr_scale", "max_offset", "max_log_scale",
                                   "lr_final", "split_share"))
        _check_range(self, "split_share", 0, 1)
        _check_range(self, "lr_final", 0, 1)
        _check_range(self, "geometry_from", 0, 1)


@dataclass
class CameraConfig:
    """The input camera refined jointly with the Gaussians in the first steps of the Gaussian stage (bounded).

    Attributes:
        steps: the first steps in which it is refined (0 = fixed camera).
        lr: Adam step size on the camera parameters (radians, log-focal, pixels / size).
        max_deg: bound on the refined yaw / pitch / roll change, degrees.
        max_shift: bound on the principal-point shift, as a fraction of the image size (0: the head transform
            shifts the head instead).
        max_log_focal: bound on the log focal-length change (scale of the head in the image; 0: the head
            transform scales the head instead).
        rotate_head: the refined yaw / pitch / roll turn the head (all views see it) rather than the input
            camera (only the input view sees it); the returned camera is then the given one.
    """

    GROUP = "camera"
    steps: int = 10
    lr: float = 0.01
    max_deg: float = 8.0
    max_shift: float = 0.0
    max_log_focal: float = 0.0
    rotate_head: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"FitConfig.camera.steps must be >= 0, got {self.steps}")
        _check_non_negative(self, ("lr", "max_deg", "max_shift", "max_log_focal"))


@dataclass
class PriorConfig:
    """What keeps the views the photo does not show close to the prediction during the Gaussian stage.

    Attributes:
        w_distill: weight of self-distillation (rgb + alpha L1 against the prediction's renders; 1 ≈ the photo's
            weight, 0.1 measured best: more holds the fitted outline and colours back).
        distill_azimuths: distillation views' yaw relative to the input camera, degrees.
        distill_elevations: the distillation views' elevations (absolute), degrees; one ring per value.
        distill_per_step: distillation views rendered per step (cycled in a seeded order).
        distill_size: image size of the distillation renders.
        w_symmetry: weight pulling each Gaussian's change toward its mirror's, where the mirror is more visible
            (colour and x-mirrored offset).
        w_smooth: weight of colour-change smoothness within each 16-Gaussian patch.
        w_anchor: weight of the parameter anchor for Gaussians facing away from the input camera.
        seed: seed of the distillation view order (the fit is otherwise deterministic).
    """

    GROUP = "priors"
    w_distill: float = 0.1
    distill_azimuths: tuple[float, ...] = (60.0, 90.0, 135.0, 180.0, -135.0, -90.0, -60.0)
    distill_elevations: tuple[float, ...] = (0.0,)
    distill_per_step: int = 1
    distill_size: int = 64
    w_symmetry: float = 0.5
    w_smooth: float = 0.5
    w_anchor: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        _check_non_negative(self, ("w_distill", "w_symmetry", "w_smooth", "w_anchor"))
        if self.distill_size < 8:
            raise ValueError(f"FitConfig.priors.distill_size must be >= 8, got {self.distill_size}")
        if self.distill_per_step < 0:
            raise ValueError(f"FitConfig.priors.distill_per_step must be >= 0, got {self.distill_per_step}")


# FitConfig.preset("real"): the fit of a photo of a real person (the app's "Photo of a real person"); each
# field's docstring says what it does
REAL_PHOTO = {
    "pose.landmark_pitch_offset_deg": REAL_FACE_PITCH_DEG,  # a real face's landmarks put the camera higher
    "face.enabled": True,  # the face mesh was trained on real faces, the network on synthetic ones:
    "face.weight": 1.0,  # its depth profile, not a blend
    "face.max_depth": 0.02,
    "latent.w_alpha": 1.0,  # no streaks along the input camera's rays
    "photo.crop_size": 256,  # eyes and mouth finer than the 128² model input
    "gaussians.split_share": 0.25,  # and twice the finer face Gaussians to show them
}
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {},
    "real": REAL_PHOTO,
    "quality": {"gaussians.steps": 120, "priors.distill_per_step": 2, "camera.steps": 20},
    "tiny": {"gaussians.steps": 8, "latent.steps": 0, "camera.steps": 2, "pose.size": 16, "priors.distill_size": 16,
             "pose.azimuths": (-20.0, 0.0, 20.0), "pose.elevations": (0.0,), "gaussians.split_share": 0.0},
}


@dataclass
class FitConfig:
    """Photo-fit settings, one group per stage (see each group's class for its fields).

    Attributes:
        photo: :class:`PhotoConfig`, what is compared with the photo.
        pose: :class:`PoseConfig`, the input camera's search.
        latent: :class:`LatentConfig`, the latent stage.
        face: :class:`FaceShapeConfig`, the face-shape step.
        head: :class:`HeadTransformConfig`, the head transform.
        gaussians: :class:`GaussianStageConfig`, the Gaussian stage.
        camera: :class:`CameraConfig`, the input camera refined during it.
        priors: :class:`PriorConfig`, self-distillation, symmetry, smoothness, anchor.
    """

    photo: PhotoConfig = field(default_factory=PhotoConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    face: FaceShapeConfig = field(default_factory=FaceShapeConfig)
    head: HeadTransformConfig = field(default_factory=HeadTransformConfig)
    gaussians: GaussianStageConfig = field(default_factory=GaussianStageConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    priors: PriorConfig = field(default_factory=PriorConfig)

    def __post_init__(self) -> None:
        for group in fields(self):
            value = getattr(self, group.name)
            if not is_dataclass(value) or getattr(value, "GROUP", None) != group.name:
                raise ValueError(f"FitConfig.{group.name} must be a {group.type}, got {type(value).__name__}")

    @classmethod
    def preset(cls, name: str, overrides: dict[str, Any] | None = None) -> "FitConfig":
        """A named preset with ``overrides`` (dotted names, :meth:`with_overrides`): ``"fast"`` (the default:
        seconds on 2 CPU cores for the bundled model), ``"real"`` (the app's, for a photo of a real person:
        ``fast`` from the camera height of a real face's landmarks, with the face mesh's depth profile, the
        latent stage's silhouette prior, a 256² photo and twice the finer face Gaussians; :data:`REAL_PHOTO`),
        ``"quality"`` (3× the steps, two distillation views per step), ``"tiny"`` (tests; no latent stage).

        Raises:
            ValueError: an unknown preset or override name, or a value out of its range.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown FitConfig preset {name!r}; choose from {sorted(PRESETS)}")
        return cls().with_overrides({**PRESETS[name], **(overrides or {})})

    def with_overrides(self, overrides: dict[str, Any]) -> "FitConfig":
        """A copy with fields replaced by dotted name, e.g. ``{"latent.steps": 0, "face.enabled": True}``
        (each changed group checked again).

        Raises:
            ValueError: a name that is not ``group.field`` of this config, or a value out of its range.
        """
        groups: dict[str, dict[str, Any]] = {}
        for name, value in overrides.items():
            group, _, key = name.partition(".")
            if group not in self.__dataclass_fields__ or key not in getattr(self, group).__dataclass_fields__:
                raise ValueError(f"unknown FitConfig field {name!r}; fields are named group.field, e.g. "
                                 "'latent.steps' (groups: " + ", ".join(self.__dataclass_fields__) + ")")
            groups.setdefault(group, {})[key] = value
        return replace(self, **{group: replace(getattr(self, group), **values) for group, values in groups.items()})

    @classmethod
    def field_names(cls) -> list[str]:
        """Every field's dotted name (``"photo.w_photo"``, …), in order."""
        config = cls()
        return [f"{group.name}.{f.name}" for group in fields(config) for f in fields(getattr(config, group.name))]


def with_steps(config: FitConfig | None, steps: int) -> FitConfig:
    """``config`` (default: the fast preset) with ``steps`` Gaussian-stage steps, keeping the camera steps within
    them."""
    config = config or FitConfig()
    return config.with_overrides({"gaussians.steps": steps, "camera.steps": min(config.camera.steps, steps)})
