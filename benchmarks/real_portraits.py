"""Two checkpoints side by side on real portraits: what each makes of a matted photo (no photo-fit).

    python benchmarks/real_portraits.py --before runs/old_card --after weights_card \
        [--figure docs/real_portraits.png] [--json real_portraits.json]
    PYTHONPATH=/tmp/dlibpkgs python benchmarks/real_portraits.py … --likeness   # + dlib (see fit_identity.py)

For each portrait that ships in a public package (perchead/data/portraits.py fetches them), both checkpoints
reconstruct the head from the same preprocessed input (crop + matte). Printed per portrait and
checkpoint: the mean saturation and brightness of the rendered front view inside its silhouette against
the input's (a model that turns photos into a uniform cartoon palette moves these), the silhouette IoU
between the front render and the input matte, and, where dlib is importable, the share of renders at
0°, ±20°, ±40° that dlib's ResNet recognises as the person (``--likeness``: distance < 0.6; never used for
training; minutes on 2 cores, as dlib's CNN detector runs wherever its HOG detector finds no face).
The figure shows the public-domain portraits only: model input, then front, ¾ and profile before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report  # noqa: E402

from perchead.data.figures import save_labelled_grid  # noqa: E402
from perchead.pipelines.reconstruct import PercHeadPipeline  # noqa: E402

FIGURE_VIEWS = (("front", 0.0), ("3/4", 45.0), ("profile", 90.0))
ANGLES = (0.0, 20.0, -20.0, 40.0, -40.0)
PORTRAITS = ("astronaut.png", "grace_hopper.jpg", "group.jpg", "tight_gray.png")


def colour_stats(rgb: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean HSV saturation and value of ``rgb [3, H, W]`` inside ``mask [H, W]`` (bool)."""
    hi, lo = rgb.max(0).values, rgb.min(0).values  # [H, W]
    saturation = (hi - lo) / hi.clamp_min(1e-6)
    return {"saturation": round(float(saturation[mask].mean()), 3), "value": round(float(hi[mask].mean()), 3)}


def main(argv=None):
    from perchead.data import portraits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="checkpoint folder (e.g. a copy of the previous weights_card)")
    p.add_argument("--after", default="weights_card")
    p.add_argument("--figure", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--likeness", action="store_true", help="also score renders with dlib (installed separately)")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    portraits.fetch()
    yard = None
    if args.likeness:
        from fit_identity import THRESHOLD, Yardstick, to_uint8

        yard = Yardstick()
    pipes = {"before": PercHeadPipeline.from_pretrained(args.before, device="cpu"),
             "after": PercHeadPipeline.from_pretrained(args.after, device="cpu")}
    S = pipes["after"].model.config.render.render_size
    results, rows = {}, []
    for name in PORTRAITS:
        path = portraits.path(name)
        if path is None:
            continue
        entry, row = {}, None
        for tag, pipe in pipes.items():
            rec = pipe(str(path))
            pre = rec.preprocessed[0]
            cams = pipe.model.default_cameras([a for _, a in FIGURE_VIEWS], size=S)
            with torch.no_grad():
                out = pipe.model.render_views(rec.gaussians, cams)
            rgb, alpha = out.rgb[0].float().clamp(0, 1), out.alpha[0, :, 0].float()  # [V, 3, S, S], [V, S, S]
            image = torch.nn.functional.interpolate(pre.image.float(), size=(S, S), mode="bilinear")[0]  # [3, S, S]
            matte = torch.nn.functional.interpolate(pre.mask.float(), size=(S, S), mode="bilinear")[0, 0] > 0.5
            sil = alpha[0] > 0.5
            entry[tag] = {"render": colour_stats(rgb[0], sil), "input": colour_stats(image, matte),
                          "silhouette_iou": round(float((sil & matte).sum() / (sil | matte).sum().clamp_min(1)), 3)}
            if yard is not None:
                from PIL import Image

                ref = yard.descriptor(np.asarray(Image.open(path).convert("RGB")))
                if ref is not None:
                    with torch.no_grad():
                        views = pipe.model.render_views(rec.gaussians, pipe.model.default_cameras(list(ANGLES), size=384))
                    dists = [yard.descriptor(to_uint8(v)) for v in views.rgb[0]]
                    hits = [d is not None and float(np.linalg.norm(d - ref)) < THRESHOLD for d in dists]
                    entry[tag]["recognised"] = sum(hits) / len(hits)
            if name in portraits.PUBLIC_DOMAIN:
                row = [image] if row is None else row
                row += list(rgb)
        results[name] = entry
        if row is not None:
            rows.append(torch.cat(row, dim=-1))  # [3, S, 7S]
    if args.figure and rows:
        labels = ["model input"] + [f"{v} before" for v, _ in FIGURE_VIEWS] + [f"{v} after" for v, _ in FIGURE_VIEWS]
        save_labelled_grid(torch.cat(rows, dim=-2), labels, S, args.figure)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
