"""Reconstruction pipeline: one portrait (or a batch of prepared images) → 3D Gaussians — paper Figure 2.

Example::

    pipe = PercHeadPipeline.from_pretrained("weights_card")      # folder or Hub repo id
    rec = pipe("examples/head0_front.png", cameras=pipe.model.default_cameras([0, 90, 180, 270]))
    rec.gaussians[0], rec.views.rgb[0], rec.timings               # always batched: [B, N, …], [B, V, …]

``perchead.export.outputs.write_outputs`` turns a head into files, novel views and a turntable.
:meth:`PercHeadPipeline.decoder_layers` shows what each 3D decoder layer adds (supplement §7).
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians
from perchead.models.lift_encoder import Tokens2D
from perchead.models.perchead import PercHead
from perchead.pipelines.common import StageTimer, default_device, gaussians_and_views, inference_autocast
from perchead.progress import Progress, no_progress
from perchead.fit.config import FitConfig, check_steps, with_steps
from perchead.fit.driver import fit_to_photo
from perchead.photo.config import PreprocessConfig
from perchead.photo.load import ImageSource
from perchead.photo.preprocess import Preprocessed, preprocess

if TYPE_CHECKING:
    import numpy as np

    from perchead.render import RenderOutput

# (caption, azimuth°, elevation°) of the decoder visualisation's views; azimuth +90 is the head's own left
DECODER_VIEWS: tuple[tuple[str, float, float], ...] = (("front", 0.0, 0.0), ("¾ left", 45.0, 0.0))


@dataclass
class Reconstruction:
    """What :class:`PercHeadPipeline` returns; always batched, also for one photo (B = 1).

    Attributes:
        gaussians: the heads. ``[B, N, …]``
        views: renders of the given cameras (``rgb [B, V, 3, H, W]`` …), or None.
        preprocessed: how each photo became the model input (crop, mask, pose, notes); None for tensor input.
        timings: seconds per stage: ``preprocess``, ``encode``, ``decode``, ``gaussians``, ``fit`` (with
            ``fit_steps``), ``render`` (when cameras were given) and ``total``.
        notes: remarks for the user (from preprocessing: downscaling, faces found, fallbacks).
    """

    gaussians: Gaussians
    views: RenderOutput | None = None
    preprocessed: list[Preprocessed] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class DecoderLayers:
    """What :meth:`PercHeadPipeline.decoder_layers` returns: the head after each of the L decoder layers.

    Column k (0-based) is a full forward pass with cross-attention in decoder layers 0..k only; the MLPs
    and skip connections of the later layers still run (supplement §7). The last column is the normal model.

    Attributes:
        gaussians: the heads of each column, L × ``[B, N, …]``.
        rgb: their renders. ``[B, L, V, 3, H, W]``
        alpha: their alpha. ``[B, L, V, 1, H, W]``
        cameras: the V views (front and ¾ left by default).
        view_captions: a caption per view ("front", "¾ left").
        preprocessed: how each photo became the model input; None for tensor input.
        timings: seconds per stage: ``preprocess``, ``encode``, ``decode`` (all L passes), ``gaussians``,
            ``render``, ``total``.
        notes: remarks from preprocessing.
    """

    gaussians: list[Gaussians]
    rgb: Tensor
    alpha: Tensor
    cameras: Cameras
    view_captions: list[str]
    preprocessed: list[Preprocessed] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return len(self.gaussians)

    def column_captions(self) -> list[str]:
        """One caption per column: "layer 1 of L", …"""
        return [f"layer {k + 1} of {self.n_layers}" for k in range(self.n_layers)]

    def columns(self, b: int = 0) -> list[np.ndarray]:
        """Head ``b``'s columns as pictures, the views stacked top to bottom. L × ``[V·H, W, 3]`` uint8"""
        from perchead.geometry.images import to_uint8

        return [to_uint8(self.rgb[b, k].transpose(0, 1).flatten(1, 2)) for k in range(self.n_layers)]

    def strip(self, b: int = 0) -> np.ndarray:
        """Head ``b``'s columns side by side: one row per view, one column per layer. ``[V·H, L·W, 3]`` uint8"""
        import numpy as np

        return np.concatenate(self.columns(b), axis=1)


class PercHeadPipeline:
    """A portrait (path, bytes, PIL image, uint8 array) or prepared tensors → :class:`Reconstruction`.

    Args:
        model: a :class:`~perchead.models.perchead.PercHead`.
        device: where to run (default: CUDA if available, else CPU).
    """

    def __init__(self, model: PercHead, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()

    @classmethod
    def from_pretrained(
        cls, repo_id_or_folder: str | os.PathLike, revision: str | None = None,
        device: str | torch.device | None = None, *, token: str | bool | None = None, **kwargs
    ) -> "PercHeadPipeline":
        """Loads the base model at the top of a checkpoint folder or Hub repo.

        Args:
            repo_id_or_folder: a folder with ``config.json`` + ``model.safetensors`` (e.g. ``weights_card``) or
                a Hub model repo id (``"org/name"``; one ``snapshot_download`` of the root's JSON and
                safetensors files, cached, offline under ``HF_HUB_OFFLINE=1``).
            revision: Hub branch, tag or commit.
            device: where to run (default: CUDA if available, else CPU).
            token: Hub token (default: the saved one / ``HF_TOKEN``).
            **kwargs: ``cache_dir``, ``local_files_only``, ``map_location`` (see :meth:`PercHead.from_pretrained`).

        Returns:
            the pipeline.

        Raises:
            FileNotFoundError, ValueError: see :meth:`PercHead.from_pretrained` (one line each).
        """
        model = PercHead.from_pretrained(repo_id_or_folder, revision=revision, token=token, **kwargs)
        return cls(model, device=device)

    @property
    def image_size(self) -> int:
        return self.model.config.render.image_size

    def preprocess_config(self, **options) -> PreprocessConfig:
        """The photo crop with this model's framing (size, radius, fov); ``options`` override its fields."""
        return PreprocessConfig.from_model_config(self.model.config.render, **options)

    # ------------------------------------------------------------------------------------------ input
    def prepare(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Checks, batches and resizes prepared inputs to the model size, on the pipeline device.

        Args:
            image: ``[3, H, W]`` or ``[B, 3, H, W]`` float in [0, 1], over white.
            mask: ``[1, H, W]``, ``[H, W]`` or ``[B, 1, H, W]`` in [0, 1] (bool accepted).

        Returns:
            (image ``[B, 3, S, S]``, mask ``[B, 1, S, S]``).
        """
        if not isinstance(image, Tensor) or not isinstance(mask, Tensor):
            raise ValueError("image and mask must both be torch tensors (or pass a photo and no mask)")
        if image.dim() == 3:
            image = image[None]
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [3, H, W] or [B, 3, H, W], got {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image must be float in [0, 1], got {image.dtype}")
        if mask.dim() == 2:
            mask = mask[None]
        if mask.dim() == 3:
            mask = mask[None]
        if mask.shape != (image.shape[0], 1, *image.shape[2:]):
            raise ValueError(f"mask must be [B, 1, H, W] matching the image {tuple(image.shape)}, got {tuple(mask.shape)}")
        S = self.image_size
        image = image.to(self.device, torch.float32)
        mask = mask.to(self.device, torch.float32)
        if image.shape[-2:] != (S, S):
            image = F.interpolate(image, size=(S, S), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
            mask = F.interpolate(mask, size=(S, S), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return image, mask  # [B, 3, S, S], [B, 1, S, S]

    # ------------------------------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: ImageSource | Tensor,
        mask: Tensor | None = None,
        *,
        cameras: Cameras | None = None,
        refine: bool = True,
        cross_attn_until: int | None = None,
        progress: Progress = no_progress,
        fit_steps: int = 0,
        fit: FitConfig | None = None,
        before_fit: Callable[[Reconstruction], None] | None = None,
        during_fit: Callable[[Reconstruction], None] | None = None,
        during_fit_every: int = 10,
        **preprocess_options,
    ) -> Reconstruction:
        """Reconstructs the head in a photo, or the heads in a batch of prepared images.

        Args:
            image: a photo (path, bytes, PIL image or uint8 array: cropped and cut out by
                :func:`perchead.photo.preprocess.preprocess`), or prepared tensors ``[3, H, W]`` / ``[B, 3, H, W]`` in
                [0, 1] over white (resized to the model size) together with ``mask``.
            mask: the foreground mask of prepared tensors (same H, W); must be None for a photo.
            cameras: views to render (e.g. ``pipe.model.default_cameras([0, 90])``); None renders nothing.
            refine: apply the CNN refiner to the renders.
            cross_attn_until: decoder visualisation (supplement §7); None = the normal model.
            progress: called with (fraction, stage) before each stage and each fit step; may raise to stop
                the work.
            fit_steps: photo-fit steps (:mod:`perchead.fit`) after the Gaussian head: each head is
                refined against its own input, its Gaussians for ``fit_steps`` steps after the fit's latent
                stage (``fit.latent.steps``); 0 = no fit at all, the latent stage included. The input camera
                is the photo's head pose (from landmarks) when known, else a render-and-compare search.
            fit: the fit's other settings (default: ``FitConfig.preset("fast")``); its ``gaussians.steps`` are
                replaced by ``fit_steps``.
            before_fit: called before the fit starts with the feed-forward head wearing the photo's colours
                where the input camera sees it (:func:`perchead.fit.projection.project_photo_colors`: no
                optimisation, milliseconds; no views), e.g. to show the person at once while the head is fitted.
            during_fit: called with the head being fitted (a batch of one, no views) after the fit's latent
                stage and every ``during_fit_every`` steps of its Gaussian stage, e.g. to show it improving.
            during_fit_every: steps between two calls of ``during_fit``.
            **preprocess_options: fields of :class:`perchead.photo.config.PreprocessConfig` for a photo
                (``remove_background``, ``auto_crop``, ``use_whole_image``, …).

        Returns:
            :class:`Reconstruction`.

        Raises:
            perchead.photo.load.PreprocessError: a photo that cannot be used (the message says why).
            ValueError: tensors of the wrong shape or type, a mask with a photo, options with tensors, a
                negative or absurd ``fit_steps``, a ``fit`` that is not a FitConfig.
        """
        check_steps(fit_steps)
        if fit is not None and not isinstance(fit, FitConfig):
            raise ValueError(f"fit must be a FitConfig or None, got {type(fit).__name__}")
        fit = with_steps(fit, fit_steps)
        if fit_steps and fit.photo.crop_size is not None and not isinstance(image, Tensor):
            preprocess_options = {**preprocess_options, "fine_size": fit.photo.crop_size}  # the fit's finer cut
        timer = StageTimer(self.device)
        # 1. a photo → crop + mask with the training framing; tensors → checked and resized
        progress(0.0, "preprocessing (crop + background removal)")
        image, mask, prepared = self._model_input(image, mask, preprocess_options)  # [B, 3, S, S], [B, 1, S, S]
        timer("preprocess")
        progress(0.1, "reconstructing the 3D head")
        with inference_autocast(self.device):
            # 2. dual-branch lift encoder: foreground patch tokens
            tokens2d = self.model.encode(image, mask)
            timer("encode")
            # 3. 3D decoder: one token per template patch
            tokens3d = self.model.decode(tokens2d, cross_attn_until=cross_attn_until)
            timer("decode")
        # 4.–5. Gaussian head (float32), optional renders + refiner
        if fit_steps:
            gaussians, _ = gaussians_and_views(self.model, tokens3d, None, refine, timer)
            prep_notes = [note for prep in prepared or [] for note in prep.notes]
            if before_fit is not None:
                colored = self._photo_colored(gaussians, image, mask, prepared, fit)
                timer("project")
                before_fit(Reconstruction(gaussians=colored, preprocessed=prepared, timings=dict(timer.timings),
                                          notes=prep_notes))
            on_head = None
            if during_fit is not None:
                def on_head(head: Gaussians) -> None:
                    during_fit(Reconstruction(gaussians=head[None], preprocessed=prepared,
                                              timings=dict(timer.timings), notes=prep_notes))
            gaussians, fit_notes = self._fit(gaussians, image, mask, prepared, fit, progress, tokens2d, on_head,
                                             during_fit_every)
            timer("fit")  # with any before_fit / during_fit callbacks' time
            views = None
            if cameras is not None:
                views = self.model.render_views(gaussians, cameras, refine=refine)
                timer("render")
        else:
            gaussians, views = gaussians_and_views(self.model, tokens3d, cameras, refine, timer)
            fit_notes = []
        notes = [note for prep in prepared or [] for note in prep.notes] + fit_notes
        return Reconstruction(gaussians=gaussians, views=views, preprocessed=prepared, timings=timer.total(),
                              notes=notes)

    @torch.no_grad()
    def decoder_layers(
        self,
        image: ImageSource | Tensor,
        mask: Tensor | None = None,
        *,
        cameras: Cameras | None = None,
        size: int | None = None,
        refine: bool = True,
        progress: Progress = no_progress,
        **preprocess_options,
    ) -> DecoderLayers:
        """The head after each decoder layer: what each layer's cross-attention adds (supplement §7).

        The 2D tokens are encoded once; the decoder then runs L times, with cross-attention switched off
        after layer 1, 2, …, L (``cross_attn_until`` = 0 … L−1), and the L heads are rendered in one batch.

        Args:
            image, mask, **preprocess_options: as for :meth:`__call__` (a photo, or prepared tensors + mask).
            cameras: the views of every column (default: front and ¾ left, :data:`DECODER_VIEWS`).
            size: the side of the default views (default: the model's render size).
            refine: apply the CNN refiner to the renders.
            progress: called with (fraction, stage) before each stage and each layer; may raise to stop.

        Returns:
            :class:`DecoderLayers`; its last column is the normal model's head.

        Raises:
            perchead.photo.load.PreprocessError: a photo that cannot be used.
            ValueError: tensors of the wrong shape or type, a mask with a photo, options with tensors.
        """
        timer = StageTimer(self.device)
        progress(0.0, "preprocessing (crop + background removal)")
        image, mask, prepared = self._model_input(image, mask, preprocess_options)  # [B, 3, S, S], [B, 1, S, S]
        timer("preprocess")
        captions = [caption for caption, _, _ in DECODER_VIEWS]
        if cameras is None:
            cameras = self.model.default_cameras([v[1] for v in DECODER_VIEWS], [v[2] for v in DECODER_VIEWS], size=size)
        else:
            captions = [f"view {v + 1}" for v in range(cameras.viewmats.shape[0])]
        n_layers = len(self.model.decoder.layers)
        progress(0.1, "encoding the photo")
        with inference_autocast(self.device):
            tokens2d = self.model.encode(image, mask)
            timer("encode")
            tokens3d = []
            for k in range(n_layers):
                progress(0.1 + 0.6 * k / n_layers, f"decoding with cross-attention up to layer {k + 1} of {n_layers}")
                tokens3d.append(self.model.decode(tokens2d, cross_attn_until=k))  # [B, P, D]
            timer("decode")
        B = image.shape[0]
        progress(0.7, "rendering every layer's head")
        heads = self.model.to_gaussians(torch.cat(tokens3d).float()).float()  # [L·B, N, …], layer-major
        timer("gaussians")
        out = self.model.render_views(heads, cameras, refine=refine)  # rgb [L·B, V, 3, H, W]
        timer("render")
        return DecoderLayers(
            gaussians=[heads[k * B : (k + 1) * B] for k in range(n_layers)],
            rgb=out.rgb.unflatten(0, (n_layers, B)).transpose(0, 1),  # [B, L, V, 3, H, W]
            alpha=out.alpha.unflatten(0, (n_layers, B)).transpose(0, 1),  # [B, L, V, 1, H, W]
            cameras=cameras, view_captions=captions, preprocessed=prepared, timings=timer.total(),
            notes=[note for prep in prepared or [] for note in prep.notes],
        )

    def _model_input(self, image: ImageSource | Tensor, mask: Tensor | None,
                     preprocess_options: dict) -> tuple[Tensor, Tensor, list[Preprocessed] | None]:
        """A photo → its crop and mask (with the training framing); tensors → checked and resized.

        Returns:
            (image ``[B, 3, S, S]``, mask ``[B, 1, S, S]``, the photo's preprocessing or None for tensors).
        """
        prepared = None
        if isinstance(image, Tensor):
            if preprocess_options:
                raise ValueError(f"preprocessing options {sorted(preprocess_options)} apply to photos, not tensors")
            if mask is None:
                raise ValueError("prepared image tensors need their mask")
        else:
            if mask is not None:
                raise ValueError("a photo is cut out by the pipeline: pass no mask with it")
            prepared = [preprocess(image, self.preprocess_config(**preprocess_options))]
            image, mask = prepared[0].image, prepared[0].mask
        image, mask = self.prepare(image, mask)
        return image, mask, prepared

    def _input_camera(self, prepared: Preprocessed | None, config: FitConfig) -> Cameras | None:
        """The photo's input camera from its landmark pose (with the fit's pitch offset), or None."""
        if prepared is None:
            return None
        r = self.model.config.render
        return prepared.input_camera(radius=r.radius, fov_deg=r.fov_deg,
                                     pitch_offset_deg=config.pose.landmark_pitch_offset_deg)

    def _photo_colored(self, gaussians: Gaussians, image: Tensor, mask: Tensor, prepared: list[Preprocessed] | None,
                       config: FitConfig) -> Gaussians:
        """Each feed-forward head with its photo's colours where its input camera (the landmark pose, else
        the frontal model framing) sees it: the first look at the person, before the fit. ``[B, N, …]``"""
        from perchead.fit.projection import project_photo_colors
        from perchead.geometry.cameras import orbit_cameras

        r = self.model.config.render
        heads = []
        for b in range(gaussians.batch_size):
            camera = self._input_camera(prepared[b] if prepared is not None else None, config)
            if camera is None:
                camera = orbit_cameras([0.0], [0.0], radius=r.radius, fov_deg=r.fov_deg, size=image.shape[-1])
            heads.append(project_photo_colors(self.model, gaussians[b], image[b : b + 1], mask[b : b + 1],
                                              camera)[0])
        return Gaussians.stack(heads)

    def _fit(self, gaussians: Gaussians, image: Tensor, mask: Tensor, prepared: list[Preprocessed] | None,
             config: FitConfig, progress: Progress, tokens2d: Tokens2D,
             on_head: Callable[[Gaussians], None] | None = None,
             head_every: int = 10) -> tuple[Gaussians, list[str]]:
        """Photo-fit of each head to its own input (progress 0.1 → 0.3 over all heads), its latent stage
        starting from the encoder's tokens ``tokens2d`` of the batch; a photo is compared at its finer cut
        (``Preprocessed.fine``, ``config.photo.crop_size``) where it has one, and a photo cropped by its own
        alpha channel without a landmark pose is searched with views cropped by the same rule
        (``Preprocessed.framing``); ``on_head`` / ``head_every`` as for :func:`fit_to_photo`.
        Returns (heads, notes)."""
        B = gaussians.batch_size
        heads, notes = [], []
        for b in range(B):
            camera = landmarks = inside = framing = None
            photo, photo_mask = image[b : b + 1], mask[b : b + 1]  # [1, 3, S, S], [1, 1, S, S]
            fine = prepared[b].fine if prepared is not None else None
            if fine is not None:  # the crop at FitConfig.photo.crop_size, finer than the model input
                photo, photo_mask = fine.image.to(image), fine.mask.to(mask)  # [1, 3, P, P], [1, 1, P, P]
            if prepared is not None:
                inside = (fine or prepared[b]).inside_photo()
                inside = F.interpolate(inside, size=photo.shape[-2:], mode="area")  # [1, 1, P, P]
                camera = self._input_camera(prepared[b], config)
                if camera is None:  # searched: cropped as the photo was, when its alpha channel framed it
                    framing = prepared[b].framing
                if camera is not None:
                    shift = config.pose.landmark_pitch_offset_deg
                    notes.append("photo-fit: head pose from the face landmarks"
                                 + (f" (pitch {shift:+.0f}° for a real face's proportions)" if shift else ""))
            if config.face.enabled:
                landmarks = self._face_mesh(image[b : b + 1], prepared[b] if prepared is not None else None)
                if landmarks is None:
                    notes.append("photo-fit: no face mesh on the model input, face shape skipped")
                else:
                    landmarks = landmarks * (photo.shape[-1] / image.shape[-1])  # [468, 3] in the photo's pixels
            span = ((1 + 2 * b / B) / 10, (1 + 2 * (b + 1) / B) / 10)  # this head's share of 0.1 … 0.3
            with torch.enable_grad():
                result = fit_to_photo(self.model, gaussians[b], photo, photo_mask, camera=camera,
                                      config=config, progress=progress, progress_range=span, landmarks=landmarks,
                                      inside=inside, tokens=tokens2d.item(b), framing=framing,
                                      on_head=on_head, head_every=head_every)
            heads.append(result.gaussians)
            notes += result.notes
        return Gaussians.stack(heads), notes

    @staticmethod
    def _face_mesh(image: Tensor, prepared: Preprocessed | None):
        """The face mesh (x, y, relative depth z) on the model input itself, started from the preprocessing's
        landmarks when it has them (else a face detection); None without the face networks or a face.
        ``[468, 3]`` in the model input's pixels."""
        from perchead.fit.face_shape import mesh_landmarks

        hint = None
        if prepared is not None and prepared.landmarks is not None:
            hint = prepared.landmarks * (image.shape[-1] / prepared.image.shape[-1])  # [468, 2]
        return mesh_landmarks(image, hint=hint)
