"""Regenerates the app's examples from held-out synthetic heads (paper §4 evaluation views, §3.5 maps).

The examples are the project's own data — no photographs of people. Every one shows a TEST-split
synthetic head (``perchead.data.synthetic``, seeds disjoint from training) with the model's input
framing (orbit radius 0.7 m, 30° field of view):

- ``examples/*.png``: RGBA renders (the alpha is the head mask, so the app needs no face detector for
  them) from a range of angles: front, three-quarter, profile, a back-ish view and one from above;
- ``examples/maps/*.png``: the 19-class label maps of other heads for the Editing tab, coloured with the
  app's palette (:func:`perchead.geometry.segmentation.labels_to_color`: exact palette colours, white
  background) and saved losslessly, so ``color_to_labels`` reads them back exactly.

    python examples/make_examples.py            # writes both (≈ 256², < 1 MB in total)
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
# the Editing tab's maps, of other heads than the reconstruction examples'
MAPS = (
    ("map0_front", 6, 0.0, 5.0),
    ("map1_three_quarter", 7, 25.0, 5.0),
    ("map2_front", 8, -10.0, 0.0),
)


def render_test_view(index: int, azimuth: float, elevation: float, size: int):
    """(head, ``render_head`` output) of test-split head ``index`` seen from one orbit camera."""
    from perchead.geometry.cameras import orbit_cameras
    from perchead.data.synthetic import make_head, render_head, split_seeds

    head = make_head(split_seeds("test")[index])
    cameras = orbit_cameras([azimuth], [elevation], radius=0.7, fov_deg=30.0, size=size)
    return head, render_head(head, cameras)


def make_examples(out: str | Path = HERE, size: int = 256) -> list[Path]:
    """Renders :data:`VIEWS` as RGBA PNGs into ``out``; returns the written paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, index, azimuth, elevation in VIEWS:
        _, views = render_test_view(index, azimuth, elevation, size)
        alpha = views["alpha"][0, 0].clamp(0, 1)  # [H, W]
        # rgb is composited over white; un-premultiply so the PNG's colour is the head's colour
        rgb = ((views["rgb"][0] - (1 - alpha)) / alpha.clamp(min=1e-3)).clamp(0, 1)  # [3, H, W]
        rgba = np.concatenate([rgb.permute(1, 2, 0).numpy(), alpha[..., None].numpy()], axis=-1)  # [H, W, 4]
        path = out / f"{stem}.png"
        Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(path, optimize=True)
        paths.append(path)
    return paths


def make_maps(out: str | Path = HERE / "maps", size: int = 256) -> list[tuple[Path, str]]:
    """Renders the label maps of :data:`MAPS` as palette PNGs; returns (path, the head's caption) per map."""
    from perchead.geometry.segmentation import labels_to_color

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, index, azimuth, elevation in MAPS:
        head, views = render_test_view(index, azimuth, elevation, size)
        path = out / f"{stem}.png"
        Image.fromarray(labels_to_color(views["labels"][0]), "RGB").save(path, optimize=True)
        written.append((path, head.caption))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE), help="output folder (default: examples/; maps go to OUT/maps)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()
    for path in make_examples(args.out, args.size):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB")
    for path, caption in make_maps(Path(args.out) / "maps", args.size):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB  ({caption})")


if __name__ == "__main__":
    main()
