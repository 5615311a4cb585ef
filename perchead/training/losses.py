"""Training losses: the paper's perceptual loss module (PercHead §3.4) plus pixel, SSIM, LPIPS and mask terms.

Paper (§3.4): "late-stage features from the small variant of DINOv2 (layers 8 and 11) and image encoder
features from SAM 2.1", compared between the rendered and the target image "using cosine distance on
l2-normalized feature vectors". Phase 1 trains the base model with it; phase 2 (CNN refiner only)
uses "a combination of DINOv2, L1 and LPIPS losses".

Weights: :class:`LossConfig` holds one weight per term; the training preset table
(:data:`perchead.training.config.TRAIN_PRESETS`) gives the per-phase weights; our own choices are listed
in :class:`PerceptualLoss`. A term whose weight is 0 loads nothing. A term with weight > 0 whose network
weights are missing raises :class:`MissingWeightsError` naming the model id (``on_missing="error"``, default),
or, with ``on_missing="skip"``, prints a warning and drops the term. Loading never waits on the
network when ``HF_HUB_OFFLINE=1``: it first looks in the local cache only.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from torch import Tensor, nn

from perchead.models.similarity import (DinoFeatures, MissingWeightsError, SamFeatures, feature_distance, freeze,
                                        load_dino, load_lpips, load_sam_vision, ssim)

TERMS = ("l1", "ssim", "mask", "dino", "sam", "lpips")


@dataclass
class LossConfig:
    """Weights of the loss terms and the perceptual networks they use.

    Attributes:
        l1: mean absolute RGB error (paper: phase 2; ours: phase 1 of demo/tiny).
        ssim: 1 − SSIM (ours).
        mask: L1 between rendered alpha and target foreground mask (ours, silhouette loss).
        dino: DINOv2 cosine feature distance (paper: both phases).
        sam: SAM 2.1 image-encoder cosine feature distance (paper: phase 1).
        lpips: LPIPS (paper: phase 2); needs the `lpips` package and its backbone weights.
        dino_model: hub id or folder of the DINOv2 model (paper: DINOv2-small).
        dino_layers: 0-based DINOv2 block indices whose outputs are compared (paper: 8 and 11).
        dino_image_size: DINOv2 input size, a multiple of its patch size (ours: 224, its pre-training size).
        sam_model: hub id or folder of the SAM 2.1 model (ours: hiera-tiny; the paper gives no size).
        sam_image_size: SAM 2 input size (ours: 1024, its native size).
        lpips_net: LPIPS backbone, "vgg" or "alex" (ours: vgg, the sharper-looking one).
        on_missing: "error" (raise when an enabled term's weights are missing) or "skip" (warn, drop it).
    """

    l1: float = 0.0
    ssim: float = 0.0
    mask: float = 0.0
    dino: float = 0.0
    sam: float = 0.0
    lpips: float = 0.0
    dino_model: str = "facebook/dinov2-small"
    dino_layers: tuple[int, ...] = (8, 11)
    dino_image_size: int = 224
    sam_model: str = "facebook/sam2.1-hiera-tiny"
    sam_image_size: int = 1024
    lpips_net: str = "vgg"
    on_missing: str = "error"

    def __post_init__(self) -> None:
        for name in TERMS:
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        if self.on_missing not in ("error", "skip"):
            raise ValueError(f"on_missing must be 'error' or 'skip', got {self.on_missing!r}")
        self.dino_layers = tuple(int(i) for i in self.dino_layers)

    @property
    def weights(self) -> dict[str, float]:
        """The enabled terms and their weights."""
        return {name: getattr(self, name) for name in TERMS if getattr(self, name) > 0}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PerceptualLoss(nn.Module):
    """The paper's perceptual loss module (§3.4): DINOv2 (layers 8, 11) + SAM 2.1 image-encoder features.

    Choices that are ours (the paper does not give them):
    - DINOv2 "layers 8 and 11" are read as 0-based block indices of DINOv2-small's 12 blocks, i.e.
      ``hidden_states[9]`` and ``hidden_states[12]`` of transformers' ``Dinov2Model`` (11 is the last block);
      all tokens (CLS + patches) are compared; input resized to 224×224.
    - SAM 2.1 "image encoder features" are the image embeddings the SAM 2 mask decoder consumes: the
      lowest-resolution FPN level of ``Sam2Model.vision_encoder`` (256 channels); model
      ``facebook/sam2.1-hiera-tiny``; input resized to 1024×1024 (SAM 2's native size, configurable).
    - Both networks take ImageNet-normalised RGB; images are resized bilinearly (antialiased).
    - The cosine distance is ``1 - cos`` per feature vector (token / pixel), averaged, then the layers of
      one network are averaged.
    - Terms not in the paper, used where its perceptual networks are unavailable (the CPU ``demo`` and
      ``tiny`` presets: no foundation-model weights can be downloaded here): ``ssim`` (1 − SSIM, the
      11×11 Gaussian SSIM of :mod:`perchead.models.similarity`) and ``mask`` (L1 between the rendered alpha and the
      target's foreground mask, a silhouette loss). Phase 1 of ``demo``/``tiny`` also uses ``l1``.
    """

    def __init__(
        self,
        dino: nn.Module | None,
        sam: nn.Module | None,
        dino_layers: tuple[int, ...] = (8, 11),
        dino_image_size: int = 224,
        sam_image_size: int = 1024,
    ) -> None:
        """
        Args:
            dino: a ``Dinov2Model`` or None (term off).
            sam: a ``Sam2VisionModel`` or None (term off).
            dino_layers: 0-based DINOv2 block indices.
            dino_image_size: DINOv2 input size.
            sam_image_size: SAM 2 input size.
        """
        super().__init__()
        self.dino = DinoFeatures(dino, dino_layers, dino_image_size) if dino is not None else None
        self.sam = SamFeatures(sam, sam_image_size) if sam is not None else None

    def forward(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Per-network cosine distances.

        Args:
            pred: renders ``[N, 3, H, W]`` in [0, 1] (gradients flow here).
            target: targets ``[N, 3, H, W]`` in [0, 1].

        Returns:
            {"dino": scalar, "sam": scalar} for the networks present.
        """
        out = {}
        if self.dino is not None:
            out["dino"] = feature_distance(self.dino, pred, target)
        if self.sam is not None:
            out["sam"] = feature_distance(self.sam, pred, target)
        return out


class ReconstructionLoss(nn.Module):
    """Weighted sum of the enabled terms of a :class:`LossConfig`."""

    def __init__(
        self,
        config: LossConfig,
        dino: nn.Module | None = None,
        sam: nn.Module | None = None,
        lpips_model: nn.Module | None = None,
    ) -> None:
        """
        Args:
            config: term weights and perceptual model ids.
            dino: a ``Dinov2Model`` to use instead of loading ``config.dino_model`` (tests pass tiny ones).
            sam: a ``Sam2VisionModel`` to use instead of loading ``config.sam_model``.
            lpips_model: a callable LPIPS module taking [-1, 1] images, instead of :func:`load_lpips`.
        """
        super().__init__()
        self.config = config
        self.weights = dict(config.weights)
        self.dropped: dict[str, str] = {}  # term → why it was dropped (on_missing="skip")
        if "dino" in self.weights and dino is None:
            dino = self._try_load("dino", lambda: load_dino(config.dino_model))
        if "sam" in self.weights and sam is None:
            sam = self._try_load("sam", lambda: load_sam_vision(config.sam_model))
        if "lpips" in self.weights and lpips_model is None:
            lpips_model = self._try_load("lpips", lambda: load_lpips(config.lpips_net))
        self.perceptual = PerceptualLoss(
            dino if "dino" in self.weights else None,
            sam if "sam" in self.weights else None,
            config.dino_layers,
            config.dino_image_size,
            config.sam_image_size,
        )
        self.lpips = freeze(lpips_model) if ("lpips" in self.weights and lpips_model is not None) else None
        if not self.weights:
            raise ValueError(f"no loss term is enabled (all weights are 0 or dropped: {self.dropped})")

    def _try_load(self, term: str, load):
        try:
            return load()
        except MissingWeightsError as exc:
            if self.config.on_missing == "error":
                raise
            print(f"[perchead.training.losses] warning: dropping the '{term}' loss term: {exc}", file=sys.stderr, flush=True)
            self.dropped[term] = str(exc)
            self.weights.pop(term)
            return None

    def train(self, mode: bool = True) -> "ReconstructionLoss":
        return super().train(False)  # every network in here is frozen

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        pred_alpha: Tensor | None = None,
        target_mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Computes the weighted loss.

        Args:
            pred: renders ``[N, 3, H, W]`` in [0, 1] (composited over the same background as the target).
            target: target images ``[N, 3, H, W]`` in [0, 1].
            pred_alpha: rendered alpha ``[N, 1, H, W]`` (needed by the ``mask`` term).
            target_mask: target foreground masks ``[N, 1, H, W]`` (needed by the ``mask`` term).

        Returns:
            (total loss scalar, {term: unweighted value as float, ..., "total": float}).
        """
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"pred and target must both be [N, 3, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}")
        terms: dict[str, Tensor] = {}
        pred32, target32 = pred.float(), target.float()
        if "l1" in self.weights:
            terms["l1"] = (pred32 - target32).abs().mean()
        if "ssim" in self.weights:
            terms["ssim"] = 1.0 - ssim(pred32, target32).mean()
        if "mask" in self.weights:
            if pred_alpha is None or target_mask is None:
                raise ValueError("the 'mask' loss term needs pred_alpha and target_mask")
            if pred_alpha.shape != target_mask.shape:
                raise ValueError(f"pred_alpha {tuple(pred_alpha.shape)} and target_mask {tuple(target_mask.shape)} differ")
            terms["mask"] = (pred_alpha.float() - target_mask.float()).abs().mean()
        if "dino" in self.weights or "sam" in self.weights:
            terms.update(self.perceptual(pred, target))
        if "lpips" in self.weights:
            terms["lpips"] = self.lpips(pred * 2 - 1, target * 2 - 1).mean()  # LPIPS takes [-1, 1]
        total = sum(self.weights[name] * value for name, value in terms.items())
        logs = {name: float(value.detach()) for name, value in terms.items()}
        logs["total"] = float(total.detach())
        return total, logs
