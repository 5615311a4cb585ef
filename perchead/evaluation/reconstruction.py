"""Evaluation with the paper's protocol (PercHead §4.1–4.2, Tables 1–2) on held-out synthetic test heads.

    python -m perchead.evaluation.reconstruction --model weights_card --subjects 100 --output results.json \
        --contact-sheet docs/contact_sheet.png

Protocol, on the ``test`` seeds of :mod:`perchead.data.synthetic` (disjoint from training): *novel views*
— one near-frontal input per subject and :attr:`EvalConfig.novel_targets` targets spread around the head
(:func:`novel_views`; the paper uses 5 or 16, we use 8); *extreme views* — left↔right profile flips and
top↔bottom (±60° elevation, ours) input/target pairs (:func:`extreme_pairs`). Methods (:data:`METHODS`):
``ours``; ``template``, the same architecture freshly initialised (the untrained template head);
``billboard``, the input picture on a plane that faces every viewer (the no-3D baseline); and two fixed
cards for context (:func:`billboard`). Metrics: PSNR and SSIM over the whole target image (white
background, as in the paper); LPIPS, DreamSim and ArcFace are ``null`` with a reason when their weights
are absent. Output: a Markdown table shaped like Tables 1–2 and JSON ``{"novel": {method: {metric}},
"extreme": …, "extreme_by_pair": {"left_right": …, "top_bottom": …}, "meta": …}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perchead.data.augment import InputAugmentConfig, augment_inputs
from perchead.data.figures import contact_sheet
from perchead.evaluation.metrics import finite_mean, network_metrics
from perchead.geometry.cameras import Cameras
from perchead.models.similarity import psnr, ssim

METHODS = ("ours", "template", "billboard", "card_two_sided", "card_one_sided")
BASELINE_CARDS = {  # flat-picture baselines: method → billboard() options
    "billboard": {"facing": "viewer"},
    "card_two_sided": {"facing": "input", "two_sided": True},
    "card_one_sided": {"facing": "input", "two_sided": False},
}
PROTOCOLS = ("novel", "extreme")
TABLE_ORDER = ("card_one_sided", "card_two_sided", "billboard", "template", "ours")  # rows of the Markdown tables
METRICS = ("psnr", "ssim", "lpips", "dreamsim", "arcface")


@dataclass
class EvalConfig:
    """Evaluation settings.

    Attributes:
        subjects: number of held-out heads (the first ``subjects`` seeds of the split).
        split: seed split of :mod:`perchead.data.synthetic` ("test" for the reported table).
        novel_targets: target views per input in the novel-view protocol (ours: 8).
        eval_size: size of rendered / ground-truth target views (None = the model's render_size).
        extreme_elevation: |elevation| of the top↔bottom extreme pair in degrees (ours: 60).
        seed: seed of the random input / target view draws.
        fit_steps: photo-fit steps (:mod:`perchead.fit`) for an extra row ``ours_fit``: our head
            refined against its input picture from the protocol's input camera (0 = no such row).
        photo_like_inputs: robustness protocol (ours): every input view goes through
            :func:`perchead.data.augment.augment_inputs` (lighting, colour, blur, noise, JPEG, matte and crop
            errors, seeded per head) while the targets stay clean renders, as with a matted real photo.
    """

    subjects: int = 100
    split: str = "test"
    novel_targets: int = 8
    eval_size: int | None = None
    extreme_elevation: float = 60.0
    seed: int = 0
    fit_steps: int = 0
    photo_like_inputs: bool = False

    def __post_init__(self) -> None:
        from perchead.fit.config import check_steps

        check_steps(self.fit_steps)
        if self.subjects < 1:
            raise ValueError(f"subjects must be >= 1, got {self.subjects}")
        if self.novel_targets < 1:
            raise ValueError(f"novel_targets must be >= 1, got {self.novel_targets}")
        if not 0 < self.extreme_elevation <= 90:
            raise ValueError(f"extreme_elevation must lie in (0, 90], got {self.extreme_elevation}")


# --------------------------------------------------------------------------------------------- protocol
def novel_views(subject_index: int, n_targets: int, seed: int = 0) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """The novel-view protocol's (azimuth, elevation) pairs for one subject: (input, [targets]), degrees.

    The input is near-frontal (azimuth ~ U(−30°, 30°), elevation ~ U(−10°, 15°)); the targets' azimuths are
    evenly spaced over 360° from a random offset, their elevations ~ U(−15°, 30°).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + subject_index)
    u = torch.rand(3 + n_targets, generator=g).tolist()
    input_view = (-30 + 60 * u[0], -10 + 25 * u[1])
    offset = 360 * u[2]
    targets = [
        (((offset + 360 * k / n_targets + 180) % 360) - 180, -15 + 45 * u[3 + k]) for k in range(n_targets)
    ]
    return input_view, targets


def extreme_pairs(elevation: float = 60.0) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """The extreme-view protocol's (input, target) (azimuth, elevation) pairs, degrees."""
    return [
        ((90.0, 0.0), (-90.0, 0.0)),  # head's left profile → right profile
        ((-90.0, 0.0), (90.0, 0.0)),  # right → left
        ((0.0, elevation), (0.0, -elevation)),  # top → bottom
        ((0.0, -elevation), (0.0, elevation)),  # bottom → top
    ]


def pair_group(pair: tuple[tuple[float, float], tuple[float, float]]) -> str:
    """``"left_right"`` for a profile flip (same elevation), ``"top_bottom"`` for a vertical one."""
    (_, e_in), (_, e_t) = pair
    return "left_right" if e_in == e_t else "top_bottom"


def _cameras(views: list[tuple[float, float]], model: nn.Module, size: int) -> Cameras:
    """The model's orbit cameras (its ``config.render`` framing) at (azimuth, elevation) ``views``."""
    return model.default_cameras([v[0] for v in views], [v[1] for v in views], size=size)


# --------------------------------------------------------------------------------------------- methods
def billboard(image: Tensor, input_cameras: Cameras, target_cameras: Cameras, facing: str = "viewer",
              two_sided: bool = False) -> Tensor:
    """Flat-picture baselines: each input image on a plane through the head centre, seen from the targets.

    ``facing="viewer"`` is the billboard of computer graphics: the plane turns to face every target camera
    and the input camera turns with it, so each target sees the input picture as the input camera saw it
    (unmirrored, upright in the target's own frame) — what a viewer gets with no 3D at all.
    ``facing="input"`` is a fixed card facing the input camera: seen from an angle it is foreshortened;
    from behind it is invisible (back-face culled) unless ``two_sided``, which shows the picture mirrored,
    as a plane of splats would — for near-symmetric heads that mirror is almost exactly the opposite
    profile, so the two-sided card scores ~22–29 dB on left↔right profile flips of synthetic heads.

    Target pixels whose rays miss the plane (or hit it behind the camera) and points that project outside
    the input image are white.

    Args:
        image: input views over white. ``[B, 3, h, w]``
        input_cameras: B input cameras (at the input image's size).
        target_cameras: V target cameras per input, flattened as ``B * V`` (shared size).
        facing: "viewer" (billboard) or "input" (fixed card).
        two_sided: with ``facing="input"``, also show the picture on the back of the card (mirrored).

    Returns:
        ``[B, V, 3, H, W]`` with V = len(target_cameras) // B.
    """
    B = image.shape[0]
    if len(input_cameras) != B or len(target_cameras) % B:
        raise ValueError(f"billboard: {B} images need {B} input cameras and B·V target cameras, "
                         f"got {len(input_cameras)} and {len(target_cameras)}")
    if facing not in ("viewer", "input"):
        raise ValueError(f"billboard: facing must be 'viewer' or 'input', got {facing!r}")
    V = len(target_cameras) // B
    H, W = target_cameras.height, target_cameras.width
    dtype, device = image.dtype, image.device
    # 1. target rays in world space
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype, device=device) + 0.5,
                            torch.arange(W, dtype=dtype, device=device) + 0.5, indexing="ij")  # [H, W]
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # [HW, 3]
    vm_t = target_cameras.viewmats.to(device, dtype).reshape(B, V, 4, 4)
    K_t = target_cameras.Ks.to(device, dtype).reshape(B, V, 3, 3)
    R_t = vm_t[..., :3, :3]  # [B, V, 3, 3]
    dirs_cam = pix @ torch.linalg.inv(K_t).transpose(-1, -2)  # [B, V, HW, 3]
    dirs = dirs_cam @ R_t  # [B, V, HW, 3]  (R^T d for row vectors)
    origins = (-(R_t.transpose(-1, -2) @ vm_t[..., :3, 3:])[..., 0])[:, :, None, :]  # [B, V, 1, 3]
    # 2. the (possibly target-turned) input camera, and the plane through the origin facing it
    vm_i = input_cameras.viewmats.to(device, dtype)[:, None].expand(B, V, 4, 4).clone()  # [B, V, 4, 4]
    if facing == "viewer":
        vm_i[..., :3, :3] = R_t  # the input camera's offset to the head, carried round to face each target
    centers = -(vm_i[..., :3, :3].transpose(-1, -2) @ vm_i[..., :3, 3:])[..., 0]  # [B, V, 3]
    normal = (centers / centers.norm(dim=-1, keepdim=True))[:, :, None, :]  # [B, V, 1, 3]
    denom = (dirs * normal).sum(-1)  # [B, V, HW]
    t = -(origins * normal).sum(-1) / torch.where(denom.abs() < 1e-8, torch.full_like(denom, 1e-8), denom)
    hit = (t > 0) & (denom.abs() >= 1e-8)  # [B, V, HW]
    if not two_sided:
        hit = hit & (denom < 0)  # the ray meets the front face (it travels against the normal)
    points = origins + t[..., None] * dirs  # [B, V, HW, 3]
    # 3. project into the input camera and sample the input image
    K_i = input_cameras.Ks.to(device, dtype)[:, None]  # [B, 1, 3, 3]
    cam = points @ vm_i[..., :3, :3].transpose(-1, -2) + vm_i[..., None, :3, 3]  # [B, V, HW, 3]
    uv = cam @ K_i.transpose(-1, -2)  # [B, V, HW, 3]
    uv = uv[..., :2] / uv[..., 2:].clamp_min(1e-8)  # [B, V, HW, 2] pixels
    grid = torch.stack([uv[..., 0] / input_cameras.width * 2 - 1, uv[..., 1] / input_cameras.height * 2 - 1], -1)
    grid = grid.reshape(B, V * H * W, 1, 2)  # [B, VHW, 1, 2]
    fg = torch.nn.functional.grid_sample(1.0 - image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    fg = fg.reshape(B, 3, V, H, W).permute(0, 2, 1, 3, 4)  # [B, V, 3, H, W]  (1 - rgb), zero = white
    fg = fg * hit.reshape(B, V, 1, H, W)
    return (1.0 - fg).clamp(0, 1)


def template_model(model: nn.Module) -> nn.Module:
    """The untrained template head: the model's architecture with freshly initialised weights (seed 0)."""
    from perchead.models.perchead import PercHead

    # reuse the frozen foundation model (never trained)
    dino = model.encoder.dino.model if model.encoder.dino is not None else None
    state = torch.get_rng_state()
    torch.manual_seed(0)
    try:
        fresh = PercHead(model.config, dino=dino)
    finally:
        torch.set_rng_state(state)
    return fresh.to(next(model.parameters()).device).eval()


# --------------------------------------------------------------------------------------------- evaluation
def _ground_truth(head, cameras: Cameras) -> tuple[Tensor, Tensor]:
    from perchead.data.synthetic import render_head

    out = render_head(head, cameras)
    return out["rgb"].float(), out["alpha"].float()  # [V, 3, H, W], [V, 1, H, W]


@torch.no_grad()
def _predict(method: str, models: dict[str, nn.Module], image: Tensor, mask: Tensor, input_cams: Cameras,
             target_cams: Cameras, size: int, fit_steps: int = 0) -> Tensor:
    """Predicted target views ``[B, V, 3, S, S]`` of one method for B inputs with V targets each."""
    B = image.shape[0]
    V = len(target_cams) // B
    if method in BASELINE_CARDS:
        return billboard(image, input_cams, target_cams, **BASELINE_CARDS[method])
    model = models["ours" if method == "ours_fit" else method]
    device = next(model.parameters()).device
    gaussians = model(image.to(device), mask.to(device))
    if method == "ours_fit":
        from perchead.fit.config import with_steps
        from perchead.fit.driver import fit_to_photo
        from perchead.geometry.gaussians import Gaussians

        with torch.enable_grad():
            gaussians = Gaussians.stack([
                fit_to_photo(model, gaussians[b], image[b : b + 1].to(device), mask[b : b + 1].to(device),
                             camera=input_cams[b], config=with_steps(None, fit_steps)).gaussians
                for b in range(B)
            ])
    rgb = model.render_at(gaussians, target_cams.viewmats.reshape(B, V, 4, 4), target_cams.Ks.reshape(B, V, 3, 3),
                          size, size).rgb  # [B, V, 3, S, S]
    return rgb.float().cpu().clamp(0, 1)


def _score(pred: Tensor, target: Tensor, nets: dict) -> dict[str, list[float]]:
    """Per-view metric values of ``[N, 3, S, S]`` predictions."""
    out = {"psnr": psnr(pred, target).tolist(), "ssim": ssim(pred, target).tolist()}
    for name, metric in nets.items():
        if metric.fn is not None:
            out[name] = metric.fn(pred, target).tolist()
    return out


def evaluate(model: nn.Module, config: EvalConfig, contact_sheet_path: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Runs both protocols for the three methods.

    Args:
        model: a trained PercHead (any device).
        config: evaluation settings.
        contact_sheet_path: optional PNG path for :func:`perchead.data.figures.contact_sheet` (first 4 subjects).
        progress: show a tqdm bar.

    Returns:
        ``{"novel": {method: {metric: value or None}}, "extreme": {...}, "extreme_by_pair":
        {"left_right": {...}, "top_bottom": {...}}, "meta": {...}}``.
    """
    from tqdm.auto import tqdm

    from perchead.data.synthetic import make_head, split_seeds

    model = model.eval()
    size = config.eval_size or model.config.render.render_size
    in_size = model.config.render.image_size
    models = {"ours": model, "template": template_model(model)}
    nets = network_metrics()
    seeds = split_seeds(config.split)
    if config.subjects > len(seeds):
        raise ValueError(f"split {config.split!r} has only {len(seeds)} subjects, asked for {config.subjects}")
    methods = METHODS + (("ours_fit",) if config.fit_steps else ())
    values = {p: {m: {k: [] for k in METRICS} for m in methods} for p in PROTOCOLS}
    for i in tqdm(range(config.subjects), disable=not progress, desc="evaluate", dynamic_ncols=True):
        head = make_head(seeds[i])
        # novel views: one input, several targets
        inp, targets = novel_views(i, config.novel_targets, config.seed)
        extremes = extreme_pairs(config.extreme_elevation)
        for protocol, inputs, target_views in (
            ("novel", [inp], [targets]),
            ("extreme", [p[0] for p in extremes], [[p[1]] for p in extremes]),
        ):
            input_cams = _cameras(inputs, model, in_size)
            image, mask = _ground_truth(head, input_cams)  # [B, 3, s, s], [B, 1, s, s]
            if config.photo_like_inputs:
                image, mask = augment_inputs(image, mask, InputAugmentConfig(p=1.0),
                                             torch.Generator().manual_seed(config.seed * 100_003 + i))
            flat_targets = [v for views in target_views for v in views]
            target_cams = _cameras(flat_targets, model, size)
            gt, _ = _ground_truth(head, target_cams)  # [B·V, 3, S, S]
            for method in methods:
                pred = _predict(method, models, image, mask, input_cams, target_cams, size,
                                config.fit_steps).flatten(0, 1)
                for name, vals in _score(pred, gt, nets).items():
                    values[protocol][method][name].extend(vals)
    def means(v: dict[str, list[float]], keep=lambda j: True) -> dict[str, float | None]:
        kept = {name: [x for j, x in enumerate(v[name]) if keep(j)] for name in METRICS}
        return {name: (finite_mean(kept[name]) if kept[name] else None) for name in METRICS}

    results: dict[str, Any] = {p: {m: means(values[p][m]) for m in methods} for p in PROTOCOLS}
    groups = [pair_group(pair) for pair in extreme_pairs(config.extreme_elevation)]  # one view per pair
    results["extreme_by_pair"] = {
        g: {m: means(values["extreme"][m], lambda j, g=g: groups[j % len(groups)] == g) for m in methods}
        for g in dict.fromkeys(groups)
    }
    results["meta"] = {
        "config": asdict(config),
        "eval_size": size,
        "input_size": in_size,
        "n_views": {p: len(values[p]["ours"]["psnr"]) for p in PROTOCOLS},
        "unavailable": {name: m.reason for name, m in nets.items() if m.fn is None},
        "psnr_cap_db": 100.0,
        "billboard": "faces each target camera (the input picture, unmirrored, from every view); "
                     "card_two_sided / card_one_sided: a fixed card facing the input camera, mirrored from "
                     "behind / back-face culled",
    }
    if contact_sheet_path:
        contact_sheet(model, contact_sheet_path, subjects=min(4, config.subjects), split=config.split)
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """Tables 1–2 layout: one table per protocol, methods as rows, PSNR↑ SSIM↑ LPIPS↓ DS↓ ArcFace↓."""
    names = {"billboard": "Billboard (faces the viewer)", "card_one_sided": "Fixed card (one-sided)",
             "card_two_sided": "Fixed card (two-sided, mirrored)", "template": "Template (untrained)", "ours": "Ours",
             "ours_fit": "Ours + photo-fit"}
    order = [m for m in TABLE_ORDER + ("ours_fit",) if m in results["novel"]]
    lines = []
    for protocol, title in (("novel", "Novel views"), ("extreme", "Extreme views")):
        lines += [f"| {title} | PSNR ↑ | SSIM ↑ | LPIPS ↓ | DS ↓ | ArcFace ↓ |", "|---|---|---|---|---|---|"]
        for method in order:
            r = results[protocol][method]
            cells = [
                "n/a" if r[k] is None else (f"{r[k]:.2f}" if k == "psnr" else f"{r[k]:.4f}") for k in METRICS
            ]
            lines.append(f"| {names[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    by_pair = results.get("extreme_by_pair", {})
    if by_pair:
        titles = {"left_right": "left↔right", "top_bottom": "top↔bottom"}
        head = " | ".join(f"{titles.get(g, g)} {k}" for g in by_pair for k in ("PSNR ↑", "SSIM ↑"))
        lines += [f"| Extreme views by pair | {head} |", "|---|" + "---|" * (2 * len(by_pair))]
        for method in order:
            cells = [f"{by_pair[g][method]['psnr']:.2f} | {by_pair[g][method]['ssim']:.4f}" for g in by_pair]
            lines.append(f"| {names[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    unavailable = results.get("meta", {}).get("unavailable", {})
    if unavailable:
        lines.append("n/a: " + "; ".join(f"{k}: {v}" for k, v in unavailable.items()))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI
def write_results(results: dict[str, Any], model: str, path: str | Path, table: str) -> Path:
    """Records the evaluated model in ``results["meta"]``, writes the JSON and prints the table."""
    results["meta"]["model"] = str(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table)
    print(f"\nwrote {out}")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from perchead.models.perchead import PercHead

    p = argparse.ArgumentParser(prog="python -m perchead.evaluation.reconstruction", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder or Hugging Face repo id")
    p.add_argument("--subjects", type=int, default=100, help="held-out test heads")
    p.add_argument("--output", default="results.json", help="JSON results path")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--novel-targets", type=int, default=8)
    p.add_argument("--eval-size", type=int, default=None, help="target view size (default: model render_size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-steps", type=int, default=0, help="also score our head after this many photo-fit steps")
    p.add_argument("--photo-like-inputs", action="store_true",
                   help="robustness: inputs made to look like matted photos (targets stay clean)")
    p.add_argument("--contact-sheet", default=None, help="also write a contact-sheet PNG here")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    model = PercHead.from_pretrained(args.model).to(args.device)
    config = EvalConfig(subjects=args.subjects, split=args.split, novel_targets=args.novel_targets,
                        eval_size=args.eval_size, seed=args.seed, fit_steps=args.fit_steps,
                        photo_like_inputs=args.photo_like_inputs)
    results = evaluate(model, config, contact_sheet_path=args.contact_sheet, progress=not args.no_progress)
    write_results(results, args.model, args.output, markdown_table(results))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
