"""Photo-fit: per-subject refinement of a predicted head against its photo (after the feed-forward pass).

The feed-forward prediction is a good prior but an averaged likeness. As in ID-TS / HQ-Head (optimise
each subject after the feed-forward pass), :func:`fit_to_photo` refines one head's Gaussians so their
render from the input camera matches the photo inside its matte, with priors that keep what the photo
does not show close to the prediction:

1. **Input camera**: the preprocessing's head pose (landmarks) when known, else a render-and-compare
   search over yaw/pitch; then yaw, pitch and roll are refined jointly in the first ``camera_steps``
   steps (bounded; focal scale and shift can be, but by default the head transform takes their place).
   With ``rotate_head`` the refined rotation turns the head instead of the camera: the same input view,
   but every other view sees the turn too.
2. **Latent stage** (``latent_steps``): first the network itself is asked for a head that matches the
   photo better. An offset to the lift encoder's 2D tokens is optimised (the network frozen) so that the
   decoded head's render from the input camera matches the photo. Every 3D patch reads all 2D tokens, so
   what the photo corrects on the visible side reaches the hidden side the way the network learned it
   would; per-Gaussian changes cannot do that. The decoded head replaces the prediction for the steps below.
3. **Head transform** (``head_transform``): one bounded change of the whole head in the input camera's
   image plane — width and height scales, a width that varies with the height (taper), a height that
   varies with the height (crown and chin scaled apart), and a shift — with the depth left as predicted.
   A head predicted too wide, too narrow at the crown or off-centre is seen so in the photo, and the
   change moves every view: the sides and the back share the outline the photo shows. (Zoom and shift
   of the camera fit the photo equally well but leave the other views as predicted.)
4. **Fit**: first the Gaussians facing the input camera most squarely are split into four finer ones
   each (``split_share``: detail the predicted Gaussians are too large for); then colours and
   opacities from the start, bounded position and scale offsets after
   ``geometry_from`` of the steps (outside the matte the photo's white pulls mostly on coverage, not on
   colour: ``outside_matte_color``); Adam, its step sizes decaying by a half cosine to ``lr_final`` of
   their start. Offsets are ``max_offset · tanh(·)`` so no Gaussian moves further.
5. **Priors**: self-distillation (the latent stage's head, or else the prediction, rendered from other
   views as soft targets, weighted by ``(1 − cos θ) / 2`` away from the input view, re-rendered through
   the current head transform so the prior keeps the predicted surface, not its predicted outline),
   left–right symmetry
   (the hidden side follows the mirrored visible side), colour smoothness within each 16-Gaussian patch,
   an anchor on the parameters of Gaussians facing away from the camera, and silhouette consistency
   (alpha vs matte in the input view, alpha vs the prediction's alpha in the other views).

No identity or perceptual network is optimised against, so identity measures stay independent.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.geometry.cameras import Cameras, camera_centers, orbit_cameras
from perchead.geometry.gaussians import Gaussians, quaternion_to_matrix
from perchead.progress import Progress, no_progress
from perchead.photo.faces import REAL_FACE_PITCH_DEG

PATCH = 16  # Gaussians per 3D patch (paper §3.3)
MAX_FIT_STEPS = 2000  # more than this is a mistake, not a setting
# FitConfig.preset("real"): the fit of a photo of a real person (the app's "Photo of a real person"); each
# field's docstring says what it does, README "Photo-fit" what it measured
REAL_PHOTO = {
    "landmark_pitch_offset_deg": REAL_FACE_PITCH_DEG,  # a real face's landmarks put the camera higher
    "face_shape": True,  # the face mesh was trained on real faces, the network on synthetic ones:
    "face_shape_weight": 1.0,  # its depth profile, not a blend
    "face_max_depth": 0.02,
    "w_latent_alpha": 1.0,  # no streaks along the input camera's rays
    "photo_size": 256,  # eyes and mouth finer than the 128² model input
    "split_share": 0.25,  # and twice the finer face Gaussians to show them
}


@dataclass
class FitConfig:
    """Photo-fit settings (all values ours: the PercHead paper has no per-subject stage; ID-TS optimises
    for ~400 s on a GPU, this fit is sized for seconds on a CPU).

    Attributes:
        steps: optimisation steps of the Gaussians themselves (0 = none).
        latent_steps: steps of the latent stage before them (0 = none): an offset to the lift encoder's 2D
            tokens is optimised, the network frozen, so that the decoded head's render matches the photo.
        lr_latent: Adam step size on the 2D-token offset.
        lr_color: Adam step size on colour logits.
        lr_opacity: Adam step size on opacity logits.
        lr_offset: Adam step size on the (tanh) position-offset parameters.
        lr_scale: Adam step size on the (tanh) log-scale parameters.
        lr_camera: Adam step size on the camera parameters (radians, log-focal, pixels / size).
        geometry_from: fraction of the steps after which positions and scales start to move.
        max_offset: bound on each Gaussian's position change per axis, metres.
        max_log_scale: bound on each Gaussian's log-scale change (log 1.5: at most ×1.5 or ÷1.5).
        camera_steps: the first steps in which the input camera is refined jointly (0 = fixed camera).
        max_camera_deg: bound on the refined yaw / pitch / roll change, degrees.
        max_camera_shift: bound on the principal-point shift, as a fraction of the image size (0: the
            head transform shifts the head instead).
        max_camera_log_focal: bound on the log focal-length change (scale of the head in the image; 0:
            the head transform scales the head instead).
        head_transform: fit the bounded whole-head change in the input camera's image plane (module
            docstring); off = the head keeps its predicted size and place.
        rotate_head: the refined yaw / pitch / roll turn the head (all views see it) rather than the
            input camera (only the input view sees it); the returned camera is then the given one.
        height_taper_degree: terms of the head transform's height change that vary with the height
            (0: one height scale; 1: linear; 2: linear and quadratic), so crown and chin scale apart.
        lr_head: Adam step size on the head transform's raw parameters.
        max_head_log_scale: bound on the head transform's log width / height scale and on each of its
            taper terms.
        max_head_shift: bound on the head transform's shift along the image axes, metres.
        pose_search: without a known pose, search yaw, then pitch, by render-and-compare before the fit.
        search_azimuths: yaw grid of the search, degrees: the whole circle, since a photo may show the
            head from the side or from behind (the model predicts every head facing the front).
        search_azimuth_offsets: the yaws tried around the grid's best, degrees, to refine it.
        search_elevations: pitch grid of the search, degrees.
        search_size: image size of the search renders.
        fit_size: largest image size the fit renders at; a larger model input is compared at this size
            (area-downsampled), so the paper preset's 518² input costs about a quarter (None = full size).
        through_refiner: compare the photo with the CNN-refined render (what the outputs show); off by
            default: the same PSNR on synthetic heads (measured) for a third less time.
        outside_matte_color: the share of the photo term's colour gradient kept outside the matte (0: there
            it moves only coverage — opacity, position — so a Gaussian at the silhouette clears by turning
            transparent or moving rather than by taking the background's white, which other views show
            as a white band; 1: colour and coverage alike).
        w_photo: weight of the masked L1 photo term in the input view.
        w_silhouette: weight of the L1 between rendered alpha and the matte in the input view.
        w_distill: weight of self-distillation (rgb + alpha L1 against the prediction's renders; 1 ≈ the
            photo's weight, 0.1 measured best: more holds the fitted outline and colours back).
        distill_azimuths: distillation views' yaw relative to the input camera, degrees.
        distill_elevations: the distillation views' elevations (absolute), degrees; one ring per value.
        distill_per_step: distillation views rendered per step (cycled in a seeded order).
        distill_size: image size of the distillation renders.
        w_symmetry: weight pulling each Gaussian's change toward its mirror's, where the mirror is
            more visible (colour and x-mirrored offset).
        w_smooth: weight of colour-change smoothness within each 16-Gaussian patch.
        w_anchor: weight of the parameter anchor for Gaussians facing away from the input camera.
        lr_final: every step size decays by a half cosine from its value at the first step to this
            fraction of it at the last (1 = constant).
        seed: seed of the distillation view order (the fit is otherwise deterministic).
        face_shape: before the fit, move the head's face toward the face mesh's depth profile
            (:mod:`perchead.fit.face_shape`; needs the landmarks, e.g. from the pipeline).
        face_shape_weight: how far toward the mesh's profile (0 = the prediction's, 1 = the mesh's).
        face_depth_scale: metres of depth per metre of the mesh's relative z.
        face_sigma: width of the kernel that spreads the landmarks' changes to the Gaussians, metres.
        face_max_depth: bound on each landmark's depth change, metres.
        landmark_pitch_offset_deg: added to the landmark pose's pitch for the input camera (a pipeline on a
            photo with landmarks). Our synthetic heads' landmark layout reads real faces about
            :data:`perchead.photo.faces.REAL_FACE_PITCH_DEG` too low; setting that here fits real
            portraits from their measured camera height but puts renders of synthetic heads (whose landmark
            pose is right) that far off, so the default is 0 (README, "Photo-fit").
        split_share: before the fit, this share of the head's Gaussians — those facing the input camera
            most squarely — are each split into four finer ones (:func:`split_gaussians`), for the detail
            the predicted Gaussians are too large to show (eyes, mouth; the bundled model's face Gaussians
            lie 3 mm apart and are 6 mm wide). The fitted head then has ``3 × share × N`` more Gaussians.
        w_latent_alpha: weight of the latent stage's silhouette prior: the decoded head's alpha in the
            distillation views against the network's own prediction's, weighted like the self-distillation
            (0 = none). A real face is not what the network was trained on, and the latent stage then pulls
            Gaussians off the surface along the input camera's rays (invisible from there, streaks across
            the eyes from the side); on synthetic heads the latent stage's free change of the head's shape is
            what helps, so the default is 0 (README, "Photo-fit").
        photo_size: the side of the photo crop the fit compares with, when a pipeline fits a photo: None =
            the model input itself; larger = the same crop box cut a second time at this size (the network
            still reads the model-size crop), for the eyes and mouth that the finer face Gaussians can show
            but the model input's pixels are too coarse to carry. Compared at most at ``fit_size``.
    """

    steps: int = 40
    latent_steps: int = 20
    lr_latent: float = 0.1
    lr_color: float = 0.1
    lr_opacity: float = 0.2
    lr_offset: float = 0.05
    lr_scale: float = 0.05
    lr_camera: float = 0.01
    geometry_from: float = 0.3
    max_offset: float = 0.004
    max_log_scale: float = math.log(1.5)
    camera_steps: int = 10
    max_camera_deg: float = 8.0
    max_camera_shift: float = 0.0
    max_camera_log_focal: float = 0.0
    head_transform: bool = True
    rotate_head: bool = True
    height_taper_degree: int = 2
    lr_head: float = 0.04
    max_head_log_scale: float = 0.1
    max_head_shift: float = 0.01
    pose_search: bool = True
    search_azimuths: tuple[float, ...] = tuple(float(a) for a in range(-165, 181, 15))
    search_azimuth_offsets: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    search_elevations: tuple[float, ...] = (-10.0, 0.0, 10.0, 20.0)
    search_size: int = 48
    fit_size: int | None = 256
    through_refiner: bool = False
    outside_matte_color: float = 0.3
    w_photo: float = 1.0
    w_silhouette: float = 1.0
    w_distill: float = 0.1
    distill_azimuths: tuple[float, ...] = (60.0, 90.0, 135.0, 180.0, -135.0, -90.0, -60.0)
    distill_elevations: tuple[float, ...] = (0.0,)
    distill_per_step: int = 1
    distill_size: int = 64
    lr_final: float = 0.1
    w_symmetry: float = 0.5
    w_smooth: float = 0.5
    w_anchor: float = 0.05
    seed: int = 0
    face_shape: bool = False
    face_shape_weight: float = 0.25
    face_depth_scale: float = 0.6
    face_sigma: float = 0.01
    face_max_depth: float = 0.01
    landmark_pitch_offset_deg: float = 0.0
    split_share: float = 0.125
    w_latent_alpha: float = 0.0
    photo_size: int | None = None

    def __post_init__(self) -> None:
        check_steps(self.steps)
        check_steps(self.latent_steps)
        for name in ("lr_color", "lr_opacity", "lr_offset", "lr_scale", "lr_camera", "max_offset", "max_log_scale",
                     "outside_matte_color", "max_camera_deg", "max_camera_shift", "max_camera_log_focal", "w_photo",
                     "w_silhouette", "w_distill", "w_symmetry", "w_smooth", "w_anchor", "lr_head", "lr_latent",
                     "max_head_log_scale", "max_head_shift", "lr_final", "face_depth_scale", "face_max_depth",
                     "split_share", "w_latent_alpha"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"FitConfig.{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.outside_matte_color <= 1:
            raise ValueError(f"FitConfig.outside_matte_color must lie in [0, 1], got {self.outside_matte_color}")
        if not 0 <= self.split_share <= 1:
            raise ValueError(f"FitConfig.split_share must lie in [0, 1], got {self.split_share}")
        if not 0 <= self.lr_final <= 1:
            raise ValueError(f"FitConfig.lr_final must lie in [0, 1], got {self.lr_final}")
        if self.height_taper_degree not in (0, 1, 2):
            raise ValueError(f"FitConfig.height_taper_degree must be 0, 1 or 2, got {self.height_taper_degree!r}")
        if not 0 <= self.geometry_from <= 1:
            raise ValueError(f"FitConfig.geometry_from must lie in [0, 1], got {self.geometry_from}")
        if self.camera_steps < 0:
            raise ValueError(f"FitConfig.camera_steps must be >= 0, got {self.camera_steps}")
        if self.fit_size is not None and self.fit_size < 8:
            raise ValueError(f"FitConfig.fit_size must be None or >= 8, got {self.fit_size}")
        if self.search_size < 8 or self.distill_size < 8:
            raise ValueError("FitConfig.search_size and distill_size must be >= 8")
        if self.distill_per_step < 0:
            raise ValueError(f"FitConfig.distill_per_step must be >= 0, got {self.distill_per_step}")
        if not self.search_azimuths or not self.search_elevations:
            raise ValueError("FitConfig.search_azimuths and search_elevations must not be empty")
        if not 0 <= self.face_shape_weight <= 1:
            raise ValueError(f"FitConfig.face_shape_weight must lie in [0, 1], got {self.face_shape_weight}")
        if not (math.isfinite(self.landmark_pitch_offset_deg) and abs(self.landmark_pitch_offset_deg) <= 45):
            raise ValueError(f"FitConfig.landmark_pitch_offset_deg must lie in [-45, 45], got {self.landmark_pitch_offset_deg}")
        if self.photo_size is not None and (isinstance(self.photo_size, bool) or not isinstance(self.photo_size, int)
                                            or not 8 <= self.photo_size <= 1024):
            raise ValueError(f"FitConfig.photo_size must be None or an integer in [8, 1024], got {self.photo_size!r}")
        if not self.face_sigma > 0:
            raise ValueError(f"FitConfig.face_sigma must be > 0, got {self.face_sigma}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "FitConfig":
        """A named preset with field ``overrides``: ``"fast"`` (the default: seconds on 2 CPU cores for the
        bundled model), ``"real"`` (the app's, for a photo of a real person: ``fast`` from the camera height
        of a real face's landmarks, with the face mesh's depth profile, the latent stage's silhouette prior,
        a 256² photo and twice the finer face Gaussians; :data:`REAL_PHOTO`), ``"quality"`` (3× the steps, two distillation views per step),
        ``"tiny"`` (tests; no latent stage)."""
        presets = {
            "fast": {},
            "real": REAL_PHOTO,
            "quality": {"steps": 120, "distill_per_step": 2, "camera_steps": 20},
            "tiny": {"steps": 8, "latent_steps": 0, "camera_steps": 2, "search_size": 16, "distill_size": 16,
                     "search_azimuths": (-20.0, 0.0, 20.0), "search_elevations": (0.0,), "split_share": 0.0},
        }
        if name not in presets:
            raise ValueError(f"unknown FitConfig preset {name!r}; choose from {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


def check_steps(steps) -> int:
    """Validates a step count: an int in ``[0, MAX_FIT_STEPS]`` (bools and floats are refused)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"fit steps must be an integer, got {steps!r}")
    if steps < 0:
        raise ValueError(f"fit steps must be >= 0 (0 = no fit), got {steps}")
    if steps > MAX_FIT_STEPS:
        raise ValueError(f"fit steps must be at most {MAX_FIT_STEPS}, got {steps}")
    return steps


@dataclass
class FitResult:
    """What :func:`fit_to_photo` returns.

    Attributes:
        gaussians: the fitted head. ``[N, …]``
        camera: the refined input camera (one view, at the size the fit ran: ``FitConfig.fit_size`` at most;
            with ``rotate_head`` the given camera, the head having turned instead).
        losses: the total loss per step (before each update), the latent stage's steps first.
        photo_loss: (first, last) masked L1 of the input-view render against the photo, without priors
            (first: the given head's, before any step).
        notes: remarks for the user (pose source, camera change).
    """

    gaussians: Gaussians
    camera: Cameras
    losses: list[float] = field(default_factory=list)
    photo_loss: tuple[float, float] = (float("nan"), float("nan"))
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ helpers
_MIRROR_CACHE: dict[tuple, Tensor] = {}


def mirror_index(vertices: Tensor, neighbours: int = 8) -> Tensor:
    """For each template vertex, the index of the vertex nearest its left–right mirror image (x → −x).

    The template's vertices come in compact patches of 16 (patch p owns 16p … 16p+15): each mirrored
    vertex is compared with the vertices of the ``neighbours`` patches whose centres lie nearest the
    mirrored centre of its own patch — O(N) work instead of an N × N distance matrix.

    Args:
        vertices: ``[N, 3]``, N a multiple of 16; the canonical head is symmetric about x = 0.
        neighbours: candidate patches per patch.

    Returns:
        ``[N]`` long (cached per template).
    """
    key = (vertices.shape[0], float(vertices.double().sum()), float(vertices[:, 0].double().abs().sum()))
    if key not in _MIRROR_CACHE:
        v = vertices.detach().float().cpu().view(-1, PATCH, 3)  # [P, 16, 3]
        flip = torch.tensor([-1.0, 1.0, 1.0])
        centres = v.mean(dim=1)  # [P, 3]
        k = min(neighbours, len(centres))
        near = torch.cdist(centres * flip, centres).topk(k, dim=1, largest=False).indices  # [P, k]
        candidates = v[near].reshape(len(v), k * PATCH, 3)  # [P, 16k, 3]
        best = torch.cdist(v * flip, candidates).argmin(dim=-1)  # [P, 16]
        _MIRROR_CACHE[key] = (near.gather(1, best // PATCH) * PATCH + best % PATCH).reshape(-1)  # [N]
    return _MIRROR_CACHE[key].to(vertices.device)


def head_transform(means: Tensor, axes: Tensor, centre: Tensor, half_height: Tensor, scale: Tensor,
                   taper: Tensor, shift: Tensor, config: FitConfig) -> tuple[Tensor, Tensor]:
    """The whole-head change of the fit, in the input camera's frame, from raw (unbounded) parameters.

    With ``u, v`` a centre's coordinates along the camera's image axes and ``ŷ = v / half_height``:
    ``u' = u · exp(s_u + t₁ ŷ + t₂ (ŷ² − 1/3))``, ``v' = v · exp(s_v + t₃ ŷ + t₄ (ŷ² − 1/3))`` (the height
    terms as many as ``taper`` holds beyond two), plus a shift along the two axes;
    the depth along the viewing axis is kept. Scales and taper terms are ``max_head_log_scale · tanh(·)``,
    the shift ``max_head_shift · tanh(·)``; zero parameters are the identity.

    Args:
        means: Gaussian centres. ``[N, 3]``
        axes: rows = the camera's x, y, z axes in the world (the view matrix's rotation). ``[3, 3]``
        centre: the point the head scales about. ``[3]``
        half_height: half the head's extent along the camera's y axis (normalises the taper). ``[]``
        scale: raw log-scales along the camera's x and y. ``[2]``
        taper: raw linear and quadratic width-with-height terms, then 0–2 height-with-height terms.
            ``[2 + d]``
        shift: raw shift along the camera's x and y. ``[2]``
        config: the bounds.

    Returns:
        (centres ``[N, 3]``, the mean size factor ``[]`` for the Gaussians' own scales).
    """
    s = config.max_head_log_scale * torch.tanh(scale)  # [2]
    t = config.max_head_log_scale * torch.tanh(taper)  # [2 + d]
    d = config.max_head_shift * torch.tanh(shift)  # [2]
    local = (means - centre) @ axes.T  # [N, 3] camera x, y, z
    y = local[:, 1] / half_height  # [N] about −1 … 1
    shapes = [y, y * y - 1 / 3]  # [N] each: the taper's shapes, zero-mean over −1 … 1
    log_u = s[0] + t[0] * shapes[0] + t[1] * shapes[1]  # [N]
    log_v = s[1] + sum(t[2 + k] * shapes[k] for k in range(len(t) - 2))  # [N] (or [] without a height taper)
    u = local[:, 0] * torch.exp(log_u) + d[0]  # [N]
    v = local[:, 1] * torch.exp(log_v) + d[1]  # [N]
    moved = torch.stack([u, v, local[:, 2]], dim=-1)  # [N, 3]
    return centre + moved @ axes, torch.exp((s[0] + s[1]) / 3)  # [N, 3], [] (depth unscaled)


def _rotation(yaw: Tensor, pitch: Tensor, roll: Tensor) -> tuple[Tensor, Tensor]:
    """(world rotation Ry(yaw)·Rx(pitch), camera-axis roll Rz(roll)), each ``[3, 3]``, differentiable."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    Ry = torch.stack([torch.stack([cy, zero, sy]), torch.stack([zero, one, zero]), torch.stack([-sy, zero, cy])])
    Rx = torch.stack([torch.stack([one, zero, zero]), torch.stack([zero, cp, -sp]), torch.stack([zero, sp, cp])])
    Rz = torch.stack([torch.stack([cr, -sr, zero]), torch.stack([sr, cr, zero]), torch.stack([zero, zero, one])])
    return Ry @ Rx, Rz


def adjust_camera(camera: Cameras, params: Tensor, config: FitConfig) -> tuple[Tensor, Tensor]:
    """The input camera changed by raw ``params`` ``[6]`` = (yaw, pitch, roll, log focal, shift x, shift y),
    each bounded by ``tanh`` to the config's limits: the head turns about its centre, the camera rolls about
    its axis, zooms and shifts. Returns (viewmats ``[1, 4, 4]``, Ks ``[1, 3, 3]``)."""
    b = torch.tanh(params)  # [6] in (-1, 1)
    ang = b[:3] * math.radians(config.max_camera_deg)
    Rw, Rz = _rotation(ang[0], ang[1], ang[2])
    eye = torch.eye(4, dtype=params.dtype, device=params.device)
    W = eye.clone()
    W[:3, :3] = Rw
    C = eye.clone()
    C[:3, :3] = Rz
    viewmat = C @ camera.viewmats[0].to(params.dtype) @ W  # [4, 4]
    K = camera.Ks[0].to(params.dtype)  # [3, 3]
    focal = torch.exp(b[3] * config.max_camera_log_focal)
    shift = b[4:] * config.max_camera_shift * float(camera.width)  # [2] pixels
    K = torch.stack([
        torch.stack([K[0, 0] * focal, K[0, 1], K[0, 2] + shift[0]]),
        torch.stack([K[1, 0], K[1, 1] * focal, K[1, 2] + shift[1]]),
        K[2],
    ])
    return viewmat[None], K[None]


@contextmanager
def _frozen(model):
    """The model's parameters without gradients for the duration (the fit changes only the head)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _render(model, g: Gaussians, viewmats: Tensor, Ks: Tensor, size: int, refine: bool):
    """Renders ``[N]`` Gaussians into V views over white (``model.render_at``): rgb ``[V, 3, s, s]``, alpha."""
    out = model.render_at(g, viewmats, Ks, size, size, refine=refine)
    return out.rgb[0], out.alpha[0]


Framing = Callable[[np.ndarray], tuple[float, float, float, float]]
"""How a photo's crop was chosen from its matte: ``[H, W]`` uint8 alpha → crop box ``(x0, y0, x1, y1)``."""


@torch.no_grad()
def framed_like_the_photo(model, gaussians: Gaussians, cameras: Cameras, framing: Framing,
                          size: int = 128) -> Cameras:
    """``cameras`` as the photo's crop would frame their views: each view of the head is rendered at
    ``size``, ``framing`` finds the crop box in its alpha, and that box becomes the whole image (the
    intrinsics scaled and shifted). A photo cropped by its own silhouette (a profile framed by its
    nose-to-nape width, say) is then compared with the head cropped the same way."""
    Ks_probe = cameras.Ks.clone()  # the same views at ``size``
    Ks_probe[:, :2] *= size / cameras.width
    _, alpha = _render(model, gaussians, cameras.viewmats, Ks_probe, size, refine=False)  # [V, 1, size, size]
    masks = (alpha[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # [V, size, size]
    Ks = cameras.Ks.clone()  # [V, 3, 3]
    for v, matte in enumerate(masks):
        try:
            x0, y0, x1, y1 = (c * cameras.width / size for c in framing(matte))
        except ValueError:  # nothing opaque in this view: left as it is
            continue
        sx, sy = cameras.width / (x1 - x0), cameras.height / (y1 - y0)
        Ks[v, 0, 0], Ks[v, 0, 2] = Ks[v, 0, 0] * sx, (Ks[v, 0, 2] - x0) * sx
        Ks[v, 1, 1], Ks[v, 1, 2] = Ks[v, 1, 1] * sy, (Ks[v, 1, 2] - y0) * sy
    return Cameras(cameras.viewmats, Ks, cameras.width, cameras.height)


@torch.no_grad()
def search_pose(model, gaussians: Gaussians, image: Tensor, mask: Tensor, config: FitConfig,
                known: Tensor | None = None, framing: Framing | None = None) -> tuple[float, float]:
    """Render-and-compare: the (yaw, pitch) on ``config``'s grids whose render of the predicted head best
    matches the photo (L1 of rgb and alpha vs matte at ``search_size``, where ``known`` ``[1, 1, S, S]`` is
    1), coarse to fine: the yaw on the grid at the pitch nearest 0, the pitch at that yaw, then the yaw
    refined by the offsets around it at that pitch. Each view is framed as the photo's crop was when
    ``framing`` is given (:func:`framed_like_the_photo`). Degrees, the yaw in (-180, 180]."""
    s = config.search_size
    r = model.config.render
    img = F.interpolate(image, size=(s, s), mode="area")  # [1, 3, s, s]
    msk = F.interpolate(mask, size=(s, s), mode="area")  # [1, 1, s, s]
    weight = torch.ones_like(msk) if known is None else F.interpolate(known, size=(s, s), mode="area")  # [1, 1, s, s]

    def best(az: list[float], el: list[float]) -> int:
        cams = orbit_cameras(az, el, radius=r.radius, fov_deg=r.fov_deg, size=s)
        if framing is not None:
            cams = framed_like_the_photo(model, gaussians, cams, framing)
        rgb, alpha = _render(model, gaussians, cams.viewmats, cams.Ks, s, refine=False)  # [V, 3, s, s]
        err = (((rgb - img).abs() + (alpha - msk).abs()) * weight).mean(dim=(1, 2, 3))  # [V]
        return int(err.argmin())

    level = min(config.search_elevations, key=abs)
    yaws = list(config.search_azimuths)
    yaw = yaws[best(yaws, [level] * len(yaws))]
    pitches = list(config.search_elevations)
    pitch = pitches[best([yaw] * len(pitches), pitches)] if len(pitches) > 1 else pitches[0]
    if config.search_azimuth_offsets:
        yaws = [yaw + offset for offset in config.search_azimuth_offsets]
        yaw = yaws[best(yaws, [pitch] * len(yaws))]
    return -((-yaw + 180.0) % 360.0 - 180.0), pitch  # the yaw in (-180, 180]


def _distill_cameras(model, input_camera: Cameras, config: FitConfig) -> tuple[Cameras, Tensor]:
    """Distillation cameras around the head, relative to the input yaw, and their weights
    ``(1 − cos θ) / 2`` (θ: angle between the view and the input view). Returns (cameras, ``[V]``)."""
    center = camera_centers(input_camera.viewmats)[0]  # [3]
    yaw0 = math.degrees(math.atan2(float(center[0]), float(center[2])))
    az = [yaw0 + a for e in config.distill_elevations for a in config.distill_azimuths]
    el = [e for e in config.distill_elevations for _ in config.distill_azimuths]
    r = model.config.render
    cams = orbit_cameras(az, el, radius=r.radius, fov_deg=r.fov_deg, size=config.distill_size)
    d_in = F.normalize(center, dim=0)
    d = F.normalize(camera_centers(cams.viewmats), dim=-1)  # [V, 3]
    weights = (1 - d @ d_in) / 2  # [V]
    return cams, weights


# ------------------------------------------------------------------------------------------ the fit
def fit_to_photo(
    model,
    gaussians: Gaussians,
    image: Tensor,
    mask: Tensor,
    camera: Cameras | None = None,
    config: FitConfig | None = None,
    progress: Progress = no_progress,
    progress_range: tuple[float, float] = (0.1, 0.3),
    landmarks=None,
    inside: Tensor | None = None,
    tokens=None,
    framing: Framing | None = None,
) -> FitResult:
    """Refines one predicted head so its render from the input camera matches the photo.

    Args:
        model: the PercHead (its renderer, refiner and render framing; for the latent stage also its encoder,
            decoder and Gaussian head; its weights are not changed).
        gaussians: the feed-forward head, ``[N, …]`` or ``[1, N, …]``.
        image: the model input over white. ``[1, 3, S, S]`` or ``[3, S, S]``
        mask: its matte. ``[1, 1, S, S]``, ``[1, S, S]`` or ``[S, S]``
        camera: the input camera (e.g. :meth:`perchead.photo.preprocess.Preprocessed.input_camera`); None =
            render-and-compare search (``config.pose_search``) or the frontal model framing.
        config: :class:`FitConfig` (default: the ``"fast"`` preset).
        progress: called once per step with a fraction in ``progress_range``; may raise to cancel.
        progress_range: the fractions of the first and last step.
        landmarks: the face mesh's 468 landmarks in ``image``'s pixels, (x, y, relative depth z) ``[468, 3]``
            (:func:`perchead.fit.face_shape.mesh_landmarks`), for ``config.face_shape``; None = no
            face-shape step.
        inside: where ``image`` shows the photo (:meth:`perchead.photo.preprocess.Preprocessed.inside_photo`),
            like ``mask``; pixels outside it (a crop reaching past the photo's edge, e.g. a crown cut off)
            are unknown and left out of the photo and silhouette terms. None = the whole image is photo.
        tokens: the lift encoder's :class:`~perchead.models.lift_encoder.Tokens2D` of this one image (batch
            of 1), for the latent stage, so a caller that has them does not run the encoder again; None =
            encoded here from ``image`` and ``mask``.
        framing: how the photo's crop was chosen from its matte, for a searched camera (``camera`` None):
            each candidate view is cropped the same way (:func:`framed_like_the_photo`). None = the model's
            own framing.

    Returns:
        :class:`FitResult` (detached Gaussians ``[N, …]``).

    Raises:
        ValueError: a batch of heads, or images / masks / ``inside`` maps / cameras of the wrong shape.
    """
    config = config or FitConfig()
    with _frozen(model):
        return _fit(model, gaussians, image, mask, camera, config, progress, progress_range, landmarks, inside,
                    tokens, framing)


def _fit(model, gaussians, image, mask, camera, config: FitConfig, progress: Progress, progress_range,
         landmarks=None, inside=None, tokens=None, framing: Framing | None = None) -> FitResult:
    """:func:`fit_to_photo` with the model frozen."""
    if gaussians.is_batched:
        if gaussians.batch_size != 1:
            raise ValueError(f"fit_to_photo fits one head, got a batch of {gaussians.batch_size}")
        gaussians = gaussians[0]
    if image.dim() == 3:
        image = image[None]
    while mask.dim() < 4:
        mask = mask[None]
    if image.dim() != 4 or image.shape[:2] != (1, 3) or image.shape[-1] != image.shape[-2]:
        raise ValueError(f"image must be one square [1, 3, S, S] picture, got {tuple(image.shape)}")
    if mask.shape != (1, 1, *image.shape[-2:]):
        raise ValueError(f"mask must be [1, 1, S, S] matching the image, got {tuple(mask.shape)}")
    if inside is None:
        inside = torch.ones_like(mask)
    while inside.dim() < 4:
        inside = inside[None]
    if inside.shape != mask.shape:
        raise ValueError(f"inside must be [1, 1, S, S] like the mask, got {tuple(inside.shape)}")
    if camera is not None and len(camera) != 1:
        raise ValueError(f"camera must hold one view, got {len(camera)}")
    device = gaussians.means.device
    image = image.to(device, torch.float32)
    mask = mask.to(device, torch.float32).clamp(0, 1)
    inside = inside.to(device, torch.float32).clamp(0, 1)
    input_size = image.shape[-1]
    model_input = image, mask  # the latent stage encodes the photo at the model's own input size
    if config.fit_size is not None and image.shape[-1] > config.fit_size:
        image = F.interpolate(image, size=(config.fit_size,) * 2, mode="area")  # [1, 3, s, s]
        mask = F.interpolate(mask, size=(config.fit_size,) * 2, mode="area")  # [1, 1, s, s]
        inside = F.interpolate(inside, size=(config.fit_size,) * 2, mode="area")  # [1, 1, s, s]
    # only pixels wholly inside the photo count (its edge pixels are blended with the padding)
    known = (inside > 0.999).float()  # [1, 1, s, s]
    S = image.shape[-1]
    g0 = gaussians.detach().float()
    notes: list[str] = []
    r = model.config.render
    # 1. the input camera: given (pose from landmarks), searched, or the frontal model framing
    if camera is None:
        if config.pose_search:
            yaw, pitch = search_pose(model, g0, image, mask, config, known, framing)
            notes.append(f"photo-fit: head pose from render-and-compare search (yaw {yaw:+.0f}°, pitch {pitch:+.0f}°)")
        else:
            yaw, pitch = 0.0, 0.0
            notes.append("photo-fit: no head pose, frontal camera")
        camera = orbit_cameras([yaw], [pitch], radius=r.radius, fov_deg=r.fov_deg, size=S)
        if framing is not None:
            camera = framed_like_the_photo(model, g0, camera, framing)
    elif camera.width != S or camera.height != S:
        scale = S / camera.width
        Ks = camera.Ks.clone()
        Ks[:, :2] *= scale
        camera = Cameras(camera.viewmats, Ks, S, S)
    camera = camera.to(device)
    mask_sum = (mask * known).sum().clamp_min(1.0)

    def photo_l1(rgb: Tensor, alpha: Tensor) -> Tensor:
        # the photo is cut out over white: outside the matte the render must be white too (no stray
        # Gaussians); normalised by the matte's area so the term does not shrink with the head's size;
        # past the photo's edges nothing is known
        if config.outside_matte_color < 1:
            # outside the matte the colour's share of the gradient is scaled down (the value is the same):
            # a Gaussian at the silhouette clears by turning transparent or moving more than by taking
            # the background's white, which other views would show as a white band
            cover = alpha.clamp_min(1e-4)
            fixed = 1 - cover * ((1 - rgb) / cover).detach()  # [1, 3, S, S] rgb, its colour detached
            outside = fixed + config.outside_matte_color * (rgb - fixed)  # [1, 3, S, S]
            rgb = mask * rgb + (1 - mask) * outside
        return ((rgb - image).abs() * known).sum() / (3 * mask_sum)

    def silhouette_l1(alpha: Tensor) -> Tensor:
        return ((alpha - mask).abs() * known).mean()

    # 1b. the latent stage: the network's own prior carries what the photo shows to every view
    lo, hi = progress_range
    split = lo + (hi - lo) * config.latent_steps / max(config.latent_steps + config.steps, 1)
    losses: list[float] = []
    first_photo = last_photo = float("nan")
    if config.latent_steps:
        with torch.no_grad():  # the given head's score, before any step
            first_photo = float(photo_l1(*_render(model, g0, camera.viewmats, camera.Ks, S, config.through_refiner)))
        g0, losses = _latent_stage(model, *model_input, camera, photo_l1, silhouette_l1, config, progress,
                                   (lo, split), tokens)
    if config.face_shape and landmarks is not None:
        g0, note = _face_shape(g0, landmarks, camera, S / input_size, config)
        notes.append(note)

    # 1c. finer Gaussians where the photo sees the head most squarely (the face of a frontal photo)
    template = model.template
    normals = template.normals.to(device, torch.float32)  # [T, 3]
    T = normals.shape[0]
    k = int(config.split_share * T)
    if k:
        with torch.no_grad():
            chosen = facing(normals, g0.means, camera.viewmats).topk(k).indices  # [k]
        g0, parent = split_gaussians(g0, chosen)
        normals = normals[parent]  # [N, 3]
    # 2. parameters: raw changes on top of the prediction (all zero = the prediction)
    N = g0.num_gaussians
    color_logit0 = torch.logit(g0.colors.clamp(1e-4, 1 - 1e-4))  # [N, 3]
    opacity_logit0 = torch.logit(g0.opacities.clamp(1e-4, 1 - 1e-4))  # [N]
    # the priors compare with the start as the parameters express it: through logit and sigmoid the round
    # trip is off by float rounding, whose sign Adam would follow at full step size
    color0 = torch.sigmoid(color_logit0)  # [N, 3]
    opacity0 = torch.sigmoid(opacity_logit0).clamp(1e-6, 1 - 1e-6)  # [N]
    d_color = torch.zeros(N, 3, device=device, requires_grad=True)  # [N, 3]
    d_opacity = torch.zeros(N, device=device, requires_grad=True)  # [N]
    d_offset = torch.zeros(N, 3, device=device, requires_grad=True)  # [N, 3]
    d_scale = torch.zeros(N, 3, device=device, requires_grad=True)  # [N, 3]
    d_camera = torch.zeros(6, device=device, requires_grad=True)  # [6]
    h_scale = torch.zeros(2, device=device, requires_grad=config.head_transform)  # [2]
    h_taper = torch.zeros(2 + config.height_taper_degree, device=device, requires_grad=config.head_transform)  # [2 + d]
    h_shift = torch.zeros(2, device=device, requires_grad=config.head_transform)  # [2]
    axes = camera.viewmats[0, :3, :3].to(device, torch.float32)  # [3, 3] the given camera's axes
    centre = g0.means.mean(dim=0)  # [3]
    heights = (g0.means - centre) @ axes[1]  # [N]
    half_height = ((heights.max() - heights.min()) / 2).clamp_min(1e-6)
    opt = torch.optim.Adam([
        {"params": [h_scale, h_taper, h_shift], "lr": config.lr_head},
        {"params": [d_color], "lr": config.lr_color},
        {"params": [d_opacity], "lr": config.lr_opacity},
        {"params": [d_offset], "lr": config.lr_offset},
        {"params": [d_scale], "lr": config.lr_scale},
        {"params": [d_camera], "lr": config.lr_camera},
    ])

    def base() -> tuple[Tensor, Tensor]:
        # the predicted centres and scales through the head transform (unchanged without one)
        if not config.head_transform:
            return g0.means, g0.scales
        means, size = head_transform(g0.means, axes, centre, half_height, h_scale, h_taper, h_shift, config)
        return means, g0.scales * size  # [N, 3], [N, 3]

    def current() -> Gaussians:
        means, scales = base()
        return Gaussians(
            means=means + config.max_offset * torch.tanh(d_offset),  # [N, 3] bounded
            quats=g0.quats,
            scales=scales * torch.exp(config.max_log_scale * torch.tanh(d_scale)),  # [N, 3] bounded
            opacities=torch.sigmoid(opacity_logit0 + d_opacity).clamp(1e-6, 1 - 1e-6),  # [N]
            colors=torch.sigmoid(color_logit0 + d_color),  # [N, 3]
        )

    # 3. priors: distillation targets, mirror pairs, visibility
    dcams, dweights = _distill_cameras(model, camera, config)
    dcams, dweights = dcams.to(device), dweights.to(device)
    with torch.no_grad():
        d_rgb0, d_alpha0 = _render(model, g0, dcams.viewmats, dcams.Ks, config.distill_size, refine=False)  # [V, 3, s, s]
    mirror = mirror_index(template.vertices).to(device)  # [T] (the template's Gaussians come first)
    flip = torch.tensor([-1.0, 1.0, 1.0], device=device)
    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(dcams), generator=gen).tolist() if len(dcams) else []
    geometry_step = int(round(config.geometry_from * config.steps))
    lo = split
    n = config.steps
    base_lrs = [group["lr"] for group in opt.param_groups]
    for step in range(n):
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr * lr_factor(step, n, config.lr_final)
        progress(lo + (hi - lo) * step / max(n, 1), f"fitting to the photo {step + 1}/{n}")
        refine_cam = step < config.camera_steps
        d_camera.requires_grad_(refine_cam)
        geometry = step >= geometry_step
        d_offset.requires_grad_(geometry)
        d_scale.requires_grad_(geometry)
        g = current()
        viewmats, Ks = adjust_camera(camera, d_camera if refine_cam else d_camera.detach(), config)
        if config.rotate_head:
            # the same view of the head, but the head turns (so every other view sees the turn too)
            motion = torch.linalg.inv(camera.viewmats[0]) @ viewmats[0]  # [4, 4] rigid
            turned = g.transformed(motion[:3, :3], translation=motion[:3, 3])
            rgb, alpha = _render(model, turned, camera.viewmats, Ks, S, refine=config.through_refiner)
        else:
            rgb, alpha = _render(model, g, viewmats, Ks, S, refine=config.through_refiner)  # [1, 3, S, S]
        photo = photo_l1(rgb, alpha)
        loss = config.w_photo * photo + config.w_silhouette * silhouette_l1(alpha)
        # self-distillation: the (latent stage's) predicted head's own renders from views away from the input
        if config.w_distill > 0 and config.distill_per_step > 0 and len(order):
            picks = [order[(step * config.distill_per_step + k) % len(order)] for k in range(config.distill_per_step)]
            idx = torch.tensor(picks, device=device)
            d_rgb, d_alpha = _render(model, g, dcams.viewmats[idx], dcams.Ks[idx], config.distill_size, refine=False)
            target_rgb, target_alpha = d_rgb0[idx], d_alpha0[idx]  # [v, 3, s, s], [v, 1, s, s]
            if config.head_transform:
                # the prediction through the current head transform: the prior keeps the predicted
                # surface, not the predicted outline that the photo corrects (measured: +0.13 dB novel)
                with torch.no_grad():
                    means, scales = base()
                    target_rgb, target_alpha = _render(model, replace(g0, means=means, scales=scales),
                                                       dcams.viewmats[idx], dcams.Ks[idx], config.distill_size,
                                                       refine=False)
            per_view = ((d_rgb - target_rgb).abs().mean(dim=(1, 2, 3))
                        + (d_alpha - target_alpha).abs().mean(dim=(1, 2, 3)))
            # × 4: the weights average about 1/4 over a ring of views (ours), so w_distill ≈ the photo's weight
            loss = loss + config.w_distill * (dweights[idx] * per_view).sum() / len(picks) * 4
        # visibility of each Gaussian from the (current) input camera, by its template normal
        with torch.no_grad():
            vis = facing(normals, g0.means, viewmats.detach()).clamp(0, 1)  # [N]
            pull = (vis[mirror] - vis[:T]).clamp_min(0)  # [T] > 0 where the mirror is better seen
        dcol = g.colors - color0  # [N, 3]
        doff = g.means - base()[0].detach()  # [N, 3] the per-Gaussian offsets
        if config.w_symmetry > 0:
            sym = (pull[:, None] * (dcol[:T] - dcol[mirror].detach()).abs()).mean()
            # offsets in units of their bound, weighted a tenth of the colours (ours)
            sym = sym + (pull[:, None] * (doff[:T] - doff[mirror].detach() * flip).abs()).mean() / max(config.max_offset, 1e-8) * 0.1
            loss = loss + config.w_symmetry * sym
        if config.w_smooth > 0:
            patch = dcol[:T].view(-1, PATCH, 3)  # [P, 16, 3]
            loss = loss + config.w_smooth * (patch - patch.mean(dim=1, keepdim=True)).abs().mean()
        if config.w_anchor > 0:
            away = 1 - vis  # [N]
            anchor = (away[:, None] * dcol.abs()).mean() + (away * (g.opacities - opacity0).abs()).mean()
            loss = loss + config.w_anchor * anchor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step == 0 and not config.latent_steps:
            first_photo = float(photo.detach())
    progress(hi, "fitted to the photo")
    with torch.no_grad():
        g = current().detach()
        viewmats, Ks = adjust_camera(camera, d_camera.detach(), config)
        if config.rotate_head:
            motion = torch.linalg.inv(camera.viewmats[0]) @ viewmats[0]  # [4, 4] rigid
            g = g.transformed(motion[:3, :3], translation=motion[:3, 3])
            viewmats = camera.viewmats
        if n or config.latent_steps:
            last_photo = float(photo_l1(*_render(model, g, viewmats, Ks, S, refine=config.through_refiner)))
        b = torch.tanh(d_camera.detach())
        if config.camera_steps and n:
            what = "head turned by" if config.rotate_head else "camera refined by"
            notes.append("photo-fit: {} yaw {:+.1f}°, pitch {:+.1f}°, roll {:+.1f}°".format(
                what, *(b[:3] * config.max_camera_deg).tolist()))
    fitted_camera = Cameras(viewmats.detach(), Ks.detach(), S, S)
    return FitResult(gaussians=g, camera=fitted_camera, losses=losses, photo_loss=(first_photo, last_photo), notes=notes)


def _latent_stage(model, image: Tensor, mask: Tensor, camera: Cameras, photo_l1: Callable[[Tensor, Tensor], Tensor],
                  silhouette_l1: Callable[[Tensor], Tensor], config: FitConfig, progress: Progress,
                  span: tuple[float, float], tokens=None) -> tuple[Gaussians, list[float]]:
    """Optimises an offset to the lift encoder's 2D tokens (the network frozen) so that the decoded head's
    render from ``camera`` matches the photo (``photo_l1`` + ``silhouette_l1`` of the render).

    The decoder reads every 3D patch from all 2D tokens, so what the photo corrects on the visible side
    reaches the hidden side as the network learned it would (hair colour, head shape), which per-Gaussian
    changes cannot do.

    Args:
        model: the PercHead (its encoder, decoder, Gaussian head and renderer; weights frozen by the caller).
        image: the photo at any size ``[1, 3, s, s]`` (encoded at the model's input size).
        mask: its matte ``[1, 1, s, s]``.
        camera: the input camera at the size the losses compare at.
        photo_l1: the photo term of an rgb and alpha render ``[1, 3, S, S]``, ``[1, 1, S, S]``.
        silhouette_l1: the silhouette term of an alpha render ``[1, 1, S, S]``.
        config: the fit's settings (``latent_steps``, ``lr_latent``, weights).
        progress: called once per step with a fraction in ``span``; may raise to cancel.
        span: the fractions of the first and last step.
        tokens: the encoder's tokens of ``image`` if the caller has them (else encoded here).

    Returns:
        (the decoded head ``[N, …]``, the loss per step).
    """
    if tokens is None:
        size = model.config.render.image_size
        if image.shape[-1] != size:
            mode = dict(mode="area") if image.shape[-1] > size else dict(mode="bilinear", align_corners=False)
            image = F.interpolate(image, size=(size, size), **mode)  # [1, 3, S, S]
            mask = F.interpolate(mask, size=(size, size), **mode)  # [1, 1, S, S]
        with torch.no_grad():
            tokens = model.encode(image, mask)
    base = tokens.tokens.detach().float()  # [1, K, D]
    offset = torch.zeros_like(base, requires_grad=True)  # [1, K, D]
    opt = torch.optim.Adam([offset], lr=config.lr_latent)
    S = camera.width

    def head() -> Gaussians:
        return model.to_gaussians(model.decode(base + offset, tokens.padding_mask))[0]  # [N, …]

    losses = []
    lo, hi = span
    n = config.latent_steps
    if config.w_latent_alpha > 0:
        # the silhouette prior: the network's own prediction's alpha from the distillation views
        dcams, dweights = _distill_cameras(model, camera, config)
        with torch.no_grad():
            _, target_alpha = _render(model, head(), dcams.viewmats, dcams.Ks, config.distill_size, refine=False)
    for step in range(n):
        progress(lo + (hi - lo) * step / n, f"fitting the network's view of the photo {step + 1}/{n}")
        g = head()
        rgb, alpha = _render(model, g, camera.viewmats, camera.Ks, S, refine=config.through_refiner)
        photo = photo_l1(rgb, alpha)
        loss = config.w_photo * photo + config.w_silhouette * silhouette_l1(alpha)
        if config.w_latent_alpha > 0:
            _, d_alpha = _render(model, g, dcams.viewmats, dcams.Ks, config.distill_size, refine=False)  # [V, 1, s, s]
            per_view = (d_alpha - target_alpha).abs().mean(dim=(1, 2, 3))  # [V]
            # × 4 as in the Gaussian stage's distillation: the weights average about 1/4 over the ring
            loss = loss + config.w_latent_alpha * 4 * (dweights * per_view).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        return head().detach().float(), losses


def facing(normals: Tensor, means: Tensor, viewmats: Tensor) -> Tensor:
    """How squarely one camera sees each Gaussian: the cosine between its (template) normal and the direction
    to the camera. ``[N, 3]``, ``[N, 3]``, ``[1, 4, 4]`` → ``[N]`` in [−1, 1]"""
    eye = camera_centers(viewmats)[0]  # [3]
    return (normals * F.normalize(eye - means, dim=-1)).sum(-1)


def split_gaussians(g: Gaussians, index: Tensor, spread: float = 0.5, shrink: float = 0.6) -> tuple[Gaussians, Tensor]:
    """Splits each Gaussian in ``index`` into four: offset by ``± spread`` of its standard deviation along its
    two largest axes, those two scales times ``shrink``; colour and opacity kept. The first child takes the
    parent's place, the other three are appended (so the first N keep their template order).

    Args:
        g: ``[N, …]``.
        index: the Gaussians to split. ``[k]`` long

    Returns:
        (``[N + 3k, …]``, the parent of each Gaussian ``[N + 3k]`` long).
    """
    R = quaternion_to_matrix(g.quats[index])  # [k, 3, 3] columns = the axes
    s = g.scales[index]  # [k, 3]
    order = s.argsort(dim=-1, descending=True)  # [k, 3]
    a, b = order[:, 0], order[:, 1]  # [k] the two largest axes
    rows = torch.arange(len(index), device=index.device)
    axis_a = R[rows, :, a] * s[rows, a, None]  # [k, 3] metres
    axis_b = R[rows, :, b] * s[rows, b, None]  # [k, 3]
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], device=index.device)  # [4, 2]
    means = g.means[index][None] + spread * (signs[:, 0, None, None] * axis_a + signs[:, 1, None, None] * axis_b)  # [4, k, 3]
    factor = torch.ones_like(s)  # [k, 3]
    factor[rows, a] = shrink
    factor[rows, b] = shrink
    scales = (s * factor)[None].expand(4, -1, -1)  # [4, k, 3]

    def children(value: Tensor) -> Tensor:
        return value[index][None].expand(4, *value[index].shape)  # [4, k, …]

    first = replace(g, means=g.means.index_copy(0, index, means[0]), scales=g.scales.index_copy(0, index, scales[0]))
    rest = Gaussians(means=means[1:].reshape(-1, 3), quats=children(g.quats)[1:].reshape(-1, 4),
                     scales=scales[1:].reshape(-1, 3), opacities=children(g.opacities)[1:].reshape(-1),
                     colors=children(g.colors)[1:].reshape(-1, 3))
    parent = torch.cat([torch.arange(g.num_gaussians, device=index.device), index.repeat(3)])  # [N + 3k]
    return Gaussians.cat([first, rest]), parent


def lr_factor(step: int, steps: int, final: float) -> float:
    """The step-size factor at ``step`` of ``steps``: a half cosine from 1 at the first step to ``final`` at
    the last."""
    if steps <= 1:
        return 1.0
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * step / (steps - 1)))


def _face_shape(g0: Gaussians, landmarks, camera: Cameras, scale: float, config: FitConfig) -> tuple[Gaussians, str]:
    """The face-shape step (:func:`perchead.fit.face_shape.deform_face`) with landmarks given at
    ``1 / scale`` of the fit's image size. Returns (the head, a note)."""
    from perchead.fit.face_shape import deform_face

    lm = torch.as_tensor(landmarks, dtype=torch.float32) * scale  # [468, 3] x, y, z in the fit's pixels
    g, info = deform_face(g0, lm, camera, weight=config.face_shape_weight, depth_scale=config.face_depth_scale,
                          sigma=config.face_sigma, max_depth=config.face_max_depth)
    if not info.used:
        return g0, "photo-fit: face shape skipped (too few landmarks on the head)"
    return g, "photo-fit: face shape from {} landmarks (depth change up to {:.1f} mm)".format(
        info.used, 1000 * float(info.change.abs().max()))


def with_steps(config: FitConfig | None, steps: int) -> FitConfig:
    """``config`` (default: the fast preset) with ``steps`` steps, keeping the camera steps within them."""
    config = config or FitConfig()
    return replace(config, steps=steps, camera_steps=min(config.camera_steps, steps))
