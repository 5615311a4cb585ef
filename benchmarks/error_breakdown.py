"""Where a checkpoint's novel-view error lies: in the outline or inside the head, and at which angles.

On the evaluation's novel-view protocol (:func:`perchead.evaluation.reconstruction.novel_views`: one
near-frontal input per test head, 8 targets around it), every target render is split by
:func:`perchead.evaluation.metrics.error_regions` into the pixels where the predicted and the true
silhouettes agree (``interior``) and where they disagree (``missed``: the head is there but the render
is not; ``spill``: the render covers background). Printed: the share of all squared error in each
region, the share of pixels, the PSNR the renders would have with a perfect outline and their own
colours, silhouette IoU, and PSNR by the target's azimuth away from the input's.

Usage::

    python benchmarks/error_breakdown.py --model weights_card --subjects 100 --json breakdown.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = ((0, 60), (60, 120), (120, 181))  # |target azimuth − input azimuth|, degrees


def breakdown(model_path: str, subjects: int, targets: int = 8) -> dict:
    """Runs the novel-view protocol on the first ``subjects`` test heads and splits the error."""
    import torch

    from perchead.data.synthetic import make_head, render_head, split_seeds
    from perchead.evaluation.metrics import ERROR_REGIONS, error_regions
    from perchead.evaluation.reconstruction import novel_views
    from perchead.models.perchead import PercHead
    from perchead.models.similarity import psnr

    model = PercHead.from_pretrained(model_path).eval()
    size = model.config.render.render_size
    in_size = model.config.render.image_size
    seeds = split_seeds("test")
    views = []  # one dict per target view
    for i in range(subjects):
        head = make_head(seeds[i])
        inp, tgts = novel_views(i, targets)
        source = render_head(head, model.default_cameras([inp[0]], [inp[1]], size=in_size))
        cams = model.default_cameras([t[0] for t in tgts], [t[1] for t in tgts], size=size)
        truth = render_head(head, cams)
        with torch.no_grad():
            gaussians = model(source["rgb"].float(), source["alpha"].float())
            out = model.render_at(gaussians, cams.viewmats[None], cams.Ks[None], size, size)
        pred, alpha = out.rgb[0].float().clamp(0, 1), out.alpha[0].float()  # [V, 3, S, S], [V, 1, S, S]
        gt, gt_alpha = truth["rgb"].float(), truth["alpha"].float()
        regions = error_regions(pred, alpha, gt, gt_alpha)
        union = sum(regions[k + "_pixels"] for k in ("interior", "missed", "spill"))  # [V]
        iou = regions["interior_pixels"] / union.clamp_min(1e-12)  # [V]
        for v, (azimuth, _) in enumerate(tgts):
            views.append({"psnr": psnr(pred[v : v + 1], gt[v : v + 1]).item(), "iou": iou[v].item(),
                          "dyaw": abs(((azimuth - inp[0] + 180) % 360) - 180),
                          **{k: regions[k][v].item() for k in regions}})
    total = sum(v["mse"] for v in views)  # views of one size: pooled squared error
    mean = statistics.fmean
    result = {
        "model": model_path, "subjects": subjects, "views": len(views),
        "psnr": mean(v["psnr"] for v in views),
        "psnr_true_silhouette": mean(v["psnr_true_silhouette"] for v in views),
        "silhouette_iou": mean(v["iou"] for v in views),
        "error_share": {k: sum(v[k] * v["mse"] for v in views) / total for k in ERROR_REGIONS},
        "pixel_share": {k: mean(v[k + "_pixels"] for v in views) for k in ERROR_REGIONS},
        "by_azimuth": {},
    }
    for lo, hi in BANDS:
        band = [v for v in views if lo <= v["dyaw"] < hi]
        result["by_azimuth"][f"{lo}-{min(hi, 180)}"] = {
            "views": len(band), "psnr": mean(v["psnr"] for v in band),
            "error_share": sum(v["mse"] for v in band) / total,
            "outline_error_share": sum((v["missed"] + v["spill"]) * v["mse"] for v in band)
            / sum(v["mse"] for v in band),
        }
    return result


def main(argv: list[str] | None = None) -> dict:
    from _common import report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights_card", help="checkpoint folder")
    p.add_argument("--subjects", type=int, default=100, help="test heads (the evaluation's first N)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if args.subjects < 1:
        p.error("--subjects must be >= 1")
    result = breakdown(args.model, args.subjects)
    report(result, args.json)
    return result


if __name__ == "__main__":
    main()
