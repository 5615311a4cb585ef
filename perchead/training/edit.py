"""The ``edit`` task (paper §3.5): the editing model fine-tuned from a base checkpoint on label maps and style.

It builds :class:`~perchead.models.editor.PercHeadEditor` from the base checkpoint (``--init-from``; decoder,
Gaussian head and refiner copied, a fresh editing encoder) and trains it on the input view's label map
(``sample["labels"]``) plus one style token from the frozen style encoder (``--style``): the image embedding
of another view of the same subject (as in the paper). Two options (``OPTIONS``, off by default) change the
style input: ``text_fraction`` styles that fraction of samples by the TEXT embedding of a prompt made from
the subject's caption (the app's prompts are text, and text and image embeddings lie apart: the modality
gap); ``recolor_fraction`` repaints the hair of every view of that fraction of samples with a uniformly
drawn colour (:func:`perchead.data.augment.recolor_hair`), the caption following, so that rare colours are
as common as dark brown; ``style_color`` gives the editor the gated style → colour path
(:class:`~perchead.models.edit_encoder.StyleColor`), also when continuing from an editor trained without
it. Targets, losses, phases and data are those of ``reconstruct``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from perchead.training.config import LossFn, Task, TrainConfig, process_seed, task_options
from perchead.training.reconstruct import build_dataset, build_reconstruct_loss, reconstruct_trainable


_STYLE_ENCODERS: dict[str, nn.Module] = {}
OPTIONS = {  # --options of the edit task (ours)
    "text_fraction": 0.0,  # samples styled by a caption prompt's text embedding (the rest: a reference view's image)
    "recolor_fraction": 0.0,  # samples whose hair is repainted with a uniformly drawn hair colour
    "style_color": False,  # add the gated style → colour path (EditConfig.style_color) to the editor
}
FRACTIONS = ("text_fraction", "recolor_fraction")


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
    style_color = task_options(config, OPTIONS)["style_color"]
    if not isinstance(style_color, bool):
        raise ValueError(f"--options style_color must be true or false, got {style_color!r}")
    if checkpoint_model_type(config_path) != "perchead":  # an editor checkpoint: continue fine-tuning it
        edit_config = load_editor_config(config_path)[1]
        if edit_config.style_dim != style_dim:
            raise ValueError(f"{config.init_from} expects {edit_config.style_dim}-d style embeddings, but the style "
                             f"encoder {config.style} gives {style_dim}-d ones")
        return dataclasses.replace(edit_config, style_color=True) if style_color else edit_config
    return EditConfig.for_base(load_config(config_path), style_dim, style_color=style_color)


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
            if model_config == dataclasses.replace(editor.edit_config, style_color=True):
                return editor.with_style_color()
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


def caption_hair_color(caption: str) -> str | None:
    """The hair colour a synthetic caption states (a ``HAIR_COLORS`` key), or None (bald, no colour)."""
    from perchead.training.style import caption_atoms

    return dict(caption_atoms(caption)).get("hair_color")


def replace_hair_color(caption: str, new: str) -> str:
    """The caption with its hair colour word replaced (``"long red hair, glasses"`` → ``"long blue hair, glasses"``).

    Raises:
        ValueError: if the caption states no hair colour or ``new`` is not a ``HAIR_COLORS`` key.
    """
    from perchead.data.synthetic import HAIR_COLORS

    if new not in HAIR_COLORS:
        raise ValueError(f"unknown hair colour {new!r}; choose from {sorted(HAIR_COLORS)}")
    old = caption_hair_color(caption)
    if old is None:
        raise ValueError(f"the caption {caption!r} states no hair colour")
    parts = [p.strip() for p in caption.split(",")]
    for i, part in enumerate(parts):
        if "hair" in part or part == old:
            parts[i] = re.sub(rf"(^|\s){re.escape(old)}(\s|$)", rf"\g<1>{new}\g<2>", part, count=1)
            break
    return ", ".join(parts)


def style_prompt(caption: str, rng: np.random.Generator) -> str:
    """A prompt a user might type for a subject: its hair phrase alone (half the time), else a random
    subset of the caption's phrases (:func:`perchead.training.style.augment_caption`)."""
    from perchead.training.style import _hair_variants, augment_caption

    hair = [p.strip() for p in caption.split(",") if "hair" in p or p.strip() == "bald"]
    if hair and rng.random() < 0.5:
        variants = _hair_variants(hair[0]) if hair[0] != "bald" else ["bald"]
        return str(rng.choice(variants))
    return augment_caption(caption, rng)


def recolor_batch(batch: dict[str, Any], fraction: float, generator: torch.Generator) -> dict[str, Any]:
    """Repaints the hair of ``fraction`` of the samples (all target views) with a uniformly drawn hair colour.

    Samples without a stated hair colour (bald) or without target labels are left alone.

    Returns:
        A new batch dict with ``target_images`` and ``caption`` replaced.
    """
    from perchead.data.augment import recolor_hair
    from perchead.data.synthetic import HAIR_COLORS

    names = sorted(HAIR_COLORS)
    captions = list(batch["caption"])
    images = batch["target_images"]  # [B, V, 3, H, W]
    old = torch.zeros(len(captions), 3)  # [B, 3]
    new = torch.zeros(len(captions), 3)  # [B, 3]
    for b, caption in enumerate(captions):
        colour = caption_hair_color(caption)
        if colour is None or float(torch.rand(1, generator=generator)) >= fraction:
            old[b] = new[b] = 1.0
            continue
        pick = names[int(torch.randint(len(names), (1,), generator=generator))]
        old[b], new[b] = torch.tensor(HAIR_COLORS[colour]), torch.tensor(HAIR_COLORS[pick])
        captions[b] = replace_hair_color(caption, pick)
    labels = batch["target_labels"].to(images.device)  # [B, V, H, W]
    return {**batch, "target_images": recolor_hair(images, labels, old, new), "caption": captions}


def build_edit_loss(config: TrainConfig, phase: int) -> LossFn:
    """The ``edit`` task's loss: reconstruction of the target views from (input label map, style embedding)."""
    if config.eval_every:
        raise ValueError("--eval-every renders reconstructions from images; set it to 0 for --task edit")
    style_encoder = load_style_encoder(config.style)
    options = task_options(config, OPTIONS)
    for key in FRACTIONS:
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"--options {key} must be a fraction in [0, 1], got {value}")
    generator = torch.Generator().manual_seed(process_seed(config.seed) + 7919 * phase)
    rng = np.random.default_rng([process_seed(config.seed), phase])

    def predict(model: nn.Module, batch: dict[str, Any]):
        labels = batch.get("labels")  # [B, H, W]
        if labels is None or not (labels > 0).flatten(1).any(dim=1).all():
            raise ValueError("the edit task needs the input view's label map (sample['labels'], classes 1..18 "
                             "somewhere in every sample): use a dataset with labels/, e.g. runs/synthetic128")
        if options["recolor_fraction"] > 0 and "caption" in batch and "target_labels" in batch:
            batch.update(recolor_batch(batch, options["recolor_fraction"], generator))  # the loss reads these targets
        device = labels.device
        style_encoder.to(device)
        with torch.no_grad():
            style = style_encoder.encode_image(style_reference_views(batch).float())  # [B, E]
            captions = list(batch.get("caption", []))
            use_text = [b for b, c in enumerate(captions) if c and rng.random() < options["text_fraction"]]
            if use_text:
                style[use_text] = style_encoder.encode_text([style_prompt(captions[b], rng) for b in use_text]).to(style)
        return model(labels, style.float())

    return build_reconstruct_loss(config, phase, predict)


TASK = Task(build_edit_model, build_edit_loss, reconstruct_trainable, model_config=edit_model_config,
            build_dataset=lambda config, model: build_dataset(config, model.config.render))
