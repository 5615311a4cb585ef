"""Regenerates the app's example inputs: renders of held-out synthetic heads (paper §4 evaluation views).

The examples are the project's own data — no photographs of people. Each is an RGBA PNG (the alpha is
the head mask, so the app needs no face detector for them) of a TEST-split synthetic head
(``perchead.data.synthetic``, seeds disjoint from training), rendered with the model's input framing
(orbit radius 0.7 m, 30° field of view) from a range of angles: front, three-quarter, profile, a
back-ish view and one from above.

    python examples/make_examples.py            # writes examples/*.png (≈ 256², < 1 MB in total)
    python examples/make_examples.py --size 320 --out /tmp/examples
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
# (file stem, test-split index, azimuth°, elevation°); azimuth +90 = the head's own left side.
VIEWS = (
    ("head0_front", 0, 0.0, 5.0),
    ("head1_three_quarter", 1, 35.0, 8.0),
    ("head2_profile", 2, -90.0, 0.0),
    ("head3_back_three_quarter", 3, 150.0, 10.0),
    ("head4_from_above", 4, -20.0, 30.0),
    ("head5_front", 5, 10.0, -5.0),
)


def make_examples(out: str | Path = HERE, size: int = 256) -> list[Path]:
    """Renders :data:`VIEWS` of test-split heads as RGBA PNGs.

    Args:
        out: output folder.
        size: image side in pixels.

    Returns:
        The written paths.
    """
    from perchead.cameras import orbit_cameras
    from perchead.data.synthetic import make_head, render_head, split_seeds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = split_seeds("test")
    paths = []
    for stem, index, azimuth, elevation in VIEWS:
        head = make_head(seeds[index])
        cameras = orbit_cameras([azimuth], [elevation], radius=0.7, fov_deg=30.0, size=size)
        views = render_head(head, cameras)
        alpha = views["alpha"][0, 0].clamp(0, 1)  # [H, W]
        # rgb is composited over white; un-premultiply so the PNG's colour is the head's colour
        rgb = ((views["rgb"][0] - (1 - alpha)) / alpha.clamp(min=1e-3)).clamp(0, 1)  # [3, H, W]
        rgba = np.concatenate(
            [rgb.permute(1, 2, 0).numpy(), alpha[..., None].numpy()], axis=-1
        )  # [H, W, 4]
        path = out / f"{stem}.png"
        Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(path, optimize=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="output folder (default: examples/)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()
    for path in make_examples(args.out, args.size):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
