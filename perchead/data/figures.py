"""Labelled image grids: the contact sheet of a model's predictions beside ground truth, and the decoder layers.

Training writes a contact sheet every ``--eval-every`` steps and the reconstruction evaluation one per run;
the editing evaluation writes its figure with :func:`save_labelled_grid`. :func:`decoder_layers_figure`
shows the head after each 3D decoder layer (supplement §7); the figure in docs/method.md is

    python -m perchead.data.figures --model weights_card --output docs/decoder_layers.png \
        examples/head0_front.png examples/head1_three_quarter.png examples/photo_astronaut.jpg
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from perchead.data.synthetic import make_head, render_head, split_seeds
from perchead.geometry.images import to_uint8
from perchead.pipelines.reconstruct import PercHeadPipeline

CONTACT_VIEWS = (("front", 0.0, 0.0), ("side", 90.0, 0.0), ("back", 180.0, 0.0), ("top", 0.0, 75.0))


@torch.no_grad()
def contact_sheet(model: nn.Module, path: str | Path, subjects: int = 4, split: str = "test",
                  input_view: tuple[float, float] = (20.0, 5.0)) -> Path:
    """Writes a PNG: per subject a row of input, then front / side / back / top as (ground truth, ours).

    Args:
        model: a PercHead.
        path: output PNG.
        subjects: rows (first seeds of ``split``).
        split: seed split.
        input_view: (azimuth, elevation) of the input, degrees.

    Returns:
        The path.
    """
    size = model.config.render.render_size
    in_size = model.config.render.image_size
    device = next(model.parameters()).device
    rows = []
    for i in range(subjects):
        head = make_head(split_seeds(split)[i])
        inp = render_head(head, model.default_cameras([input_view[0]], [input_view[1]], size=in_size))
        image, mask = inp["rgb"].float(), inp["alpha"].float()  # [1, 3, s, s], [1, 1, s, s]
        cams = model.default_cameras([a for _, a, _ in CONTACT_VIEWS], [e for _, _, e in CONTACT_VIEWS], size=size)
        gt = render_head(head, cams)["rgb"].float()  # [4, 3, S, S]
        gaussians = model(image.to(device), mask.to(device))
        pred = model.render_views(gaussians, cams).rgb[0].float().cpu().clamp(0, 1)  # [4, 3, S, S]
        inp = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)[0]
        tiles = [inp] + [t for k in range(len(CONTACT_VIEWS)) for t in (gt[k], pred[k])]
        rows.append(torch.cat(tiles, dim=-1))  # [3, S, 9S]
    grid = torch.cat(rows, dim=-2)  # [3, subjects·S, 9S]
    labels = ["input"] + [f"{n} {w}" for n, _, _ in CONTACT_VIEWS for w in ("GT", "ours")]
    return save_labelled_grid(grid, labels, size, path)


def save_labelled_grid(grid: Tensor, labels: list[str], size: int, path: str | Path) -> Path:
    """Writes an image grid ``[3, R·S, C·S]`` as a PNG with one label above each ``size``-wide column."""
    from PIL import Image, ImageDraw

    header = 14
    array = to_uint8(grid)  # [R·S, C·S, 3]
    canvas = Image.new("RGB", (array.shape[1], array.shape[0] + header), "white")
    canvas.paste(Image.fromarray(array), (0, header))
    draw = ImageDraw.Draw(canvas)
    for k, label in enumerate(labels):
        draw.text((k * size + 3, 1), label, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def decoder_layers_figure(pipeline: PercHeadPipeline, photos: list, path: str | Path, size: int | None = None) -> Path:
    """Writes a PNG: per photo, the model input, then the head after decoder layer 1 … L (front above ¾ left).

    Args:
        pipeline: the reconstruction pipeline.
        photos: portraits (paths or anything :meth:`PercHeadPipeline.decoder_layers` takes).
        path: output PNG.
        size: side of each picture (default: the model's render size).

    Returns:
        The path.
    """
    import torch.nn.functional as F

    size = size or pipeline.model.config.render.render_size
    rows = []
    for photo in photos:
        layers = pipeline.decoder_layers(photo, size=size)
        image = F.interpolate(layers.preprocessed[0].image.float(), size=(size, size), mode="bilinear",
                              antialias=True)[0].clamp(0, 1).cpu()  # [3, S, S]
        inputs = torch.cat([image, torch.ones_like(image).expand(3, (len(layers.view_captions) - 1) * size, size)], 1)
        columns = [layers.rgb[0, k].transpose(0, 1).flatten(1, 2).float().cpu() for k in range(layers.n_layers)]
        rows.append(torch.cat([inputs, *columns], dim=-1))  # [3, V·S, (1 + L)·S]
    labels = ["input", *(f"layer {k + 1}" + (" = model" if k + 1 == layers.n_layers else "")
                         for k in range(layers.n_layers))]
    return save_labelled_grid(torch.cat(rows, dim=-2), labels, size, path)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m perchead.data.figures",
                                     description="the decoder-layer figure (supplement §7) of some portraits")
    parser.add_argument("photos", nargs="+", help="portraits (one pair of rows each)")
    parser.add_argument("--model", default="weights_card", help="checkpoint folder or Hub repo id")
    parser.add_argument("--output", default="decoder_layers.png", help="PNG to write")
    parser.add_argument("--size", type=int, default=None, help="side of each picture (default: the render size)")
    args = parser.parse_args(argv)
    pipeline = PercHeadPipeline.from_pretrained(args.model)
    print(decoder_layers_figure(pipeline, args.photos, args.output, args.size))


if __name__ == "__main__":
    main()
