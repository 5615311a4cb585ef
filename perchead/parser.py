"""Face parsing: a photo -> a 19-class segmentation map, with a transformers SegFormer (paper supplement §8).

The paper's editing app parses an uploaded photo with FaRL into the 19-class map that the editing model
(§3.5) takes as geometry input. We use ``SegformerForSemanticSegmentation`` from transformers:

* by Hub id when the Hub is reachable, e.g. ``"jonathandinu/face-parsing"`` (:data:`HUB_FACE_PARSER`), a
  19-class CelebAMask-HQ SegFormer. Its class ORDER matches ours but three NAMES differ (``eye_g``,
  ``ear_r``, ``neck_l`` for eyeglasses, earring, necklace), and an older revision of the same repo used
  another order with ``.png`` suffixes, so model classes are always remapped to
  :data:`perchead.segmentation.CLASSES` by name (:func:`label_mapping`), never by index. The left/right
  classes keep the checkpoint's own convention.
* from a local folder (the offline default): a small SegFormer that this project trains on its synthetic
  head renders, whose labels come free (:func:`train_parser`, ``python -m perchead.parser``). Its
  architecture is :func:`segformer_config` (ours, built in code, ``num_labels=19``).

Checkpoints are ``config.json`` + ``model.safetensors`` (+ ``preprocessor_config.json`` for the input
size and normalisation). A missing folder or an unreachable Hub id raises :class:`FileNotFoundError`
with a message saying what to do; nothing hangs (set ``HF_HUB_OFFLINE=1`` offline).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.segmentation import BACKGROUND, CLASSES, FLIP_PERMUTATION, NUM_CLASSES

HUB_FACE_PARSER = "jonathandinu/face-parsing"  # 19-class CelebAMask-HQ SegFormer (MiT-b5) on the Hub
DEFAULT_PARSER_FOLDER = "weights_card/parser"  # the bundled offline parser (trained by `python -m perchead.parser`)
LABEL_ALIASES = {"eye_g": "eyeglasses", "ear_r": "earring", "neck_l": "necklace",
                 "bg": "background"}  # CelebAMask-HQ file names -> our class names
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------- configuration
def segformer_config(preset: str = "demo", image_size: int = 128):
    """The SegFormer architecture of the project's own face parser (all values ours).

    Args:
        preset: ``"demo"`` (about 0.9 M parameters, CPU-trainable in minutes) or ``"tiny"`` (tests).
        image_size: input side in pixels the parser runs at (stored in the config).

    Returns:
        a ``transformers.SegformerConfig`` with ``num_labels=19`` and our class names.
    """
    from transformers import SegformerConfig

    presets = {
        # MiT-b0 is hidden (32, 64, 160, 256), depths (2, 2, 2, 2), decoder 256; ours is about 1/4 of it
        "demo": dict(hidden_sizes=[16, 32, 80, 128], depths=[1, 2, 2, 1], num_attention_heads=[1, 1, 2, 4],
                     decoder_hidden_size=128),
        "tiny": dict(hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
                     decoder_hidden_size=32),
    }
    if preset not in presets:
        raise ValueError(f"unknown parser preset {preset!r}; expected one of {sorted(presets)}")
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
        **presets[preset],
    )


def label_mapping(id2label: dict) -> Tensor:
    """Maps a checkpoint's class ids onto :data:`perchead.segmentation.CLASSES` by class NAME.

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


class FaceParser:
    """A SegFormer face parser that returns maps in the project's 19-class order.

    Args:
        model: a ``SegformerForSemanticSegmentation`` (any class order with CelebAMask-HQ names).
        image_size: ``(H, W)`` the model runs at; photos are resized to it and the logits back.
        mean, std: input normalisation (per channel, on [0, 1] images).
    """

    def __init__(self, model, image_size: tuple[int, int] = (512, 512), mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.model = model.eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)  # [1, 3, 1, 1]
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)  # [1, 3, 1, 1]
        self.lut = label_mapping(model.config.id2label)  # [L] model id -> our id

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
                                    f"`python -m perchead.parser --output {id_or_folder}` or pass a Hub id "
                                    f"such as {HUB_FACE_PARSER!r}")
        try:
            model = SegformerForSemanticSegmentation.from_pretrained(str(id_or_folder), revision=revision,
                                                                     use_safetensors=True)
        except (OSError, ValueError) as error:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
            raise FileNotFoundError(
                f"cannot load the face parser {str(id_or_folder)!r}"
                + (" (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline and not local else "")
                + f": {error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}. "
                f"Offline, use the bundled parser folder {DEFAULT_PARSER_FOLDER!r} "
                "(reproduce it with `python -m perchead.parser`)") from error
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
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        raw = self.model(pixel_values=x).logits  # [B, L, h/4, w/4]
        out = torch.full((raw.shape[0], NUM_CLASSES, *raw.shape[2:]), float("-inf"), device=raw.device)
        out[:, self.lut.to(raw.device)] = raw  # model order -> ours
        return out  # [B, 19, h/4, w/4]

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


# ---------------------------------------------------------------------------------------------- training
@dataclass
class ParserTrainResult:
    """What :func:`train_parser` measured."""

    losses: list[float] = field(default_factory=list)  # training loss per step
    val_pixel_accuracy: float = float("nan")  # on held-out (val split) synthetic heads
    val_mean_iou: float = float("nan")  # mean over classes present in the val renders
    render_seconds: float = 0.0  # time spent rendering the synthetic data
    train_seconds: float = 0.0  # time spent in optimisation steps
    parameters: int = 0


def render_parser_data(seeds, views_per_head: int, image_size: int, seed: int = 0,
                       density: float = 1.0) -> tuple[Tensor, Tensor]:
    """Renders synthetic heads from random views: photos and their free label maps.

    Views: 70% near-frontal (azimuth ~ N(0, 40°)), 30% anywhere around the head; elevation in
    [-25°, 35°]; distance 0.55-0.9 m per head so the head's size in the frame varies (ours).

    Args:
        seeds: head seeds (e.g. a slice of ``perchead.data.synthetic.SPLITS["train"]``).
        views_per_head: views rendered per head.
        image_size: square image side.
        seed: seed of the view sampling.
        density: Gaussian budget multiplier of ``make_head`` (lower = faster).

    Returns:
        images ``[N, 3, S, S]`` over white in [0, 1] and labels ``[N, S, S]`` long, N = heads x views.
    """
    from perchead.cameras import orbit_cameras
    from perchead.data.synthetic import make_head, render_head

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for s in seeds:
        head = make_head(int(s), density=density)
        frontal = rng.random(views_per_head) < 0.7
        az = np.where(frontal, np.clip(rng.normal(0.0, 40.0, views_per_head), -120, 120),
                      rng.uniform(-180.0, 180.0, views_per_head))
        el = rng.uniform(-25.0, 35.0, views_per_head)
        cams = orbit_cameras(az.tolist(), el.tolist(), radius=float(rng.uniform(0.55, 0.9)), fov_deg=30.0,
                             size=image_size)
        out = render_head(head, cams)
        images.append(out["rgb"])  # [V, 3, S, S]
        labels.append(out["labels"])  # [V, S, S]
    return torch.cat(images), torch.cat(labels)


def _augment(images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Horizontal flips (swapping left/right classes) and colour jitter of the foreground (ours)."""
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5  # [B]
    perm = torch.tensor(FLIP_PERMUTATION)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    labels = torch.where(flip[:, None, None], perm[labels.flip(-1)], labels)
    gain = 1.0 + 0.25 * (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1)  # brightness
    tint = 1.0 + 0.10 * (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1)  # white balance
    grey = images.mean(1, keepdim=True)  # [B, 1, H, W]
    sat = 1.0 + 0.3 * (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1)  # saturation
    jittered = ((grey + (images - grey) * sat) * gain * tint).clamp(0.0, 1.0)
    fg = (labels != BACKGROUND)[:, None]  # [B, 1, H, W]; the background stays white, as after preprocessing
    return torch.where(fg, jittered, images), labels


def _evaluate(parser: FaceParser, images: Tensor, labels: Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Pixel accuracy and mean IoU (over classes present in prediction or truth)."""
    preds = torch.cat([parser.parse(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    acc = (preds == labels).float().mean().item()
    ious = []
    for c in range(NUM_CLASSES):
        p, t = preds == c, labels == c
        union = (p | t).sum().item()
        if union:
            ious.append((p & t).sum().item() / union)
    return acc, float(np.mean(ious))


def train_parser(output_dir: str | os.PathLike | None, steps: int = 2000, image_size: int = 128,
                 batch_size: int = 8, n_heads: int = 64, views_per_head: int = 8, preset: str = "demo",
                 lr: float = 1e-3, val_heads: int = 4, seed: int = 0, density: float = 1.0,
                 log_every: int = 50, device: str | torch.device = "cpu") -> tuple[FaceParser, ParserTrainResult]:
    """Trains the project's own SegFormer face parser on synthetic head renders (labels come free).

    The renders are made once up front (``n_heads`` x ``views_per_head`` images from the train split),
    then AdamW with a cosine schedule and warm-up fits the per-pixel cross-entropy, with flips and colour
    jitter. Validation uses ``val_heads`` heads of the disjoint val split. Stops on a non-finite loss.

    Args:
        output_dir: where ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` +
            ``training.json`` go; None to skip saving.
        steps: optimisation steps.
        image_size: square input side in pixels (the parser runs at this size).
        batch_size: images per step.
        n_heads, views_per_head: size of the rendered training set.
        preset: :func:`segformer_config` preset.
        lr: peak learning rate.
        val_heads: held-out heads (4 views each) for the reported metrics; 0 skips validation.
        seed: seed of initialisation, views and batches.
        density: Gaussian budget multiplier of the synthetic heads.
        log_every: print the loss every this many steps (0: silent).
        device: training device.

    Returns:
        the trained parser and a :class:`ParserTrainResult`.
    """
    from transformers import SegformerForSemanticSegmentation, get_cosine_schedule_with_warmup

    from perchead.data.synthetic import SPLITS

    if steps < 1 or batch_size < 1 or n_heads < 1 or views_per_head < 1:
        raise ValueError(f"steps, batch_size, n_heads and views_per_head must be positive, got "
                         f"{steps}, {batch_size}, {n_heads}, {views_per_head}")
    if image_size < 32 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32 (SegFormer's stride), got {image_size}")
    torch.manual_seed(seed)
    result = ParserTrainResult()

    # 1. data: synthetic renders with free labels
    t0 = time.perf_counter()
    train = SPLITS["train"]
    images, labels = render_parser_data(train[seed * n_heads:(seed + 1) * n_heads], views_per_head, image_size,
                                        seed=seed, density=density)  # [N, 3, S, S], [N, S, S]
    val = render_parser_data(SPLITS["val"][:val_heads], 4, image_size, seed=seed + 1, density=density) \
        if val_heads > 0 else None
    result.render_seconds = time.perf_counter() - t0

    # 2. model
    model = SegformerForSemanticSegmentation(segformer_config(preset, image_size)).to(device)
    parser = FaceParser(model, (image_size, image_size))
    result.parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, min(100, steps // 10)), steps)

    # 3. optimisation
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = _augment(images[idx], labels[idx], generator)  # [B, 3, S, S], [B, S, S]
        x = (x - parser.mean) / parser.std
        loss = model(pixel_values=x.to(device), labels=y.to(device)).loss
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite parser loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        result.losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {schedule.get_last_lr()[0]:.2e}", flush=True)
    result.train_seconds = time.perf_counter() - t0
    model.eval()

    # 4. validation on held-out heads, then save
    if val is not None:
        result.val_pixel_accuracy, result.val_mean_iou = _evaluate(parser, *val)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        parser.save_pretrained(out)
        summary = {k: v for k, v in asdict(result).items() if k != "losses"}
        summary.update(steps=steps, image_size=image_size, batch_size=batch_size, n_heads=n_heads,
                       views_per_head=views_per_head, preset=preset, lr=lr, seed=seed, density=density,
                       final_loss=float(np.mean(result.losses[-20:])))
        (out / "training.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return parser, result


def main(argv: list[str] | None = None) -> None:
    """``python -m perchead.parser --output weights_card/parser --steps N`` trains and saves the parser."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--output", default=DEFAULT_PARSER_FOLDER, help="output folder")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--heads", type=int, default=64, help="synthetic training heads")
    ap.add_argument("--views", type=int, default=8, help="rendered views per head")
    ap.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-heads", type=int, default=4)
    ap.add_argument("--density", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    _, result = train_parser(args.output, steps=args.steps, image_size=args.image_size, batch_size=args.batch_size,
                             n_heads=args.heads, views_per_head=args.views, preset=args.preset, lr=args.lr,
                             val_heads=args.val_heads, seed=args.seed, density=args.density, device=args.device)
    print(f"saved {args.output}: {result.parameters} parameters, render {result.render_seconds:.1f} s, "
          f"train {result.train_seconds:.1f} s, val pixel accuracy {result.val_pixel_accuracy:.3f}, "
          f"val mIoU {result.val_mean_iou:.3f}")


if __name__ == "__main__":
    main()
