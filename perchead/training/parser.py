"""Training of the offline face parser (paper supplement §8 uses FaRL; ours is a small SegFormer).

Labels come free with the synthetic heads: the pre-rendered multi-view folder (``--data
runs/synthetic128``, :func:`load_parser_data`) is held as uint8; the loss is class-weighted (inverse
square-root frequency) cross-entropy + soft Dice on logits upsampled to the label size
(:func:`parser_loss`); augmentation flips images and swaps left/right classes, with optional
foreground-centred crops; validation is per-class IoU on val-split heads rendered on the fly
(:func:`evaluate_parser`).

CLI: ``python -m perchead.training.train --task parser --data runs/synthetic128 --output runs/parser``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.geometry.segmentation import BACKGROUND, CLASSES, FLIP_PERMUTATION, NUM_CLASSES, mask_iou
from perchead.models.face_parser import FaceParser, segformer_config
from perchead.training.config import Task, TrainConfig, all_parameters, process_seed, task_options

# ---------------------------------------------------------------------------------------------- training
IGNORE = 255  # label id of unknown pixels in the uint8 training maps (the multi-view format's convention)


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
        images ``[N, 3, S, S]`` uint8 over white and labels ``[N, S, S]`` uint8 class ids, N = heads x views.
    """
    from perchead.geometry.cameras import orbit_cameras
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
        images.append((out["rgb"] * 255.0 + 0.5).clamp(0, 255).to(torch.uint8))  # [V, 3, S, S]
        labels.append(out["labels"].to(torch.uint8))  # [V, S, S]
    return torch.cat(images), torch.cat(labels)


def load_parser_data(root: str | os.PathLike, image_size: int, max_subjects: int | None = None,
                     ) -> tuple[Tensor, Tensor]:
    """Loads every labelled frame of an on-disk multi-view folder (:mod:`perchead.data.multiview`).

    Frames go through :meth:`MultiViewDataset.load_frame` (compositing over white, centre crop, resize,
    labels resized nearest) and are kept as compact uint8 tensors (800 subjects x 16 views at 128 px are
    about 0.6 GB of images + 0.2 GB of labels); batches are converted to float when drawn. Frames
    without a label map are skipped.

    Args:
        root: the folder of subject folders (e.g. ``runs/synthetic128`` from ``perchead.data.prerender``).
        image_size: square side the frames are resized to.
        max_subjects: use only the first this many subjects (sorted by folder name); None = all.

    Returns:
        images ``[N, 3, S, S]`` uint8 and labels ``[N, S, S]`` uint8 (class ids, :data:`IGNORE` = unknown).

    Raises:
        ValueError: if the folder is not in the multi-view format or holds no labelled frame.
    """
    from perchead.data.multiview import MultiViewDataset

    data = MultiViewDataset(str(root), n_targets=1, image_size=image_size)
    n_subjects = len(data) if max_subjects is None else min(len(data), int(max_subjects))
    n_frames = sum(len(data.meta[i]["frames"]) for i in range(n_subjects))
    images = torch.empty(n_frames, 3, image_size, image_size, dtype=torch.uint8)  # filled in place
    labels = torch.empty(n_frames, image_size, image_size, dtype=torch.uint8)
    n = 0
    for i in range(n_subjects):
        for f in range(len(data.meta[i]["frames"])):
            frame = data.load_frame(i, f)
            lab = frame["labels"]  # [S, S] long, -1 = unknown (also when the frame has no label map)
            if bool((lab < 0).all()):
                continue
            images[n] = (frame["image"] * 255.0 + 0.5).clamp(0, 255).to(torch.uint8)
            labels[n] = torch.where(lab < 0, torch.full_like(lab, IGNORE), lab).to(torch.uint8)
            n += 1
    if n == 0:
        raise ValueError(f"multi-view folder {str(root)!r} holds no frame with a labels/ map; the parser needs "
                         "19-class label maps (export them with perchead.data.multiview.export_synthetic)")
    return images[:n], labels[:n]


def class_weights(labels: Tensor, power: float = 0.5, clip: tuple[float, float] = (0.2, 10.0)) -> Tensor:
    """Cross-entropy class weights from inverse class frequencies (ours: ``freq ** -power``, clipped).

    Weights are ``w_c = f_c ** -power`` with ``f_c`` the share of labelled pixels of class ``c``, scaled so
    that the pixel-weighted mean ``sum_c f_c w_c`` is 1, then clipped to ``clip``. Classes absent from
    ``labels`` get weight 0 (they never appear as a target, so the value is unused).
    Inverse *square-root* frequency (power 0.5) is a common middle ground between plain cross-entropy,
    which ignores the eyes, brows and lips (each well under 1% of pixels), and full inverse frequency,
    which over-predicts them.

    Args:
        labels: integer class ids ``[...]``; ids outside 0..18 (e.g. :data:`IGNORE`) are not counted.
        power: exponent of the inverse frequency.
        clip: (min, max) weight after normalisation.

    Returns:
        float ``[19]`` weights.
    """
    if power < 0 or clip[0] <= 0 or clip[1] < clip[0]:
        raise ValueError(f"class weights need power >= 0 and 0 < clip[0] <= clip[1], got {power}, {clip}")
    flat = labels.reshape(-1).long()
    flat = flat[(flat >= 0) & (flat < NUM_CLASSES)]
    if flat.numel() == 0:
        raise ValueError("class weights need at least one labelled pixel")
    freq = torch.bincount(flat, minlength=NUM_CLASSES).double() / flat.numel()  # [19]
    present = freq > 0
    w = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    w[present] = freq[present] ** -power
    w = w / (freq * w).sum()
    w[present] = w[present].clamp(*clip)
    return w.float()


def soft_dice_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE, eps: float = 1.0) -> Tensor:
    """Soft Dice loss averaged over the classes present in the batch's labels (ours, as in V-Net).

    Args:
        logits: ``[B, 19, H, W]`` class scores at the label resolution.
        labels: ``[B, H, W]`` long class ids; ``ignore_index`` pixels are left out.
        eps: smoothing added to numerator and denominator.

    Returns:
        scalar ``1 - mean_c dice_c``.
    """
    valid = labels != ignore_index  # [B, H, W]
    probs = logits.softmax(1) * valid[:, None]  # [B, 19, H, W]
    target = F.one_hot(torch.where(valid, labels, torch.zeros_like(labels)), NUM_CLASSES).permute(0, 3, 1, 2)
    target = target.float() * valid[:, None]  # [B, 19, H, W]
    inter = (probs * target).sum((0, 2, 3))  # [19]
    denom = probs.sum((0, 2, 3)) + target.sum((0, 2, 3))  # [19]
    present = target.sum((0, 2, 3)) > 0  # [19]
    dice = (2 * inter + eps) / (denom + eps)  # [19]
    return 1.0 - dice[present].mean()


def parser_loss(logits: Tensor, labels: Tensor, weights: Tensor | None = None, dice_weight: float = 0.5
                ) -> Tensor:
    """Class-weighted cross-entropy + ``dice_weight`` x soft Dice, on logits upsampled to the labels.

    SegFormer predicts at 1/4 (or 1/2) of the input size; the logits are bilinearly upsampled to the label
    size first, so thin classes (brows, lips) are supervised at full resolution.

    Args:
        logits: ``[B, 19, h, w]`` raw class scores (any resolution).
        labels: ``[B, H, W]`` long class ids, :data:`IGNORE` = unknown.
        weights: ``[19]`` cross-entropy class weights (:func:`class_weights`) or None.
        dice_weight: weight of :func:`soft_dice_loss` (0 disables it).

    Returns:
        the scalar loss.
    """
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)  # [B, 19, H, W]
    loss = F.cross_entropy(logits, labels, weight=weights, ignore_index=IGNORE)
    if dice_weight > 0:
        loss = loss + dice_weight * soft_dice_loss(logits, labels)
    return loss


def _random_crops(images: Tensor, labels: Tensor, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Square crops of side ``size``, the same window for an image and its labels (ours).

    Each crop is centred on a random foreground pixel (a random pixel where there is none), clamped to
    the image, so crops mostly show the head and its small parts. SegFormer has no position embeddings,
    so a parser trained on crops runs on full images.

    Args:
        images: ``[B, C, H, W]``; labels: ``[B, H, W]``; size: crop side (<= H, W).
        generator: random generator.

    Returns:
        (``[B, C, size, size]``, ``[B, size, size]``).
    """
    b, _, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"crop size {size} exceeds the image size {h}x{w}")
    out_x, out_y = [], []
    for i in range(b):
        fg = ((labels[i] != BACKGROUND) & (labels[i] != IGNORE)).flatten().nonzero()[:, 0]  # [K]
        k = int(torch.randint(len(fg), (1,), generator=generator)) if len(fg) else 0
        centre = int(fg[k]) if len(fg) else int(torch.randint(h * w, (1,), generator=generator))
        top = min(max(centre // w - size // 2, 0), h - size)
        left = min(max(centre % w - size // 2, 0), w - size)
        out_x.append(images[i, :, top:top + size, left:left + size])
        out_y.append(labels[i, top:top + size, left:left + size])
    return torch.stack(out_x), torch.stack(out_y)


def _augment(images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Label-consistent augmentation (ours): horizontal flips that swap the left/right classes
    (:data:`perchead.geometry.segmentation.FLIP_PERMUTATION`), and colour jitter of the foreground only.

    Args:
        images: ``[B, 3, H, W]`` float in [0, 1] over white.
        labels: ``[B, H, W]`` long class ids, :data:`IGNORE` = unknown (kept unknown).
        generator: random generator.

    Returns:
        the augmented (images, labels).
    """
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5  # [B]
    perm = torch.tensor(FLIP_PERMUTATION + (0,) * (256 - NUM_CLASSES))  # [256]; IGNORE must map to itself
    perm[IGNORE] = IGNORE
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    labels = torch.where(flip[:, None, None], perm[labels.flip(-1)], labels)
    gain = 1.0 + 0.25 * (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1)  # brightness
    tint = 1.0 + 0.10 * (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1)  # white balance
    grey = images.mean(1, keepdim=True)  # [B, 1, H, W]
    sat = 1.0 + 0.3 * (torch.rand(b, 1, 1, 1, generator=generator) * 2 - 1)  # saturation
    jittered = ((grey + (images - grey) * sat) * gain * tint).clamp(0.0, 1.0)
    fg = (labels != BACKGROUND)[:, None]  # [B, 1, H, W]; the background stays white, as after preprocessing
    return torch.where(fg, jittered, images), labels


def evaluate_parser(parser: FaceParser, images: Tensor, labels: Tensor, batch_size: int = 16
                    ) -> tuple[float, float, dict[str, float | None]]:
    """Pixel accuracy, mean IoU and per-class IoU of a parser on labelled images.

    Args:
        parser: the parser.
        images: ``[N, 3, H, W]`` uint8 or float in [0, 1].
        labels: ``[N, H, W]`` class ids; :data:`IGNORE` pixels are left out.
        batch_size: images per forward pass.

    Returns:
        (pixel accuracy, mean IoU over classes present in prediction or truth, ``{class: IoU or None}``
        with None for classes absent from both).
    """
    preds = torch.cat([parser.parse(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    labels = labels.long()
    valid = labels != IGNORE
    acc = (preds == labels)[valid].float().mean().item()
    per_class = {name: mask_iou((preds == c) & valid, labels == c) for c, name in enumerate(CLASSES)}
    ious = [v for v in per_class.values() if v is not None]
    return acc, float(np.mean(ious)) if ious else float("nan"), per_class


OPTIONS = {  # --options of the parser task (ours)
    "n_heads": 64,  # synthetic train heads rendered up front when --data is "synthetic"
    "views_per_head": 8,  # random views per rendered head
    "density": 1.0,  # Gaussian budget multiplier of the rendered heads
    "weight_power": 0.5,  # class weights = frequency ** -power (0: unweighted cross-entropy)
    "dice_weight": 0.5,  # weight of the soft Dice term (0: cross-entropy only)
    "crop_size": None,  # train on random foreground-centred crops of this side (a multiple of 32), None = off
}
_DATA: dict[tuple, tuple[Tensor, Tensor, Tensor | None, str]] = {}  # one copy of the data per run settings


def parser_data(config: TrainConfig) -> tuple[Tensor, Tensor, Tensor | None, str]:
    """The training images and labels (uint8), their class weights and their source, loaded once per settings.

    From the ``data`` folder (every labelled frame, :func:`load_parser_data`), or ``n_heads`` ×
    ``views_per_head`` renders of train-split heads.
    """
    from perchead.data.synthetic import SPLITS

    options = task_options(config, OPTIONS)
    size = config.image_size
    key = (config.data, size, config.max_subjects, config.seed, options["n_heads"], options["views_per_head"],
           options["density"], options["weight_power"])
    if key not in _DATA:
        if config.data != "synthetic":
            images, labels = load_parser_data(config.data, size, config.max_subjects)  # [N, 3, S, S], [N, S, S]
            source = str(config.data)
        else:
            n = options["n_heads"]
            images, labels = render_parser_data(SPLITS["train"][config.seed * n:(config.seed + 1) * n],
                                                options["views_per_head"], size, seed=config.seed,
                                                density=options["density"])
            source = "rendered"
        weights = class_weights(labels, options["weight_power"]) if options["weight_power"] > 0 else None
        _DATA.clear()
        _DATA[key] = images, labels, weights, source
    return _DATA[key]


class ParserDataset(torch.utils.data.Dataset):
    """Samples ``{"image": [3, S, S] uint8, "labels": [S, S] uint8}`` (:data:`IGNORE` = unknown)."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "labels": self.labels[i]}


def parser_model_config(config: TrainConfig):
    """The SegFormer config of the preset at ``image_size``.

    Raises:
        ValueError: for a size that is not a multiple of 32 or a crop that does not fit.
    """
    size, crop = config.image_size, task_options(config, OPTIONS)["crop_size"]
    if size < 32 or size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32 (SegFormer's stride), got {size}")
    if crop is not None and (crop < 32 or crop % 32 or crop > size):
        raise ValueError(f"crop_size must be a multiple of 32 between 32 and image_size={size}, got {crop}")
    return segformer_config(config.preset, size)


def build_parser_model(model_config, init_from: str | None = None) -> FaceParser:
    """A fresh SegFormer parser of ``model_config`` (its ``image_size``), or one loaded from ``init_from``."""
    from transformers import SegformerForSemanticSegmentation

    if init_from:
        return FaceParser.from_pretrained(init_from)
    size = int(model_config.image_size)
    return FaceParser(SegformerForSemanticSegmentation(model_config), (size, size))


def build_parser_dataset(config: TrainConfig, model: FaceParser) -> ParserDataset:
    images, labels, _, _ = parser_data(config)
    return ParserDataset(images, labels)


def build_parser_loss(config: TrainConfig, phase: int):
    """Class-weighted cross-entropy + soft Dice on crops (optional) with flips and colour jitter."""
    if config.eval_every:
        raise ValueError("--eval-every renders reconstructions; set it to 0 for --task parser")
    options = task_options(config, OPTIONS)
    weights = parser_data(config)[2]
    generator = torch.Generator().manual_seed(process_seed(config.seed))

    def loss_fn(model: FaceParser, batch: dict) -> tuple[Tensor, dict[str, float]]:
        x, y = batch["image"].cpu(), batch["labels"].cpu().long()  # [B, 3, S, S] uint8, [B, S, S]
        if options["crop_size"] is not None:
            x, y = _random_crops(x, y, options["crop_size"], generator)  # [B, 3, c, c], [B, c, c]
        x, y = _augment(x.float() / 255.0, y, generator)
        logits = model.raw_logits(x)  # [B, 19, S/4, S/4] (our class order: the parser is ours)
        w = None if weights is None else weights.to(logits.device)
        loss = parser_loss(logits, y.to(logits.device), w, options["dice_weight"])
        return loss, {"total": loss.item()}

    return loss_fn


def finish_parser(model: FaceParser, config: TrainConfig, out: Path, records: list[dict]) -> None:
    """Scores the trained parser on ``val_heads`` val-split heads (4 views each) and writes ``training.json``."""
    from perchead.data.synthetic import SPLITS

    options = task_options(config, OPTIONS)
    images, _, weights, source = parser_data(config)
    model.eval()
    summary = {"task": "parser", "preset": config.preset, "steps": config.total_steps, "image_size": config.image_size,
               "train_images": len(images), "data_source": source, "options": options,
               "class_weights": [] if weights is None else [round(float(w), 4) for w in weights],
               "parameters": sum(p.numel() for p in model.parameters())}
    if records:
        summary.update(final_loss=float(np.mean([r["total"] for r in records[-20:]])),
                       seconds_per_step=float(np.mean([r["time_s"] for r in records])))
    if config.val_heads > 0:
        val = render_parser_data(SPLITS["val"][:config.val_heads], 4, config.image_size, seed=config.seed + 1,
                                 density=options["density"])
        acc, miou, per_class = evaluate_parser(model, *val)
        summary.update(val_pixel_accuracy=acc, val_mean_iou=miou, val_class_iou=per_class)
    (out / "training.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")


TASK = Task(build_parser_model, build_parser_loss, all_parameters, model_config=parser_model_config,
            build_dataset=build_parser_dataset, finish=finish_parser)
