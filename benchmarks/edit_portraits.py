"""Two editing checkpoints side by side on real portraits: hair-colour prompts on a photo's map.

    python benchmarks/edit_portraits.py --before runs/old_card --after weights_card \
        [--prompts blonde red blue green pink purple] [--figure docs/editing_portraits.png] [--json out.json]

``--before`` / ``--after`` are folders with ``edit/``, ``style/`` and ``parser/`` (as
:meth:`perchead.pipelines.edit.PercHeadEditPipeline.from_pretrained` reads). For each portrait that ships in
a public package (perchead/data/portraits.py fetches them) the ``--after`` pipeline turns the photo into a map
(its face landmarks and matte), and both editors build a head from that same map with every
"<colour> hair" prompt. Printed per checkpoint and prompt: the front render's mean hair colour (inside
the map's eroded hair region) and, for the chromatic colours, the hue error in degrees against the
prompted albedo (``HAIR_COLORS``) and the saturation. Real photos have no ground truth for "this person
with blue hair", so hue is the measure; the synthetic evaluation (``perchead.evaluation.editing``) scores
against repainted ground truth. The figure shows the public-domain portraits only: model input, map, then
the front render of every prompt before and after.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report  # noqa: E402

from perchead.data.figures import save_labelled_grid  # noqa: E402
from perchead.data.synthetic import HAIR_COLORS  # noqa: E402
from perchead.evaluation.editing import region_mean_color  # noqa: E402
from perchead.geometry.segmentation import labels_to_color  # noqa: E402
from perchead.pipelines.edit import PercHeadEditPipeline

PORTRAITS = ("astronaut.png", "grace_hopper.jpg", "group.jpg", "tight_gray.png")
DEFAULT_PROMPTS = ("blonde", "red", "blue", "green", "pink", "purple")
HAIR = 13


def hue_saturation(rgb) -> tuple[float, float]:
    """(hue in degrees, HSV saturation) of an RGB triple in [0, 1]."""
    h, s, _ = colorsys.rgb_to_hsv(*[float(v) for v in rgb])
    return 360.0 * h, s


def hue_error(rgb, target) -> float:
    """Circular hue distance in degrees between two RGB colours."""
    d = abs(hue_saturation(rgb)[0] - hue_saturation(target)[0]) % 360.0
    return min(d, 360.0 - d)


def main(argv=None):
    from perchead.data import portraits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="editing checkpoint folder (e.g. a copy of the previous weights_card)")
    p.add_argument("--after", default="weights_card")
    p.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS), help="hair colours (HAIR_COLORS keys)")
    p.add_argument("--figure", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    unknown = [c for c in args.prompts if c not in HAIR_COLORS]
    if unknown:
        p.error(f"unknown hair colours {unknown}; choose from {sorted(HAIR_COLORS)}")
    torch.set_num_threads(os.cpu_count() or 1)
    portraits.fetch()
    pipes = {"before": PercHeadEditPipeline.from_pretrained(args.before, device="cpu"),
             "after": PercHeadEditPipeline.from_pretrained(args.after, device="cpu")}
    S = pipes["after"].image_size
    results: dict = {}
    rows = []
    errors: dict[str, list[float]] = {tag: [] for tag in pipes}
    for name in PORTRAITS:
        path = portraits.path(name)
        if path is None:
            continue
        labels, prep = pipes["after"].segment(str(path), return_preprocessed=True)  # [S, S]
        hair = labels == HAIR
        if int(hair.sum()) < 50:
            results[name] = {"skipped": "no hair in the map"}
            continue
        entry: dict = {}
        row = [prep.image[0].float(), torch.from_numpy(labels_to_color(labels)).permute(2, 0, 1).float() / 255]
        for tag, pipe in pipes.items():
            entry[tag] = {}
            for colour in args.prompts:
                edit = pipe(labels, style_text=f"{colour} hair", cameras=pipe.editor.default_cameras([0.0], size=S))
                rgb = edit.views.rgb[0, 0].float().clamp(0, 1)  # [3, S, S]
                silhouette = edit.views.alpha[0, 0, 0].float() > 0.5  # [S, S]
                mean = region_mean_color(rgb, hair, silhouette, erode=1)
                target = HAIR_COLORS[colour]
                chromatic = hue_saturation(target)[1] > 0.3
                entry[tag][colour] = {
                    "hair_rgb": None if mean is None else [round(float(v), 3) for v in mean],
                    "hue_error_deg": None if mean is None or not chromatic else round(hue_error(mean, target), 1),
                    "saturation": None if mean is None else round(hue_saturation(mean)[1], 3),
                }
                if mean is not None and chromatic:
                    errors[tag].append(hue_error(mean, target))
                row.append(rgb)
        results[name] = entry
        if name in portraits.PUBLIC_DOMAIN:
            rows.append(torch.cat(row, dim=-1))  # [3, S, (2 + 2P) S]
    results["mean_hue_error_deg"] = {tag: round(sum(v) / len(v), 1) if v else None for tag, v in errors.items()}
    if args.figure and rows:
        labels_row = ["model input", "map"] + [f"{c} (before)" for c in args.prompts] + [f"{c} (after)" for c in args.prompts]
        save_labelled_grid(torch.cat(rows, dim=-2), labels_row, S, args.figure)
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
