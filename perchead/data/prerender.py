"""Command line: pre-render synthetic heads to the on-disk multi-view format (paper §3.4 training data).

    python -m perchead.data.prerender --split train --subjects 2000 --views 16 --size 128 --out data/synthetic

Subject folders are ``synthetic-<seed>`` with seeds taken from the start of the split's range
(:data:`perchead.data.synthetic.SPLITS`), or from ``--start`` on. See :mod:`perchead.data.multiview`.
"""

from __future__ import annotations

import argparse
import json

from perchead.data.multiview import export_synthetic
from perchead.data.synthetic import split_seeds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="seed range")
    parser.add_argument("--subjects", type=int, default=100, help="number of heads to write")
    parser.add_argument("--start", type=int, default=0, help="offset into the split's seed range")
    parser.add_argument("--views", type=int, default=16, help="views per head (first 16 are fixed key views)")
    parser.add_argument("--size", type=int, default=128, help="square image side in pixels")
    parser.add_argument("--density", type=float, default=1.0, help="Gaussian budget multiplier")
    parser.add_argument("--backend", default="auto", help="renderer backend (auto, torch, gsplat)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    seeds = split_seeds(args.split)
    if not 0 <= args.start < len(seeds) or args.subjects < 1 or args.start + args.subjects > len(seeds):
        parser.error(f"--start {args.start} --subjects {args.subjects} exceed the {args.split} split ({len(seeds)} seeds)")
    summary = export_synthetic(args.out, seeds[args.start:args.start + args.subjects], args.views, args.size,
                               density=args.density, backend=args.backend, progress=True)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
