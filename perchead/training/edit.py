"""The ``edit`` task (paper §3.5): the editing model fine-tuned from a base checkpoint on label maps and style.

It builds :class:`~perchead.models.editor.PercHeadEditor` from the base checkpoint (``--init-from``; decoder,
Gaussian head and refiner copied, a fresh editing encoder) and trains it on the input view's label map
(``sample["labels"]``) plus one style token: the frozen style encoder's (``--style``) image embedding of
another view of the same subject. Targets, losses, phases and data are those of ``reconstruct``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from perchead.training.config import LossFn, Task, TrainConfig
from perchead.training.reconstruct import build_dataset, build_reconstruct_loss, reconstruct_trainable


_STYLE_ENCODERS: dict[str, nn.Module] = {}


def load_style_encoder(path: str | None) -> nn.Module:
    """The frozen style encoder of the ``edit`` task (cached per path, eval mode, no gradients)."""
    if not path:
        raise ValueError("--task edit needs --style <style encoder folder or id> "
                         "(perchead.models.style_encoder.StyleEncoder)")
    if path not in _STYLE_ENCODERS:
        from perchead.models.style_encoder import StyleEncoder

        encoder = StyleEncoder.from_pretrained(path)
        encoder.requires_grad_(False)
        _STYLE_ENCODERS[path] = encoder.eval()
    return _STYLE_ENCODERS[path]


def edit_model_config(config: TrainConfig):
    """The ``edit`` task's default model config: an EditConfig sized like the base checkpoint's task ViT,
    with the style encoder's embedding size."""
    from perchead.models.base import checkpoint_model_type, resolve_checkpoint
    from perchead.models.edit_encoder import EditConfig
    from perchead.models.editor import load_editor_config
    from perchead.models.perchead import load_config

    if not config.init_from:
        raise ValueError("--task edit needs --init-from <base PercHead checkpoint> (paper §3.5: decoder, Gaussian "
                         "head and refiner start from the base model)")
    config_path, _ = resolve_checkpoint(config.init_from)
    style_dim = int(load_style_encoder(config.style).embed_dim)
    if checkpoint_model_type(config_path) != "perchead":  # an editor checkpoint: continue fine-tuning it
        edit_config = load_editor_config(config_path)[1]
        if edit_config.style_dim != style_dim:
            raise ValueError(f"{config.init_from} expects {edit_config.style_dim}-d style embeddings, but the style "
                             f"encoder {config.style} gives {style_dim}-d ones")
        return edit_config
    return EditConfig.for_base(load_config(config_path), style_dim)


def build_edit_model(model_config, init_from: str | None = None) -> nn.Module:
    """The editing model: from a base checkpoint (``PercHeadEditor.from_base``) or an editor checkpoint.

    Args:
        model_config: an :class:`perchead.models.edit_encoder.EditConfig` (used with a base checkpoint; None
            when resuming).
        init_from: a base PercHead or PercHeadEditor checkpoint folder / repo id.
    """
    from perchead.models.base import checkpoint_model_type, resolve_checkpoint
    from perchead.models.edit_encoder import EditConfig
    from perchead.models.editor import PercHeadEditor
    from perchead.models.perchead import PercHead

    if not init_from:
        raise ValueError("--task edit needs --init-from <base PercHead checkpoint>")
    config_path, _ = resolve_checkpoint(init_from)
    if checkpoint_model_type(config_path) != "perchead":
        editor = PercHeadEditor.from_pretrained(init_from)
        if model_config is not None and model_config != editor.edit_config:
            raise ValueError(f"{init_from} is an editor with {editor.edit_config}, which differs from {model_config}")
        return editor
    if not isinstance(model_config, EditConfig):
        raise ValueError("the edit task builds from a base checkpoint with an EditConfig, "
                         f"got {type(model_config).__name__}")
    return PercHeadEditor.from_base(PercHead.from_pretrained(init_from), model_config)


def style_reference_views(batch: dict[str, Any]) -> Tensor:
    """One random target view per subject: the style reference image (another view of the same subject).
    ``[B, 3, H, W]``"""
    images = batch["target_images"]  # [B, V, 3, H, W]
    pick = torch.randint(images.shape[1], (images.shape[0],))  # [B]
    return images[torch.arange(images.shape[0]), pick.to(images.device)]  # [B, 3, H, W]


def build_edit_loss(config: TrainConfig, phase: int) -> LossFn:
    """The ``edit`` task's loss: reconstruction of the target views from (input label map, style embedding)."""
    if config.eval_every:
        raise ValueError("--eval-every renders reconstructions from images; set it to 0 for --task edit")
    style_encoder = load_style_encoder(config.style)

    def predict(model: nn.Module, batch: dict[str, Any]):
        labels = batch.get("labels")  # [B, H, W]
        if labels is None or not (labels > 0).flatten(1).any(dim=1).all():
            raise ValueError("the edit task needs the input view's label map (sample['labels'], classes 1..18 "
                             "somewhere in every sample): use a dataset with labels/, e.g. runs/synthetic128")
        device = labels.device
        style_encoder.to(device)
        with torch.no_grad():
            style = style_encoder.encode_image(style_reference_views(batch).float())  # [B, E]
        return model(labels, style.float())

    return build_reconstruct_loss(config, phase, predict)


TASK = Task(build_edit_model, build_edit_loss, reconstruct_trainable, model_config=edit_model_config,
            build_dataset=lambda config, model: build_dataset(config, model.config.render))
