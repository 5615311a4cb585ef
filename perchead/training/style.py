"""Training of the offline style encoder (paper §3.5 uses a pretrained CLIP; ours is small and synthetic).

Image-caption pairs come from a pre-rendered multi-view folder (``<subject>/images/*.png`` +
``caption.txt``) or are rendered on the fly from :func:`perchead.data.synthetic.make_head`. Captions are
augmented into random subsets, orders and partial phrases of their attributes (users type short prompts);
images get random crops and horizontal flips but no colour jitter (it would break colour attributes).
The loss is CLIP's symmetric InfoNCE with a learnable logit scale and multi-positive targets: a caption is
a positive for every image whose attributes entail it (``"blonde"`` matches every blonde head).

CLI: ``python -m perchead.training.train --task style --data runs/synthetic128 --output runs/style``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perchead.models.base import WEIGHTS_NAME
from perchead.models.style_encoder import StyleConfig, StyleEncoder, style_config
from perchead.training.config import Task, TrainConfig, all_parameters, process_seed, task_options

HAIR_COLOR_WORDS = ("black", "dark brown", "brown", "blonde", "red", "grey", "white", "blue", "pink", "green",
                    "purple")  # every hair colour of perchead.data.synthetic.HAIR_COLORS
HAIR_STYLE_PHRASES = {"buzz": "buzz-cut hair", "short": "short hair", "fringe": "hair with a fringe",
                      "long": "long hair", "bun": "hair in a bun", "curly": "curly hair"}  # colour-free phrases
PROMPT_TEMPLATES = ("{}", "{}", "{}", "{}", "a person with {}", "a head with {}", "a rendering of a head with {}")


# ---------------------------------------------------------------------------------------------- captions
def caption_atoms(text: str) -> frozenset:
    """The attribute facts a (possibly partial) caption states, as ``(key, value)`` pairs.

    Understands the phrases of :func:`perchead.data.synthetic._caption` and of :func:`augment_caption`:
    ``"long red hair"`` -> hair style long + hair colour red; ``"blonde"`` -> hair colour blonde; ``"bald"``;
    ``"dark skin"``; ``"navy striped shirt"``; flags (``"glasses"``, ``"beard"``, ``"smiling"`` ...).
    Prompt templates ("a person with ...") and joiners (", ", " and ", " with ") are ignored.

    Args:
        text: a caption or an augmented prompt.

    Returns:
        frozenset of ``(key, value)`` string pairs.
    """
    t = text.lower().strip()
    for template in sorted(PROMPT_TEMPLATES, key=len, reverse=True):
        prefix = template.replace("{}", "")
        if prefix and t.startswith(prefix):
            t = t[len(prefix):]
            break
    atoms = set()
    for part in re.split(r",\s*| and (?!a )| with (?!a fringe)", t):
        part = part.strip()
        if not part:
            continue
        if part == "bald":
            atoms.add(("hair_style", "bald"))
        elif part.endswith(" skin"):
            atoms.add(("skin", part[: -len(" skin")]))
        elif part.endswith(("shirt", "turtleneck")):
            atoms.add(("cloth", part))
        elif "hair" in part or part in HAIR_COLOR_WORDS:
            colour = next((c for c in sorted(HAIR_COLOR_WORDS, key=len, reverse=True)
                           if re.search(rf"(^|\s){c}(\s|$)", part)), None)
            if colour:
                atoms.add(("hair_color", colour))
            for style, keyword in (("buzz", "buzz-cut"), ("short", "short"), ("fringe", "fringe"), ("long", "long"),
                                   ("bun", "bun"), ("curly", "curly")):
                if keyword in part:
                    atoms.add(("hair_style", style))
        else:
            atoms.add(("flag", part))
    return frozenset(atoms)


def _hair_variants(part: str) -> list[str]:
    """Shorter phrases a user might type for a hair phrase of a caption (``"long red hair"`` -> ``"red hair"``...)."""
    atoms = dict(caption_atoms(part))
    out = [part]
    colour, style = atoms.get("hair_color"), atoms.get("hair_style")
    if colour:
        out += [f"{colour} hair", colour]
    if style in HAIR_STYLE_PHRASES:
        out.append(HAIR_STYLE_PHRASES[style])
    return out


def augment_caption(caption: str, rng: np.random.Generator, p_full: float = 0.25) -> str:
    """A random prompt that the caption entails: a subset of its attributes, shuffled, maybe shortened.

    Args:
        caption: a full attribute caption (comma-separated phrases).
        rng: random generator.
        p_full: probability of keeping every phrase (still shuffled).

    Returns:
        e.g. ``"glasses, red hair"``, ``"blonde"``, ``"a person with curly hair and a beard"``.
    """
    parts = [p.strip() for p in caption.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"empty caption {caption!r}")
    if rng.random() < p_full:
        chosen = list(rng.permutation(len(parts)))
    else:
        k = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
        chosen = list(rng.choice(len(parts), size=min(k, len(parts)), replace=False))
    phrases = []
    for i in chosen:
        part = parts[i]
        if "hair" in part and rng.random() < 0.5:
            variants = _hair_variants(part)
            if len(chosen) > 1:  # a bare colour word ("blonde") only as a whole prompt, never beside other phrases
                variants = [v for v in variants if v not in HAIR_COLOR_WORDS]
            part = variants[int(rng.integers(len(variants)))]
        phrases.append(part)
    if len(phrases) == 1 and phrases[0] in HAIR_COLOR_WORDS:
        return phrases[0]  # "blonde"
    hair_first = "hair" in phrases[0] or phrases[0] == "bald"
    joiner = str(rng.choice([", ", ", ", " and "] + ([" with "] if hair_first else []))) if len(phrases) > 1 else ", "
    text = joiner.join(phrases) if joiner != " with " else phrases[0] + " with " + " and ".join(phrases[1:])
    template = PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))]
    return template.format(text)


def entailment(image_atoms: Sequence[frozenset], text_atoms: Sequence[frozenset]) -> Tensor:
    """``[I, T]`` bool: image i's attributes entail text j (text atoms are a subset of image atoms)."""
    return torch.tensor([[t <= a for t in text_atoms] for a in image_atoms], dtype=torch.bool)


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE (CLIP) with multi-positive targets.

    Args:
        image_emb: ``[B, E]`` l2-normalised image embeddings.
        text_emb: ``[B, E]`` l2-normalised text embeddings; text i was made from image i.
        logit_scale: scalar temperature multiplier (``exp`` of the learnable log scale).
        positives: ``[B, B]`` bool, ``positives[i, j]`` = text j describes image i; the diagonal must be True.

    Returns:
        scalar loss: the mean of image->text and text->image cross-entropies against targets spread
        uniformly over the positives (exactly CLIP's loss when ``positives`` is the identity).
    """
    if not bool(positives.diagonal().all()):
        raise ValueError("positives must include every matching pair (its diagonal must be all True)")
    logits = logit_scale * image_emb @ text_emb.T  # [B, B] image x text
    pos = positives.to(logits.dtype)
    loss_i = -(F.log_softmax(logits, dim=1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
    loss_t = -(F.log_softmax(logits, dim=0) * pos / pos.sum(0, keepdim=True)).sum(0).mean()
    return 0.5 * (loss_i + loss_t)


# -------------------------------------------------------------------------------------------------- data
@dataclass
class StylePairs:
    """Image-caption training pairs: every view of a subject shares the subject's caption."""

    images: Tensor  # [N, 3, S, S] uint8 over white
    subject: Tensor  # [N] long index into captions
    captions: list[str]  # one full attribute caption per subject
    attributes: list[dict] | None = None  # per subject, when rendered from make_head (hair_color, hair_style...)

    def __len__(self) -> int:
        return self.images.shape[0]


def load_style_pairs(folder: str | os.PathLike, subjects: int | None = None,
                     image_size: int | None = None) -> StylePairs:
    """Reads a pre-rendered multi-view folder (``<subject>/images/*.png`` + ``caption.txt``) into memory.

    Args:
        folder: root with one sub-folder per subject (e.g. ``runs/synthetic128``).
        subjects: use only the first this many subjects (sorted by name); None = all.
        image_size: resize the stored images to this side (None keeps them).

    Returns:
        :class:`StylePairs` with every view of every subject that has a caption.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"style data folder {str(root)!r} does not exist")
    dirs = sorted((d for d in root.iterdir() if (d / "caption.txt").is_file() and (d / "images").is_dir()),
                  key=lambda d: [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", d.name)])
    if subjects is not None:
        dirs = dirs[:subjects]
    if not dirs:
        raise ValueError(f"{str(root)!r} has no subject folder with caption.txt and images/")
    images, subject, captions = [], [], []
    for i, d in enumerate(dirs):
        captions.append((d / "caption.txt").read_text().strip())
        for f in sorted((d / "images").glob("*.png")):
            im = Image.open(f).convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            images.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))  # [3, S, S]
            subject.append(i)
    return StylePairs(torch.stack(images), torch.tensor(subject), captions)


def render_style_pairs(seeds: Sequence[int], views_per_head: int, image_size: int = 128, seed: int = 0,
                       density: float = 1.0, views: Sequence[tuple[float, float]] | None = None) -> StylePairs:
    """Renders synthetic heads from several views with their captions and attributes.

    Views (ours): 60% near-frontal (azimuth ~ N(0, 45°)), 40% anywhere around the head; elevation in
    [-30°, 40°]; the model's input framing (orbit radius 0.7 m, 30° field of view).

    Args:
        seeds: head seeds (e.g. from ``perchead.data.synthetic.split_seeds("val")``).
        views_per_head: random views per head (ignored when ``views`` is given).
        image_size: square side in pixels.
        seed: seed of the view sampling.
        density: Gaussian budget multiplier of ``make_head``.
        views: fixed ``(azimuth, elevation)`` degrees used for every head instead of random ones.

    Returns:
        :class:`StylePairs` with ``attributes``.
    """
    from perchead.geometry.cameras import orbit_cameras
    from perchead.data.synthetic import make_head, render_head

    rng = np.random.default_rng(seed)
    images, subject, captions, attributes = [], [], [], []
    for i, s in enumerate(seeds):
        head = make_head(int(s), density=density)
        if views is None:
            frontal = rng.random(views_per_head) < 0.6
            az = np.where(frontal, np.clip(rng.normal(0.0, 45.0, views_per_head), -150, 150),
                          rng.uniform(-180.0, 180.0, views_per_head)).tolist()
            el = rng.uniform(-30.0, 40.0, views_per_head).tolist()
        else:
            az, el = [float(v[0]) for v in views], [float(v[1]) for v in views]
        cams = orbit_cameras(az, el, radius=0.7, fov_deg=30.0, size=image_size)
        rgb = render_head(head, cams)["rgb"]  # [V, 3, S, S]
        images.append((rgb * 255).round().to(torch.uint8))
        subject += [i] * rgb.shape[0]
        captions.append(head.caption)
        attributes.append(head.attributes)
    return StylePairs(torch.cat(images), torch.tensor(subject), captions, attributes)


def augment_images(images: Tensor, size: int, generator: torch.Generator, min_scale: float = 0.8) -> Tensor:
    """Random square crops (80-100% of the side, anywhere) resized to ``size``, and horizontal flips.

    No colour jitter: hair, skin and clothes colours are what the captions describe.

    Args:
        images: ``[B, 3, H, W]`` uint8 or float in [0, 1].
        size: output side.
        generator: torch random generator.
        min_scale: smallest crop side as a fraction of the image side.

    Returns:
        ``[B, 3, size, size]`` float in [0, 1].
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    b, _, h, w = x.shape
    side = (min_scale + (1 - min_scale) * torch.rand(b, generator=generator))  # [B] crop side / image side
    cx = side / 2 + (1 - side) * torch.rand(b, generator=generator)  # [B] crop centre in [0, 1]
    cy = side / 2 + (1 - side) * torch.rand(b, generator=generator)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)  # [B]
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = side * flip
    theta[:, 1, 1] = side
    theta[:, 0, 2] = cx * 2 - 1
    theta[:, 1, 2] = cy * 2 - 1
    if size < min(h, w) * float(side.min()):  # downsampling: pre-blur by resizing first to avoid aliasing
        x = F.interpolate(x, size=(round(size / min_scale),) * 2, mode="bilinear", antialias=True, align_corners=False)
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)  # [B, S, S, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_style(encoder: StyleEncoder, pairs: StylePairs, batch_size: int = 64) -> dict[str, float]:
    """Retrieval and attribute-probe accuracy on held-out heads.

    * text->image retrieval: for each view index, the full captions of all heads query the images of that
      view (a batch of ``min(batch_size, heads)`` heads); a hit is an image whose caption equals the query.
    * hair-colour probe: prompts ``"<colour> hair"`` for the 11 hair colours of the synthetic heads; each
      non-bald head image's nearest prompt must be its true hair colour.

    Args:
        encoder: the style encoder.
        pairs: from :func:`render_style_pairs` (needs ``attributes``), every head with the same views.
        batch_size: heads per retrieval batch.

    Returns:
        dict with ``text_to_image_top1``, ``text_to_image_top5``, ``hair_color_accuracy``,
        ``hair_color_chance`` (frequency of the most common colour) and ``n_images``.
    """
    if pairs.attributes is None:
        raise ValueError("evaluate_style needs pairs with attributes (use render_style_pairs)")
    was_training = encoder.training
    encoder.eval()
    n_heads = len(pairs.captions)
    views = len(pairs) // n_heads
    img = torch.cat([encoder.encode_image(pairs.images[i:i + 256].float() / 255.0)
                     for i in range(0, len(pairs), 256)])  # [N, E]
    img = img.view(n_heads, views, -1)  # [H, V, E] (render_style_pairs orders views within a head)
    txt = encoder.encode_text(pairs.captions)  # [H, E]
    top1, top5, count = 0.0, 0.0, 0
    for start in range(0, n_heads, batch_size):
        sl = slice(start, min(start + batch_size, n_heads))
        caps = pairs.captions[sl]
        same = torch.tensor([[a == b for b in caps] for a in caps])  # [b, b] identical captions
        for v in range(views):
            sim = txt[sl] @ img[sl, v].T  # [b, b] text x image
            rank = sim.argsort(dim=1, descending=True)  # [b, b]
            hits = torch.gather(same, 1, rank)  # [b, b] is the k-th retrieved image a match
            top1 += hits[:, 0].float().sum().item()
            top5 += hits[:, :5].any(1).float().sum().item()
            count += len(caps)
    colours = list(HAIR_COLOR_WORDS)
    prompts = encoder.encode_text([f"{c} hair" for c in colours])  # [K, E]
    truth = [colours.index(a["hair_color"]) if a["hair_style"] != "bald" else -1 for a in pairs.attributes]
    keep = [i for i, t in enumerate(truth) if t >= 0]
    pred = (img[keep] @ prompts.T).argmax(-1)  # [H', V]
    target = torch.tensor([truth[i] for i in keep])[:, None].expand_as(pred)
    counts = np.bincount([truth[i] for i in keep], minlength=len(colours))
    encoder.train(was_training)
    return {"text_to_image_top1": top1 / count, "text_to_image_top5": top5 / count,
            "hair_color_accuracy": (pred == target).float().mean().item(),
            "hair_color_chance": float(counts.max() / max(1, counts.sum())), "n_images": int(n_heads * views)}


# ---------------------------------------------------------------------------------------------- the task
CROP_MIN_SCALE = 0.8  # smallest random crop side during training, as a fraction of the image side (ours)
VAL_VIEWS = ((0.0, 0.0), (35.0, 10.0), (-35.0, 10.0), (120.0, 0.0))  # (azimuth, elevation) of the val renders
OPTIONS = {  # --options of the style task (ours)
    "n_heads": 256,  # synthetic train heads rendered up front when --data is "synthetic"
    "views_per_head": 8,  # random views per rendered head
    "density": 1.0,  # Gaussian budget multiplier of the rendered heads
}


class StyleDataset(torch.utils.data.Dataset):
    """Samples ``{"image": [3, S, S] uint8, "caption": str}`` of :class:`StylePairs`."""

    def __init__(self, pairs: StylePairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.pairs.images[i], "caption": self.pairs.captions[int(self.pairs.subject[i])]}


def build_style_model(model_config: StyleConfig | None, init_from: str | None = None) -> StyleEncoder:
    """A fresh project CLIP of ``model_config``, or a trainable one loaded from ``init_from``."""
    if init_from:
        return StyleEncoder.from_pretrained(init_from, frozen=False)
    return StyleEncoder.from_config(model_config)


def build_style_dataset(config: TrainConfig, model: StyleEncoder) -> StyleDataset:
    """Image-caption pairs from the ``data`` folder (stored at the largest side a crop needs), or rendered now."""
    from perchead.data.synthetic import split_seeds

    options = task_options(config, OPTIONS)
    if config.data != "synthetic":
        side = math.ceil(model.image_size[0] / CROP_MIN_SCALE)  # 64 / 0.8 = 80 px for demo: 4x less memory
        return StyleDataset(load_style_pairs(config.data, config.max_subjects, image_size=side))
    n = options["n_heads"]
    seeds = split_seeds("train")[config.seed * n:(config.seed + 1) * n]
    return StyleDataset(render_style_pairs(seeds, options["views_per_head"], image_size=config.image_size,
                                           seed=config.seed, density=options["density"]))


def build_style_loss(config: TrainConfig, phase: int):
    """CLIP's symmetric InfoNCE over augmented images and captions, multi-positive by entailment."""
    if config.eval_every:
        raise ValueError("--eval-every renders reconstructions; set it to 0 for --task style")
    rng = np.random.default_rng(process_seed(config.seed))
    generator = torch.Generator().manual_seed(process_seed(config.seed))

    def loss_fn(model: StyleEncoder, batch: dict) -> tuple[Tensor, dict[str, float]]:
        captions = list(batch["caption"])
        texts = [augment_caption(c, rng) for c in captions]
        positives = entailment([caption_atoms(c) for c in captions], [caption_atoms(t) for t in texts])  # [B, B]
        images = augment_images(batch["image"].cpu(), model.image_size[0], generator, CROP_MIN_SCALE)  # [B, 3, S, S]
        image_emb, text_emb, scale = model(images.to(model.device), texts)
        loss = contrastive_loss(image_emb, text_emb, scale, positives.to(model.device))
        return loss, {"total": loss.item(), "logit_scale": scale.item()}

    return loss_fn


def style_param_groups(model: StyleEncoder, params: list[nn.Parameter], config: TrainConfig) -> list[dict]:
    """No weight decay on gains, biases, embeddings and the logit scale (as CLIP)."""
    ids = {id(p) for p in params}
    named = [(n, p) for n, p in model.named_parameters() if id(p) in ids]
    exempt = [p.ndim < 2 or "embedding" in n or "logit_scale" in n for n, p in named]
    return [{"params": [p for (_, p), e in zip(named, exempt) if not e], "weight_decay": config.weight_decay},
            {"params": [p for (_, p), e in zip(named, exempt) if e], "weight_decay": 0.0}]


@torch.no_grad()
def clamp_logit_scale(model: StyleEncoder) -> None:
    """CLIP's logit scale stays at most 100."""
    model.model.logit_scale.clamp_(0, math.log(100))


def finish_style(model: StyleEncoder, config: TrainConfig, out: Path, records: list[dict]) -> None:
    """Scores the trained encoder on ``val_heads`` val-split heads and writes ``training.json``."""
    from perchead.data.synthetic import split_seeds

    options = task_options(config, OPTIONS)
    summary = {"task": "style", "preset": config.preset, "steps": config.total_steps, "data": config.data,
               "parameters": sum(p.numel() for p in model.parameters()),
               "checkpoint_bytes": (out / WEIGHTS_NAME).stat().st_size}
    if records:
        losses = [r["total"] for r in records]
        summary.update(initial_loss=float(np.mean(losses[:10])), final_loss=float(np.mean(losses[-50:])),
                       seconds_per_step=float(np.mean([r["time_s"] for r in records])))
    if config.val_heads > 0:
        val = render_style_pairs(split_seeds("val")[:config.val_heads], 0, image_size=config.image_size,
                                 seed=config.seed + 1, density=options["density"], views=VAL_VIEWS)
        summary["val"] = evaluate_style(model, val)
    (out / "training.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")


TASK = Task(build_style_model, build_style_loss, all_parameters, model_config=lambda c: style_config(c.preset),
            build_dataset=build_style_dataset, param_groups=style_param_groups, after_step=clamp_logit_scale,
            finish=finish_style)
