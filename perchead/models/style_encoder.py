"""Style encoder (paper §3.5, supplement §8): an open_clip CLIP that turns a reference image or a text prompt
into one style embedding, the editing model's global style token.

The paper injects a frozen CLIP image embedding at training time and swaps in the CLIP *text* embedding
at inference, zero-shot. Two sources share ONE code path (``open_clip.model.CLIP``, its BPE tokenizer, its
``open_clip_config.json`` folder format): the offline default bundled in ``weights_card/style``, a small
CLIP (:func:`style_config`, all sizes ours) trained on synthetic renders and their attribute captions by
:mod:`perchead.training.style`; or a real CLIP by open_clip name and pretrained tag (``"ViT-B-32:openai"``)
or ``"hf-hub:laion/..."`` id. A saved folder is open_clip's ``local-dir:`` layout (``open_clip_config.json``
+ ``model.safetensors``, float16 by default), so ``open_clip.create_model("local-dir:weights_card/style")``
loads it too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.models.base import WEIGHTS_NAME
from perchead.models.hub import hub_offline
from perchead.models.config import model_preset

DEFAULT_STYLE_FOLDER = "weights_card/style"  # the bundled offline style model (perchead.training.style)
STYLE_CONFIG_NAME = "open_clip_config.json"  # open_clip's local-dir config file
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP image normalisation (open_clip.constants)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ------------------------------------------------------------------------------------------- configuration
@dataclass
class StyleConfig:
    """Architecture of the project's own small CLIP (every value ours; the paper uses a pretrained CLIP).

    The text tower's token table has one row per BPE token of CLIP's vocabulary (49,408), which dominates
    the size: ``text_width`` 64 keeps the float16 checkpoint under ~10 MB.
    """

    embed_dim: int = 128  # joint image/text embedding size (the style vector E)
    image_size: int = 64  # input side in pixels (renders are resized to it; hair, skin, clothes stay legible)
    patch_size: int = 8  # ViT patch side: 64 / 8 = 8 x 8 tokens
    vision_width: int = 128  # ViT token width
    vision_layers: int = 4  # ViT depth
    vision_head_width: int = 32  # channels per attention head (128 / 32 = 4 heads)
    context_length: int = 32  # text tokens incl. start/end (captions are at most ~28)
    text_width: int = 64  # text transformer width = token-embedding size
    text_heads: int = 4  # text attention heads
    text_layers: int = 4  # text transformer depth

    def model_cfg(self) -> dict:
        """The open_clip ``model_cfg`` dict (``CLIP(**model_cfg)``, also stored in ``open_clip_config.json``)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size, "width": self.vision_width,
                           "layers": self.vision_layers, "head_width": self.vision_head_width},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }


def style_config(preset: str = "demo") -> StyleConfig:
    """The style model of a preset of :data:`perchead.models.config.MODEL_PRESETS` (``"demo"`` or ``"tiny"``)."""
    return StyleConfig(**model_preset("style", preset))


def _preprocess_cfg(image_size: int) -> dict:
    """open_clip ``preprocess_cfg`` of our own models (CLIP normalisation; renders are square)."""
    return {"size": image_size, "mode": "RGB", "mean": CLIP_MEAN, "std": CLIP_STD, "interpolation": "bilinear",
            "resize_mode": "shortest", "fill_color": 0}


# ------------------------------------------------------------------------------------------------ encoder
class StyleEncoder(nn.Module):
    """An open_clip CLIP with image preprocessing in torch and its tokenizer: images / prompts -> style vectors.

    Args:
        model: an ``open_clip.model.CLIP`` (or ``CustomTextCLIP``) whose ``visual.preprocess_cfg`` is set.
        tokenizer: the open_clip tokenizer of that model (callable ``list[str] -> [B, L]`` long).
        model_cfg: the open_clip ``model_cfg`` dict (saved with the weights); None for models from a Hub id.
        name: where the model came from (for messages).
    """

    def __init__(self, model: nn.Module, tokenizer, model_cfg: dict | None = None, name: str = "style"):
        super().__init__()
        cfg = getattr(model.visual, "preprocess_cfg", None)
        if cfg is None:
            raise ValueError("the open_clip model has no visual.preprocess_cfg; build it with open_clip's factory "
                             "or StyleEncoder.from_config")
        self.model = model
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg
        self.name = name
        size = cfg["size"]
        self.image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.interpolation = "bilinear" if cfg.get("interpolation", "bicubic") == "bilinear" else "bicubic"
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    # ----------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: StyleConfig | str = "demo") -> "StyleEncoder":
        """A randomly initialised project CLIP (for training or tests).

        Args:
            config: a :class:`StyleConfig` or a preset name for :func:`style_config`.

        Returns:
            the encoder (trainable).
        """
        import open_clip
        from open_clip.model import CLIP, set_model_preprocess_cfg

        if isinstance(config, str):
            config = style_config(config)
        model_cfg = config.model_cfg()
        model = CLIP(**model_cfg)
        set_model_preprocess_cfg(model, _preprocess_cfg(config.image_size))
        tokenizer = open_clip.SimpleTokenizer(context_length=config.context_length)
        return cls(model, tokenizer, model_cfg, name="untrained")

    @classmethod
    def from_pretrained(cls, id_or_folder: str | os.PathLike = DEFAULT_STYLE_FOLDER, pretrained: str | None = None,
                        device: str | torch.device = "cpu", frozen: bool = True) -> "StyleEncoder":
        """Loads a saved style model folder, or a real CLIP through open_clip.

        Args:
            id_or_folder: a folder written by :meth:`save_pretrained` (or any open_clip ``local-dir``
                folder); an open_clip model name with its pretrained tag as ``"ViT-B-32:openai"`` (or the
                tag in ``pretrained``); or a Hub id ``"hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"``.
            pretrained: pretrained tag for an open_clip model name (see ``open_clip.list_pretrained()``).
            device: where the model runs.
            frozen: put the model in eval mode with ``requires_grad=False`` (its use in the editing model).

        Returns:
            the encoder.

        Raises:
            FileNotFoundError: a folder that does not exist, or weights that cannot be loaded (offline, not in
                the cache, unknown Hub repo); the message names the id.
            ValueError: an unknown open_clip model name, or a model name without a pretrained tag.
        """
        import open_clip

        name = str(id_or_folder)
        path = Path(name).expanduser()
        if path.is_dir():
            if not (path / STYLE_CONFIG_NAME).is_file():
                raise FileNotFoundError(f"style model folder {name!r} has no {STYLE_CONFIG_NAME}; write one with "
                                        f"`python -m perchead.training.train --task style --output {name}`")
            model_id, tag = f"local-dir:{path}", None
        elif name.startswith("hf-hub:"):
            model_id, tag = name, None
        elif name.startswith((".", "/", "~")) or name.count("/") > 1 or (
                name.count("/") == 1 and Path(name.split("/")[0]).is_dir()):  # e.g. a missing "weights_card/style"
            raise FileNotFoundError(f"style model folder {name!r} does not exist; train one with "
                                    f"`python -m perchead.training.train --task style --output {name}` or pass an "
                                    f"open_clip model such as 'ViT-B-32:openai' or "
                                    f"'hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K'")
        elif name.count("/") == 1:  # "org/repo" without the schema: an open_clip Hub repo
            model_id, tag = f"hf-hub:{name}", None
        else:
            model_name, _, tag_in_name = name.partition(":")
            tag = pretrained or tag_in_name or None
            if model_name not in open_clip.list_models():
                raise ValueError(f"{name!r} is neither a style model folder, an 'hf-hub:' id nor an open_clip model "
                                 f"name (see open_clip.list_models())")
            if tag is None:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                raise ValueError(f"open_clip model {model_name!r} needs a pretrained tag (without one its weights "
                                 f"would be random), e.g. '{model_name}:{tags[0] if tags else 'TAG'}'; tags: {tags}")
            model_id = model_name
        try:
            model = open_clip.create_model(model_id, pretrained=tag, device=device)
            tokenizer = open_clip.get_tokenizer(model_id)
        except (OSError, RuntimeError, ValueError) as error:
            offline = hub_offline()
            first = str(error).splitlines()[0] if str(error) else ""
            raise FileNotFoundError(
                f"cannot load the CLIP style model {name!r}" + (f" (pretrained {tag!r})" if tag else "")
                + (" (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline and not path.is_dir() else "")
                + f": {error.__class__.__name__}: {first[:300]}. Offline, use the bundled style folder "
                f"{DEFAULT_STYLE_FOLDER!r} (reproduce it with "
                "`python -m perchead.training.train --task style`)") from error
        model_cfg = None
        if path.is_dir():
            model_cfg = json.loads((path / STYLE_CONFIG_NAME).read_text())["model_cfg"]
        encoder = cls(model, tokenizer, model_cfg, name=name).to(device)
        return encoder.freeze() if frozen else encoder.eval()

    def freeze(self) -> "StyleEncoder":
        """Eval mode and ``requires_grad=False`` on every weight (CLIP is frozen in the paper). Returns self."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def save_pretrained(self, folder: str | os.PathLike, dtype: torch.dtype = torch.float16,
                        extra: dict | None = None) -> None:
        """Writes ``open_clip_config.json`` + ``model.safetensors`` (open_clip's ``local-dir`` layout).

        Args:
            folder: output folder (created).
            dtype: storage dtype of floating-point weights (float16 halves the size; loading casts back).
            extra: optional JSON-able dict stored under ``"perchead"`` in the config (e.g. training facts).
        """
        from safetensors.torch import save_file

        if self.model_cfg is None:
            raise ValueError(f"{self.name!r} came from open_clip by id; it has no model_cfg to save (use the id)")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in self.model.state_dict().items()}
        save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
        pp = dict(self.model.visual.preprocess_cfg)
        pp["mean"], pp["std"] = list(pp["mean"]), list(pp["std"])
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": pp}
        if extra:
            config["perchead"] = extra
        (out / STYLE_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    # ----------------------------------------------------------------------------------------- inference
    @property
    def embed_dim(self) -> int:
        """Size E of the style embedding."""
        proj = self.model.text_projection
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if proj is not None:
            return proj.shape[1]
        return int(self.model_cfg["embed_dim"])  # pragma: no cover - models without a text projection

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images: Tensor) -> Tensor:
        """Resizes (shortest side, centre crop) and normalises images as CLIP expects.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1] (over white, like every image in the project).

        Returns:
            ``[B, 3, S, S]`` normalised model input.
        """
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
        x = images.to(self.mean.device, torch.float32)
        h, w = x.shape[-2:]
        th, tw = self.image_size
        scale = max(th / h, tw / w)
        rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
        if (rh, rw) != (h, w):
            x = F.interpolate(x, size=(rh, rw), mode=self.interpolation, align_corners=False, antialias=True)
        top, left = (rh - th) // 2, (rw - tw) // 2
        x = x[:, :, top:top + th, left:left + tw].clamp(0.0, 1.0)  # [B, 3, S, S]
        return (x - self.mean) / self.std

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """BPE token ids ``[B, L]`` of prompts (open_clip tokenizer; lower-cased, truncated to the context)."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string (wrap it: [text])")
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        return self.tokenizer(texts).to(self.device)  # [B, L]

    def encode_image(self, images: Tensor) -> Tensor:
        """Style embeddings of images.

        Args:
            images: ``[B, 3, H, W]`` float in [0, 1], any size (resized to the model's input).

        Returns:
            ``[B, E]`` l2-normalised.
        """
        return F.normalize(self.model.encode_image(self.preprocess(images)).float(), dim=-1)  # [B, E]

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Style embeddings of text prompts (e.g. ``["long red hair", "bald with glasses"]``).

        Returns:
            ``[B, E]`` l2-normalised.
        """
        return F.normalize(self.model.encode_text(self.tokenize(texts)).float(), dim=-1)  # [B, E]

    def forward(self, images: Tensor, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Both embeddings and the logit scale (training): ``([B, E], [T, E], scalar)``."""
        return self.encode_image(images), self.encode_text(texts), self.model.logit_scale.exp()
