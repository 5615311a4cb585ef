"""Training of the offline face parser (paper supplement §8 uses FaRL; ours is a small SegFormer).

Labels come free with the synthetic heads: the pre-rendered multi-view folder (``--data
runs/synthetic128``, :func:`load_parser_data`) is held as uint8; the loss is class-weighted (inverse
square-root frequency) cross-entropy + soft Dice on logits upsampled to the label size
(:func:`parser_loss`); augmentation flips images and swaps left/right classes, with optional
foreground-centred crops; validation is per-class IoU on val-split heads rendered on the fly
(:func:`evaluate_parser`).

CLI: ``python -m perchead.training.parser --output weights_card/parser --steps N --data runs/synthetic128``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.geometry.segmentation import BACKGROUND, CLASSES, FLIP_PERMUTATION, NUM_CLASSES
from perchead.models.face_parser import DEFAULT_PARSER_FOLDER, FaceParser, segformer_config

# ---------------------------------------------------------------------------------------------- training
IGNORE = 255  # label id of unknown pixels in the uint8 training maps (the multi-view format's convention)


@dataclass
class ParserTrainResult:
    """What :func:`train_parser` measured."""

    losses: list[float] = field(default_factory=list)  # training loss per step
    val_pixel_accuracy: float = float("nan")  # on held-out (val split) synthetic heads
    val_mean_iou: float = float("nan")  # mean over classes present in the val renders or predictions
    val_class_iou: dict[str, float | None] = field(default_factory=dict)  # per class; None = absent in both
    class_weights: list[float] = field(default_factory=list)  # cross-entropy weights used, per class
    train_images: int = 0  # size of the training set
    data_source: str = ""  # the multi-view folder, or "rendered"
    data_seconds: float = 0.0  # time spent loading / rendering the training and val data
    train_seconds: float = 0.0  # time spent in optimisation steps
    seconds_per_step: float = float("nan")
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
        root: the folder of subject folders (e.g. ``runs/synthetic128`` from ``perchead.data.export``).
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
    per_class: dict[str, float | None] = {}
    for c, name in enumerate(CLASSES):
        p, t = (preds == c) & valid, labels == c
        union = (p | t).sum().item()
        per_class[name] = (p & t).sum().item() / union if union else None
    ious = [v for v in per_class.values() if v is not None]
    return acc, float(np.mean(ious)) if ious else float("nan"), per_class


def train_parser(output_dir: str | os.PathLike | None, steps: int = 2000, image_size: int = 128,
                 batch_size: int = 16, n_heads: int = 64, views_per_head: int = 8, preset: str = "demo",
                 lr: float = 1e-3, val_heads: int = 8, seed: int = 0, density: float = 1.0,
                 log_every: int = 50, device: str | torch.device = "cpu", data: str | os.PathLike | None = None,
                 max_subjects: int | None = None, weight_power: float = 0.5, dice_weight: float = 0.5,
                 crop_size: int | None = None) -> tuple[FaceParser, ParserTrainResult]:
    """Trains the project's own SegFormer face parser on synthetic head images (labels come free).

    Training images come from the pre-rendered multi-view folder ``data`` when given (every labelled
    frame, :func:`load_parser_data`), else ``n_heads`` x ``views_per_head`` renders of train-split heads made
    up front. Both are held as uint8 and converted per batch. The loss (ours) is class-weighted
    cross-entropy (:func:`class_weights` of the training labels, inverse square-root frequency by default)
    plus a soft Dice term, on logits upsampled to the label size, so that the small classes (eyes, brows,
    nose, ears, lips) are learnt and not drowned by background / skin / hair. AdamW with a cosine schedule
    and warm-up, label-consistent flips and colour jitter. Validation renders ``val_heads`` heads of the
    disjoint val split (4 random views each) on the fly. Stops on a non-finite loss.

    Args:
        output_dir: where ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` +
            ``training.json`` go; None to skip saving.
        steps: optimisation steps.
        image_size: square input side in pixels (the parser runs at this size).
        batch_size: images per step.
        n_heads, views_per_head: size of the rendered training set (only without ``data``).
        preset: :func:`segformer_config` preset.
        lr: peak learning rate.
        val_heads: held-out heads (4 views each) for the reported metrics; 0 skips validation.
        seed: seed of initialisation, views and batches.
        density: Gaussian budget multiplier of the rendered synthetic heads.
        log_every: print the loss every this many steps (0: silent).
        device: training device.
        data: a multi-view folder with ``labels/`` maps (e.g. ``runs/synthetic128``), or None to render.
        max_subjects: with ``data``, use only this many subjects (None = all).
        weight_power: exponent of the inverse-frequency class weights (0 = unweighted cross-entropy).
        dice_weight: weight of the soft Dice term (0 = cross-entropy only).
        crop_size: train on random foreground-centred crops of this side (a multiple of 32, at most
            ``image_size``; cheaper steps with more face pixels each), None = whole images.

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
    if crop_size is not None and (crop_size < 32 or crop_size % 32 or crop_size > image_size):
        raise ValueError(f"crop_size must be a multiple of 32 between 32 and image_size={image_size}, got {crop_size}")
    torch.manual_seed(seed)
    result = ParserTrainResult()

    # 1. data: uint8 images and label maps (pre-rendered folder, or rendered now)
    t0 = time.perf_counter()
    if data is not None:
        images, labels = load_parser_data(data, image_size, max_subjects)  # [N, 3, S, S], [N, S, S] uint8
        result.data_source = str(data)
    else:
        train = SPLITS["train"]
        images, labels = render_parser_data(train[seed * n_heads:(seed + 1) * n_heads], views_per_head,
                                            image_size, seed=seed, density=density)
        result.data_source = "rendered"
    result.train_images = len(images)
    val = render_parser_data(SPLITS["val"][:val_heads], 4, image_size, seed=seed + 1, density=density) \
        if val_heads > 0 else None
    result.data_seconds = time.perf_counter() - t0
    weights = class_weights(labels, weight_power) if weight_power > 0 else None
    result.class_weights = [] if weights is None else [round(float(w), 4) for w in weights]

    # 2. model
    model = SegformerForSemanticSegmentation(segformer_config(preset, image_size)).to(device)
    parser = FaceParser(model, (image_size, image_size))
    result.parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, min(100, steps // 10)), steps)
    mean, std = parser.mean.to(device), parser.std.to(device)
    weights = None if weights is None else weights.to(device)

    # 3. optimisation
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=generator)
        x, y = images[idx], labels[idx].long()  # [B, 3, S, S] uint8, [B, S, S]
        if crop_size is not None:
            x, y = _random_crops(x, y, crop_size, generator)  # [B, 3, c, c], [B, c, c]
        x, y = _augment(x.float() / 255.0, y, generator)
        x = (x.to(device) - mean) / std
        logits = model(pixel_values=x).logits  # [B, 19, S/4, S/4]
        loss = parser_loss(logits, y.to(device), weights, dice_weight)
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
    result.seconds_per_step = result.train_seconds / steps
    model.eval()

    # 4. validation on held-out heads, then save
    if val is not None:
        result.val_pixel_accuracy, result.val_mean_iou, result.val_class_iou = evaluate_parser(parser, *val)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        parser.save_pretrained(out)
        summary = {k: v for k, v in asdict(result).items() if k != "losses"}
        summary.update(steps=steps, image_size=image_size, batch_size=batch_size, preset=preset, lr=lr, seed=seed,
                       weight_power=weight_power, dice_weight=dice_weight, crop_size=crop_size, val_heads=val_heads,
                       final_loss=float(np.mean(result.losses[-20:])))
        if data is None:
            summary.update(n_heads=n_heads, views_per_head=views_per_head, density=density)
        else:
            summary.update(max_subjects=max_subjects)
        (out / "training.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return parser, result


def format_class_iou(class_iou: dict[str, float | None]) -> str:
    """One line per class, ``name  IoU`` (``-`` where the class is absent), for the CLI."""
    return "\n".join(f"  {name:<11s} {'-' if v is None else f'{v:.3f}'}" for name, v in class_iou.items())


def main(argv: list[str] | None = None) -> None:
    """``python -m perchead.training.parser --output weights_card/parser --data runs/synthetic128 --steps N`` trains
    and saves the parser."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--output", default=DEFAULT_PARSER_FOLDER, help="output folder")
    ap.add_argument("--data", default=None, help="pre-rendered multi-view folder with labels/ (else render heads)")
    ap.add_argument("--max-subjects", type=int, default=None, help="with --data: use only this many subjects")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--heads", type=int, default=64, help="synthetic training heads (without --data)")
    ap.add_argument("--views", type=int, default=8, help="rendered views per head (without --data)")
    ap.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-power", type=float, default=0.5,
                    help="class weights = frequency ** -power (0: unweighted cross-entropy)")
    ap.add_argument("--dice-weight", type=float, default=0.5, help="weight of the soft Dice term (0: off)")
    ap.add_argument("--crop-size", type=int, default=None, help="train on random crops of this side (default: off)")
    ap.add_argument("--val-heads", type=int, default=8)
    ap.add_argument("--density", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    _, result = train_parser(args.output, steps=args.steps, image_size=args.image_size, batch_size=args.batch_size,
                             n_heads=args.heads, views_per_head=args.views, preset=args.preset, lr=args.lr,
                             val_heads=args.val_heads, seed=args.seed, density=args.density, device=args.device,
                             data=args.data, max_subjects=args.max_subjects, weight_power=args.weight_power,
                             dice_weight=args.dice_weight, crop_size=args.crop_size,
                             log_every=args.log_every)
    print(f"saved {args.output}: {result.parameters} parameters, {result.train_images} training images, "
          f"data {result.data_seconds:.1f} s, train {result.train_seconds:.1f} s "
          f"({result.seconds_per_step:.3f} s/step), val pixel accuracy {result.val_pixel_accuracy:.3f}, "
          f"val mIoU {result.val_mean_iou:.3f}")
    if result.val_class_iou:
        print("val IoU per class:\n" + format_class_iou(result.val_class_iou))


if __name__ == "__main__":
    main()
