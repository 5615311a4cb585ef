"""The ``reconstruct`` task (paper §3.4): the base model from an image and mask, phase 1 without the refiner
CNN, phase 2 the CNN only, scored by rendering the predicted Gaussians at the target views.

Its data are synthetic heads rendered on the fly or an on-disk multi-view folder (:func:`build_dataset`),
which the ``edit`` task shares. ``--options '{"augment": 0.8}'`` makes that fraction of input views look
like matted photos (:func:`perchead.data.augment.augment_inputs`); the targets stay clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from perchead.training.config import LossFn, Task, TrainConfig, process_seed, task_options
from perchead.training.losses import LossConfig, ReconstructionLoss


def build_reconstruct_model(model_config, init_from: str | None = None) -> nn.Module:
    """The base lifting model (§3.1–3.3), fresh or from ``init_from``."""
    from perchead.models.perchead import PercHead

    if init_from:
        return PercHead.from_pretrained(init_from)
    return PercHead(model_config)


def _refiner_params(model: nn.Module) -> set[int]:
    refiner = getattr(model, "refiner", None)
    return {id(p) for p in refiner.parameters()} if refiner is not None else set()


def reconstruct_trainable(model: nn.Module, phase: int) -> list[nn.Parameter]:
    """Phase 1: every parameter except the refiner CNN's. Phase 2: the refiner's only.

    Frozen-by-design parameters (the DINOv2 branch, ``requires_grad=False`` when the model is built) are
    removed by :func:`train`, which only optimises parameters that were trainable at construction.
    """
    refiner_ids = _refiner_params(model)
    if phase == 2 and not refiner_ids:
        raise ValueError("phase 2 trains the refiner CNN, but this model has none (refiner.enabled is False)")
    return [p for p in model.parameters() if (id(p) in refiner_ids) == (phase == 2)]


def target_cameras(batch: dict[str, Any], size: int):
    """The batch's target cameras rescaled to ``size``: viewmats ``[B, V, 4, 4]``, Ks ``[B, V, 3, 3]``."""
    h = batch["target_images"].shape[-2]
    Ks = batch["target_Ks"].clone()  # [B, V, 3, 3]
    Ks[..., :2, :] *= size / h
    return batch["target_viewmats"], Ks


def _resize(x: Tensor, size: int) -> Tensor:
    """``[B, V, C, H, W]`` → ``[B, V, C, size, size]`` (area/bilinear)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    b, v = x.shape[:2]
    y = torch.nn.functional.interpolate(x.flatten(0, 1).float(), size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)
    return y.reshape(b, v, *y.shape[1:])


OPTIONS = {  # --options of the reconstruct task (ours)
    "augment": 0.0,  # fraction of input views made to look like matted photos (0 = clean renders)
}


def predict_from_image(model: nn.Module, batch: dict[str, Any]):
    """The reconstruction task's prediction: Gaussians from the input image and mask."""
    return model(batch["image"], batch["mask"])


def photo_like_predict(config: TrainConfig, phase: int) -> Callable:
    """:func:`predict_from_image` on inputs augmented with probability ``--options augment`` (reproducible
    from ``config.seed`` and the phase)."""
    from perchead.data.augment import InputAugmentConfig, augment_inputs

    fraction = float(task_options(config, OPTIONS)["augment"])
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--options augment must be a fraction in [0, 1], got {fraction}")
    if fraction == 0.0:
        return predict_from_image
    augment = InputAugmentConfig(p=fraction)
    generator = torch.Generator().manual_seed(process_seed(config.seed) + 104729 * phase)

    def predict(model: nn.Module, batch: dict[str, Any]):
        image, mask = augment_inputs(batch["image"], batch["mask"], augment, generator)
        return model(image, mask)

    return predict


def build_reconstruct_loss(config: TrainConfig, phase: int, predict: Callable | None = None) -> LossFn:
    """Reconstruction loss of one phase: render the predicted Gaussians at the targets, compare.

    Args:
        config: run settings.
        phase: 1 or 2.
        predict: ``(model, batch) -> Gaussians`` (default :func:`predict_from_image`; the ``edit`` task
            predicts from label maps and style embeddings instead).
    """
    weights = {**config.loss_weights.get(str(phase), {}), **config.loss_overrides.get(str(phase), {})}
    criterion = ReconstructionLoss(LossConfig(**weights))
    predict = predict or predict_from_image

    def loss_fn(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        size = config.render_size or model.config.render.render_size
        if phase == 2:  # base frozen: no graph through the reconstruction
            with torch.no_grad():
                gaussians = predict(model, batch)
        else:
            gaussians = predict(model, batch)
        viewmats, Ks = target_cameras(batch, size)
        out = model.render_at(gaussians, viewmats, Ks, size, size, refine=(phase == 2))
        rgb, alpha = out.rgb, out.alpha  # [B, V, 3, S, S], [B, V, 1, S, S]
        target = _resize(batch["target_images"], size)  # [B, V, 3, S, S]
        target_mask = _resize(batch["target_masks"], size)  # [B, V, 1, S, S]
        criterion.to(rgb.device)
        return criterion(rgb.flatten(0, 1), target.flatten(0, 1), alpha.flatten(0, 1), target_mask.flatten(0, 1))

    return loss_fn


def build_dataset(config: TrainConfig, render_config, split: str = "train"):
    """The training dataset: synthetic heads on the fly, or an on-disk multi-view folder.

    Args:
        config: run settings (``data``, ``n_targets``, ``seed``).
        render_config: the model's :class:`perchead.models.config.RenderConfig` (input size and framing).
        split: synthetic seed split.
    """
    if config.data == "synthetic":
        from perchead.data.synthetic import SyntheticHeads

        # views are a function of (seed, subject): reproducible, and every subject is new for ~100k samples
        return SyntheticHeads(split=split, image_size=render_config.image_size, n_targets=config.n_targets,
                              radius=render_config.radius, fov_deg=render_config.fov_deg, view_seed=config.seed)
    from perchead.data.multiview import CAMERAS_FILE, MultiViewDataset, export_synthetic

    if config.synthetic_subjects:
        from perchead.data.synthetic import split_seeds

        seeds = split_seeds("train")[: config.synthetic_subjects]
        todo = [s for s in seeds if not (Path(config.data) / f"synthetic-{s}" / CAMERAS_FILE).is_file()]
        if todo:
            print(f"[perchead.training] pre-rendering {len(todo)} synthetic heads into {config.data}", flush=True)
            export_synthetic(config.data, todo, views_per_subject=config.synthetic_views,
                             image_size=render_config.image_size, radius=render_config.radius,
                             fov_deg=render_config.fov_deg, progress=True)
    if not Path(config.data).is_dir():
        raise ValueError(f"--data must be 'synthetic' or an existing dataset folder, got {config.data!r}")

    return MultiViewDataset(config.data, n_targets=config.n_targets, image_size=render_config.image_size)


TASK = Task(build_reconstruct_model,
            lambda config, phase: build_reconstruct_loss(config, phase, photo_like_predict(config, phase)),
            reconstruct_trainable,
            build_dataset=lambda config, model: build_dataset(config, model.config.render))
