"""Photo-fit: per-subject refinement of a predicted head against its photo (after the feed-forward pass).

The feed-forward prediction is a good prior but an averaged likeness. As in ID-TS / HQ-Head (optimise
each subject after the feed-forward pass), :func:`fit_to_photo` refines one head's Gaussians so their
render from the input camera matches the photo inside its matte, with priors that keep what the photo
does not show close to the prediction:

1. **Input camera** (:mod:`~perchead.fit.pose`, ``pose``): the preprocessing's head pose (landmarks) when
   known, else a render-and-compare search over yaw/pitch; then yaw, pitch and roll are refined jointly in
   the first ``camera.steps`` steps of the Gaussian stage (bounded; focal scale and shift can be, but by
   default the head transform takes their place). With ``camera.rotate_head`` the refined rotation turns
   the head instead of the camera: the same input view, but every other view sees the turn too.
2. **Latent stage** (:mod:`~perchead.fit.latent`, ``latent``): first the network itself is asked for a head
   that matches the photo better. An offset to the lift encoder's 2D tokens is optimised (the network
   frozen) so that the decoded head's render from the input camera matches the photo. Every 3D patch reads
   all 2D tokens, so what the photo corrects on the visible side reaches the hidden side the way the network
   learned it would; per-Gaussian changes cannot do that. The decoded head replaces the prediction for the
   steps below.
3. **Face shape** (:mod:`~perchead.fit.face_shape`, ``face``, off by default): the face moved toward the face
   mesh's depth profile.
4. **Gaussian stage** (:mod:`~perchead.fit.gaussians`, ``gaussians``): first the Gaussians facing the input
   camera most squarely are split into four finer ones each (``gaussians.split_share``: detail the
   predicted Gaussians are too large for); then colours and opacities from the start, bounded position and
   scale offsets after ``gaussians.geometry_from`` of the steps (outside the matte the photo's white pulls
   mostly on coverage, not on colour: ``photo.outside_matte_color``); Adam, its step sizes decaying by a
   half cosine to ``gaussians.lr_final`` of their start. Offsets are ``gaussians.max_offset · tanh(·)`` so
   no Gaussian moves further. With it:

   * the **head transform** (:mod:`~perchead.fit.head_transform`, ``head``): one bounded change of the whole
     head in the input camera's image plane — width and height scales, a width that varies with the height
     (taper), a height that varies with the height (crown and chin scaled apart), and a shift — with the
     depth left as predicted. A head predicted too wide, too narrow at the crown or off-centre is seen so in
     the photo, and the change moves every view: the sides and the back share the outline the photo shows.
     (Zoom and shift of the camera fit the photo equally well but leave the other views as predicted.)
   * the **priors** (:mod:`~perchead.fit.priors`, ``priors``): self-distillation (the latent stage's head, or
     else the prediction, rendered from other views as soft targets, weighted by ``(1 − cos θ) / 2`` away
     from the input view, re-rendered through the current head transform so the prior keeps the predicted
     surface, not its predicted outline), left–right symmetry (the hidden side follows the mirrored visible
     side), colour smoothness within each 16-Gaussian patch, an anchor on the parameters of Gaussians facing
     away from the camera, and silhouette consistency (alpha vs matte in the input view, alpha vs the
     prediction's alpha in the other views).

Each stage's settings are a group of :class:`~perchead.fit.config.FitConfig` (named above).

No identity or perceptual network is optimised against, so identity measures stay independent.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.fit.config import FitConfig, PhotoConfig
from perchead.fit.face_shape import apply_face_shape
from perchead.fit.gaussians import gaussian_stage
from perchead.fit.latent import latent_stage
from perchead.fit.pose import Framing, input_camera
from perchead.fit.views import render
from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians
from perchead.progress import Progress, no_progress

@dataclass
class FitResult:
    """What :func:`fit_to_photo` returns.

    Attributes:
        gaussians: the fitted head. ``[N, …]``
        camera: the refined input camera (one view, at the size the fit ran: ``FitConfig.photo.fit_size`` at most;
            with ``camera.rotate_head`` the given camera, the head having turned instead).
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
    on_head: Callable[[Gaussians], None] | None = None,
    head_every: int = 10,
) -> FitResult:
    """Refines one predicted head so its render from the input camera matches the photo.

    Args:
        model: the PercHead (its renderer, refiner and render framing; for the latent stage also its encoder,
            decoder and Gaussian head; its weights are not changed).
        gaussians: the feed-forward head, ``[N, …]`` or ``[1, N, …]``.
        image: the model input over white. ``[1, 3, S, S]`` or ``[3, S, S]``
        mask: its matte. ``[1, 1, S, S]``, ``[1, S, S]`` or ``[S, S]``
        camera: the input camera (e.g. :meth:`perchead.photo.preprocess.Preprocessed.input_camera`); None =
            render-and-compare search (``config.pose.search``) or the frontal model framing.
        config: :class:`FitConfig` (default: the ``"fast"`` preset).
        progress: called once per step with a fraction in ``progress_range``; may raise to cancel.
        progress_range: the fractions of the first and last step.
        landmarks: the face mesh's 468 landmarks in ``image``'s pixels, (x, y, relative depth z) ``[468, 3]``
            (:func:`perchead.fit.face_shape.mesh_landmarks`), for ``config.face.enabled``; None = no
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
        on_head: called with the head as it is now (detached, ``[N', …]``, as the input view sees it) after
            the latent stage and every ``head_every`` steps of the Gaussian stage (not after the last: that
            head is returned), e.g. to show the head improving while it is fitted; may raise to cancel.
        head_every: steps between two calls of ``on_head``.

    Returns:
        :class:`FitResult` (detached Gaussians ``[N, …]``).

    Raises:
        ValueError: a batch of heads, images / masks / ``inside`` maps / cameras of the wrong shape, or a
            ``head_every`` below 1.
    """
    if isinstance(head_every, bool) or not isinstance(head_every, int) or head_every < 1:
        raise ValueError(f"head_every must be a whole number of steps ≥ 1, got {head_every!r}")
    config = config or FitConfig()
    gaussians, image, mask, inside = _checked(gaussians, image, mask, inside, camera)
    with _frozen(model):
        return _fit(model, gaussians, image, mask, camera, config, progress, progress_range, landmarks, inside,
                    tokens, framing, on_head, head_every)


def _fit(model, gaussians: Gaussians, image: Tensor, mask: Tensor, camera: Cameras | None, config: FitConfig,
         progress: Progress, progress_range: tuple[float, float], landmarks, inside: Tensor, tokens,
         framing: Framing | None, on_head: Callable[[Gaussians], None] | None, head_every: int) -> FitResult:
    """:func:`fit_to_photo` with checked inputs and the model frozen: the method's stages in order."""
    device = gaussians.means.device
    image = image.to(device, torch.float32)
    mask = mask.to(device, torch.float32).clamp(0, 1)
    inside = inside.to(device, torch.float32).clamp(0, 1)
    input_size = image.shape[-1]
    model_input = image, mask  # the latent stage encodes the photo at the model's own input size
    fit_size = config.photo.fit_size
    if fit_size is not None and image.shape[-1] > fit_size:
        image = F.interpolate(image, size=(fit_size,) * 2, mode="area")  # [1, 3, s, s]
        mask = F.interpolate(mask, size=(fit_size,) * 2, mode="area")  # [1, 1, s, s]
        inside = F.interpolate(inside, size=(fit_size,) * 2, mode="area")  # [1, 1, s, s]
    # only pixels wholly inside the photo count (its edge pixels are blended with the padding)
    known = (inside > 0.999).float()  # [1, 1, s, s]
    S = image.shape[-1]
    g0 = gaussians.detach().float()
    notes: list[str] = []
    # 1. the input camera: given (pose from landmarks), searched, or the frontal model framing
    camera = input_camera(model, g0, image, mask, known, camera, config, framing, notes).to(device)
    terms = PhotoTerms(image, mask, known, config.photo)
    lo, hi = progress_range
    split = lo + (hi - lo) * config.latent.steps / max(config.latent.steps + config.gaussians.steps, 1)
    losses: list[float] = []
    first_photo = last_photo = float("nan")
    # 2. the latent stage: the network's own prior carries what the photo shows to every view
    if config.latent.steps:
        with torch.no_grad():  # the given head's score, before any step
            first_photo = float(terms.photo_l1(*render(model, g0, camera.viewmats, camera.Ks, S,
                                                       config.photo.through_refiner)))
        g0, losses = latent_stage(model, *model_input, camera, terms.photo_l1, terms.silhouette_l1, config, progress,
                                  (lo, split), tokens)
        if on_head is not None and config.gaussians.steps:
            on_head(g0.detach())
    # 3. the face shape: the face mesh's depth profile
    if config.face.enabled and landmarks is not None:
        g0, note = apply_face_shape(g0, landmarks, camera, S / input_size, config)
        notes.append(note)
    # 4. the Gaussian stage: finer Gaussians, the head transform, the camera and every Gaussian under the priors
    stage = gaussian_stage(model, g0, camera, terms, config, progress, (split, hi), on_head, head_every)
    losses += stage.losses
    if not config.latent.steps:
        first_photo = stage.first_photo
    notes += stage.notes
    if config.gaussians.steps or config.latent.steps:
        with torch.no_grad():
            last_photo = float(terms.photo_l1(*render(model, stage.gaussians, stage.camera.viewmats, stage.camera.Ks,
                                                      S, refine=config.photo.through_refiner)))
    return FitResult(gaussians=stage.gaussians, camera=stage.camera, losses=losses,
                     photo_loss=(first_photo, last_photo), notes=notes)


def _checked(gaussians: Gaussians, image: Tensor, mask: Tensor, inside: Tensor | None,
             camera: Cameras | None) -> tuple[Gaussians, Tensor, Tensor, Tensor]:
    """The inputs of :func:`fit_to_photo` checked and batched: (``[N, …]``, ``[1, 3, S, S]``, ``[1, 1, S, S]``,
    ``[1, 1, S, S]``; ``inside`` all ones when None). Raises ``ValueError`` naming the wrong one."""
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
    return gaussians, image, mask, inside


class PhotoTerms:
    """The photo's two terms, shared by the latent and the Gaussian stage: the masked L1 of a render's colour
    against the photo (:meth:`photo_l1`) and of its alpha against the matte (:meth:`silhouette_l1`), where the
    photo is known.

    Args:
        image: the photo over white at the fit's size. ``[1, 3, S, S]``
        mask: its matte. ``[1, 1, S, S]``
        known: 1 where the image shows the photo (not padding). ``[1, 1, S, S]``
        config: the photo settings (``outside_matte_color``).
    """

    def __init__(self, image: Tensor, mask: Tensor, known: Tensor, config: PhotoConfig):
        self.image, self.mask, self.known, self.config = image, mask, known, config
        self.mask_sum = (mask * known).sum().clamp_min(1.0)

    def photo_l1(self, rgb: Tensor, alpha: Tensor) -> Tensor:
        """The photo term of a render: rgb ``[1, 3, S, S]``, alpha ``[1, 1, S, S]`` → ``[]``."""
        # the photo is cut out over white: outside the matte the render must be white too (no stray
        # Gaussians); normalised by the matte's area so the term does not shrink with the head's size;
        # past the photo's edges nothing is known
        mask = self.mask
        if self.config.outside_matte_color < 1:
            # outside the matte the colour's share of the gradient is scaled down (the value is the same):
            # a Gaussian at the silhouette clears by turning transparent or moving more than by taking
            # the background's white, which other views would show as a white band
            cover = alpha.clamp_min(1e-4)
            fixed = 1 - cover * ((1 - rgb) / cover).detach()  # [1, 3, S, S] rgb, its colour detached
            outside = fixed + self.config.outside_matte_color * (rgb - fixed)  # [1, 3, S, S]
            rgb = mask * rgb + (1 - mask) * outside
        return ((rgb - self.image).abs() * self.known).sum() / (3 * self.mask_sum)

    def silhouette_l1(self, alpha: Tensor) -> Tensor:
        """The silhouette term of a render's alpha ``[1, 1, S, S]`` → ``[]``."""
        return ((alpha - self.mask).abs() * self.known).mean()
