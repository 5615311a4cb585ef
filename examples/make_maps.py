"""Regenerates the Editing tab's example segmentation maps (paper §3.5, supplement §8).

Each map is the 19-class label map of a held-out (TEST-split) synthetic head (``perchead.data.synthetic``,
seeds disjoint from training), rendered with the model's input framing (orbit radius 0.7 m, 30° field of
view), coloured with the app's palette (:func:`perchead.segmentation.labels_to_color`: exact palette
colours, white background) and saved as a lossless PNG, so ``color_to_labels`` reads it back exactly.
The examples' captions (which describe each head's style) are printed.

    python examples/make_maps.py                # writes examples/maps/*.png (256², a few KiB each)
    python examples/make_maps.py --size 128 --out /tmp/maps
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
# (file stem, test-split index, azimuth°, elevation°); other heads than the reconstruction examples'.
MAPS = (
    ("map0_front", 6, 0.0, 5.0),
    ("map1_three_quarter", 7, 25.0, 5.0),
    ("map2_front", 8, -10.0, 0.0),
)


def make_maps(out: str | Path = HERE / "maps", size: int = 256) -> list[tuple[Path, str]]:
    """Renders the label maps of :data:`MAPS` as palette PNGs.

    Args:
        out: output folder.
        size: image side in pixels.

    Returns:
        (written path, the head's caption) per map.
    """
    from perchead.cameras import orbit_cameras
    from perchead.data.synthetic import make_head, render_head, split_seeds
    from perchead.segmentation import labels_to_color

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = split_seeds("test")
    written = []
    for stem, index, azimuth, elevation in MAPS:
        head = make_head(seeds[index])
        cameras = orbit_cameras([azimuth], [elevation], radius=0.7, fov_deg=30.0, size=size)
        labels = render_head(head, cameras)["labels"][0]  # [H, W] long
        path = out / f"{stem}.png"
        Image.fromarray(labels_to_color(labels), "RGB").save(path, optimize=True)
        written.append((path, head.caption))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "maps"), help="output folder (default: examples/maps/)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()
    for path, caption in make_maps(args.out, args.size):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KiB  ({caption})")


if __name__ == "__main__":
    main()
