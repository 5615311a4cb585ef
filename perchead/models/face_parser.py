"""Face parser (paper supplement §8): a transformers SegFormer that maps a photo to the 19-class segmentation
map the editing model takes as geometry input.

By Hub id, e.g. :data:`HUB_FACE_PARSER`, a CelebAMask-HQ SegFormer whose class names differ from ours in
three places and whose class order changed between revisions, so model classes are always remapped to
:data:`perchead.geometry.segmentation.CLASSES` by NAME (:func:`label_mapping`), never by index. Or from a
local folder (the offline default, ``weights_card/parser``): a small SegFormer (:func:`segformer_config`,
ours) trained on synthetic head renders by :mod:`perchead.training.parser`. Checkpoints are
``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json`` for the input size and
normalisation). A missing folder or an unreachable Hub id raises :class:`FileNotFoundError` saying what
to do; nothing hangs (set ``HF_HUB_OFFLINE=1`` offline).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.geometry.segmentation import BACKGROUND, CLASSES, NUM_CLASSES
from perchead.models.hub import hub_offline
from perchead.models.config import model_preset
from perchead.models.layers import IMAGENET_MEAN, IMAGENET_STD

HUB_FACE_PARSER = "jonathandinu/face-parsing"  # 19-class CelebAMask-HQ SegFormer (MiT-b5) on the Hub
DEFAULT_PARSER_FOLDER = "weights_card/parser"  # the bundled offline parser (perchead.training.parser)
LABEL_ALIASES = {"eye_g": "eyeglasses", "ear_r": "earring", "neck_l": "necklace",
                 "bg": "background"}  # CelebAMask-HQ file names -> our class names


# ------------------------------------------------------------------------------------------- configuration
def segformer_config(preset: str = "demo", image_size: int = 128):
    """The SegFormer architecture of the project's own face parser (all values ours).

    Args:
        preset: ``"demo"`` or ``"tiny"`` (:data:`perchead.models.config.MODEL_PRESETS`).
        image_size: input side in pixels the parser runs at (stored in the config).

    Returns:
        a ``transformers.SegformerConfig`` with ``num_labels=19`` and our class names.
    """
    from transformers import SegformerConfig

    values = model_preset("parser", preset)
    return SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,  # four stages at strides 4, 8, 16, 32 (SegFormer's hierarchy)
        sr_ratios=[8, 4, 2, 1],  # spatial reduction of attention keys per stage (SegFormer default)
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        mlp_ratios=[4, 4, 4, 4],
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.1,
        drop_path_rate=0.0,
        image_size=image_size,
        num_labels=NUM_CLASSES,
        id2label={i: n for i, n in enumerate(CLASSES)},
        label2id={n: i for i, n in enumerate(CLASSES)},
        semantic_loss_ignore_index=255,
        **values,
    )


def label_mapping(id2label: dict) -> Tensor:
    """Maps a checkpoint's class ids onto :data:`perchead.geometry.segmentation.CLASSES` by class NAME.

    Names are lower-cased, a ``.png`` suffix is dropped and CelebAMask-HQ aliases are resolved
    (``eye_g`` -> eyeglasses, ``ear_r`` -> earring, ``neck_l`` -> necklace).

    Args:
        id2label: ``{model id: name}`` (keys int or str), e.g. ``model.config.id2label``.

    Returns:
        long tensor ``[num_model_labels]``: our class id of every model class.
    """
    n = len(id2label)
    lut = torch.full((n,), -1, dtype=torch.long)
    unknown = []
    for key, name in id2label.items():
        i = int(key)
        if not 0 <= i < n:
            raise ValueError(f"id2label ids must be 0..{n - 1}, got {i}")
        clean = str(name).strip().lower().removesuffix(".png").replace(" ", "_").replace("-", "_")
        clean = LABEL_ALIASES.get(clean, clean)
        if clean not in CLASSES:
            unknown.append(name)
        else:
            lut[i] = CLASSES.index(clean)
    if unknown:
        raise ValueError(f"face-parser classes {unknown} have no counterpart among the 19 classes {CLASSES}")
    return lut


# ------------------------------------------------------------------------------------------------ parser
def _image_batch(image: Any) -> tuple[Tensor, bool]:
    """Any photo format -> float [B, 3, H, W] in [0, 1] and whether the input was a single image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        image = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)  # [3, H, W]
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"a numpy photo must be [H, W, 3|4], got shape {image.shape}")
        image = torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)  # [3, H, W]
    if not isinstance(image, Tensor):
        raise ValueError(f"unsupported photo type {type(image).__name__}; expected PIL, numpy or torch")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    if not image.is_floating_point():
        raise ValueError(f"photo dtype must be uint8 or float, got {image.dtype}")
    single = image.ndim == 3
    x = image[None] if single else image  # [B, C, H, W]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"photo must be [3, H, W] or [B, 3, H, W] RGB, got shape {tuple(image.shape)}")
    return x.float(), single


class FaceParser(nn.Module):
    """A SegFormer face parser that returns maps in the project's 19-class order.

    Args:
        model: a ``SegformerForSemanticSegmentation`` (any class order with CelebAMask-HQ names).
        image_size: ``(H, W)`` the model runs at; photos are resized to it and the logits back.
        mean, std: input normalisation (per channel, on [0, 1] images).
    """

    def __init__(self, model, image_size: tuple[int, int] = (512, 512), mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.model = model.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("lut", label_mapping(model.config.id2label), persistent=False)  # [L] model id → ours
        self.eval()

    @classmethod
    def from_pretrained(cls, id_or_folder: str | os.PathLike = DEFAULT_PARSER_FOLDER, revision: str | None = None,
                        device: str | torch.device = "cpu") -> "FaceParser":
        """Loads a parser from a local folder or a Hub repo id (safetensors only).

        Args:
            id_or_folder: a folder with ``config.json`` + ``model.safetensors``, or a Hub id such as
                :data:`HUB_FACE_PARSER`.
            revision: Hub revision (branch, tag or commit).
            device: where the model runs.

        Returns:
            the parser.

        Raises:
            FileNotFoundError: no such folder and the Hub id cannot be loaded (offline, unknown repo).
        """
        from transformers import SegformerForSemanticSegmentation

        path = Path(id_or_folder)
        local = path.is_dir()
        looks_like_path = local or str(id_or_folder).startswith((".", "/", "~")) or str(id_or_folder).count("/") > 1
        if looks_like_path and not local:
            raise FileNotFoundError(f"face-parser folder {str(id_or_folder)!r} does not exist; train one with "
                                    f"`python -m perchead.training.train --task parser --output {id_or_folder}` "
                                    f"or pass a Hub id such as {HUB_FACE_PARSER!r}")
        try:
            model = SegformerForSemanticSegmentation.from_pretrained(str(id_or_folder), revision=revision,
                                                                     use_safetensors=True)
        except (OSError, ValueError) as error:
            offline = hub_offline()
            raise FileNotFoundError(
                f"cannot load the face parser {str(id_or_folder)!r}"
                + (" (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline and not local else "")
                + f": {error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}. "
                f"Offline, use the bundled parser folder {DEFAULT_PARSER_FOLDER!r} "
                "(reproduce it with `python -m perchead.training.train --task parser`)") from error
        size, mean, std = cls._preprocessing(str(id_or_folder), revision, model.config)
        return cls(model.to(device), size, mean, std)

    @staticmethod
    def _preprocessing(id_or_folder: str, revision: str | None, config) -> tuple[tuple[int, int], Any, Any]:
        """Input size and normalisation from ``preprocessor_config.json``; SegFormer defaults without one."""
        try:
            from transformers import SegformerImageProcessor

            proc = SegformerImageProcessor.from_pretrained(id_or_folder, revision=revision)
            size = proc.size
            hw = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
            return hw, proc.image_mean, proc.image_std
        except (OSError, ValueError, KeyError):
            side = int(getattr(config, "image_size", 512) or 512)
            return (side, side), IMAGENET_MEAN, IMAGENET_STD

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Writes ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` to ``folder``."""
        from transformers import SegformerImageProcessor

        self.model.save_pretrained(folder)  # safetensors
        SegformerImageProcessor(size={"height": self.image_size[0], "width": self.image_size[1]},
                                image_mean=self.mean.flatten().tolist(), image_std=self.std.flatten().tolist(),
                                do_reduce_labels=False).save_pretrained(folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, images: Tensor) -> Tensor:
        """Class scores in OUR class order at the model's resolution.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1].

        Returns:
            ``[B, 19, H/4, W/4]`` of the model's input size; classes the model lacks get -inf.
        """
        x = F.interpolate(images.to(self.device), size=self.image_size, mode="bilinear", align_corners=False,
                          antialias=True)  # [B, 3, h, w]
        raw = self.raw_logits(x)  # [B, L, h/4, w/4]
        out = torch.full((raw.shape[0], NUM_CLASSES, *raw.shape[2:]), float("-inf"), device=raw.device)
        out[:, self.lut.to(raw.device)] = raw  # model order -> ours
        return out  # [B, 19, h/4, w/4]

    def raw_logits(self, images: Tensor) -> Tensor:
        """The SegFormer's own scores (its class order) of images already at its input size.

        Args:
            images: ``[B, 3, h, w]`` float in [0, 1].

        Returns:
            ``[B, L, h/4, w/4]``.
        """
        x = (images.to(self.device) - self.mean.to(self.device)) / self.std.to(self.device)
        return self.model(pixel_values=x).logits

    forward = logits

    @torch.no_grad()
    def parse(self, image: Any, mask: Tensor | None = None) -> Tensor:
        """Parses a photo into a 19-class label map at the photo's own resolution.

        Args:
            image: PIL image, uint8 ``[H, W, 3]`` array, or a tensor ``[3, H, W]`` / ``[B, 3, H, W]``
                (float in [0, 1] or uint8).
            mask: optional foreground mask ``[1, H, W]`` / ``[B, 1, H, W]`` (or ``[H, W]``); pixels below 0.5
                become background.

        Returns:
            long ``[H, W]`` (or ``[B, H, W]``) class ids in 0..18.
        """
        x, single = _image_batch(image)  # [B, 3, H, W]
        h, w = x.shape[-2:]
        logits = self.logits(x)  # [B, 19, h', w']
        logits = F.interpolate(logits.nan_to_num(neginf=-1e4), size=(h, w), mode="bilinear", align_corners=False)
        labels = logits.argmax(1).cpu()  # [B, H, W]
        if mask is not None:
            m = torch.as_tensor(mask).float().cpu()
            m = m.reshape(-1, 1, *m.shape[-2:])  # [B, 1, h, w]
            if m.shape[-2:] != (h, w):
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            labels = torch.where(m[:, 0] >= 0.5, labels, torch.full_like(labels, BACKGROUND))
        return labels[0] if single else labels
