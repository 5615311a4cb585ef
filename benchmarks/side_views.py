"""The side views of real portraits with two fit settings, one row each: the docs figure of what a change to the
fit does away from the photo.

    python benchmarks/side_views.py --before gaussians.unseen_colors=False --figure docs/side_views.jpg [--all]

For each portrait (the public-domain ones, or with ``--all`` every portrait, for a figure that is not committed:
the others state no licence), the app's fit (``FitConfig.preset("real")``) runs with the ``--before`` overrides
and with ``--after`` ones, and each head is rendered at yaw 0°, ±40°, ±90° and 180°; the rows are the photo and
then the renders, before above after. Written as a JPEG (by the figure's extension).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import config_overrides  # noqa: E402

from perchead.data.figures import save_labelled_grid  # noqa: E402
from perchead.fit.config import FitConfig  # noqa: E402
from perchead.pipelines.reconstruct import PercHeadPipeline  # noqa: E402

VIEWS = (0.0, 40.0, -40.0, 90.0, -90.0, 180.0)


def main(argv=None):
    from perchead.data import portraits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights_card")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--before", action="append", metavar="GROUP.FIELD=VALUE", help="the first row's overrides")
    p.add_argument("--after", action="append", metavar="GROUP.FIELD=VALUE", help="the second row's overrides")
    p.add_argument("--all", action="store_true", help="every portrait, not only the public-domain ones")
    p.add_argument("--size", type=int, default=160, help="side of each picture")
    p.add_argument("--figure", default="docs/side_views.jpg")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    portraits.fetch()
    pipe = PercHeadPipeline.from_pretrained(args.model, device="cpu")
    cams = pipe.model.default_cameras(list(VIEWS), size=args.size)
    configs = [FitConfig.preset("real", config_overrides(FitConfig, sets)) for sets in (args.before, args.after)]
    rows = []
    names = portraits.NAMES if args.all else portraits.PUBLIC_DOMAIN
    for name in names:
        path = portraits.path(name)
        if path is None:
            continue
        for config in configs:
            rec = pipe(str(path), fit_steps=args.steps, fit=config)
            with torch.no_grad():
                views = pipe.model.render_views(rec.gaussians, cams).rgb[0].clamp(0, 1)  # [V, 3, s, s]
            photo = torch.nn.functional.interpolate(rec.preprocessed[0].image[0][None].float(), size=(args.size,) * 2,
                                                    mode="area")[0]  # [3, s, s]
            rows.append(torch.cat([photo, *views], dim=-1))  # [3, s, (V + 1) s]
        print(name, flush=True)
    labels = ["photo"] + [f"{v:+.0f}°" for v in VIEWS]
    print(save_labelled_grid(torch.cat(rows, dim=-2), labels, args.size, args.figure))


if __name__ == "__main__":
    main()
