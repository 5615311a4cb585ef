"""What the Space's endpoints send back: their outputs in API order, the summaries in words, and the few files
the pipelines do not write themselves (the decoder-layer strip, the coloured segmentation map, the editing
model's input). ``app.py`` calls these from each job; nothing here touches Gradio.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from perchead.geometry.gaussians import save_ply
from perchead.geometry.images import to_uint8
from perchead.geometry.segmentation import labels_to_color, resize_labels


def seconds_words(value: float) -> str:
    """"0.04 s" rather than "0.0 s" for the quick steps, "2.3 s" for the others."""
    return f"{value:.2f} s" if value < 0.95 else f"{value:.1f} s"


def plain_summary(timings: dict[str, float], notes: list[str], pending: str | None) -> str:
    """Timings in words ("3D head in 0.4 s · …"), what is still coming, and the notes as a list."""
    head = sum(timings.get(k, 0.0) for k in ("preprocess", "labels", "style_preprocess", "style", "encode",
                                             "decode", "gaussians", "fit"))
    files = sum(v for k, v in timings.items() if k.startswith("export_") or k == "novel_views")
    line = f"**3D head in {seconds_words(head)}**"
    line += f" (fitting to the photo: {seconds_words(timings['fit'])})" if "fit" in timings else ""
    line += f" · files and views in {seconds_words(files)}" if files else ""
    if "turntable" in timings:
        line += f" · turntable in {seconds_words(timings['turntable'])}"
    if pending:
        line += f" · {pending}"
    return "\n".join([line, *(f"- {note}" for note in notes)])


def rounded(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per stage to the millisecond, as the API's ``timings`` output."""
    return {k: round(v, 3) for k, v in timings.items()}


def result(out, model_input: str, notes: list[str], pending: str | None = None) -> tuple:
    """The 8 outputs of /reconstruct and /edit (API order): .ply, viewer copy, video, views, model input,
    downloads, timings, summary. Also called for early results (``pending`` says what is still coming).

    Args:
        out: what :func:`perchead.export.write_outputs` wrote.
        model_input: the picture of what the model saw.
        notes: remarks for the summary.
        pending: what is still coming, or None for the final result.
    """
    return (
        str(out.files["ply"]),
        str(out.viewer),
        str(out.video) if out.video else None,
        [(str(path), caption) for caption, path in out.views],
        model_input,
        [str(path) for path in out.files.values()],
        rounded(out.timings),
        plain_summary(out.timings, notes, pending),
    )


def layers_result(layers, folder: Path, check: Callable[[], None]) -> tuple:
    """The 5 outputs of /decoder_layers (API order): the strip, the captioned columns, the files (the strip
    and each layer's head as a .ply), timings and summary. Writes the files into ``folder``.

    Args:
        layers: a :class:`~perchead.pipelines.reconstruct.DecoderLayers`.
        folder: the job's folder.
        check: called before each layer's files (raises when the job was cancelled).
    """
    start = time.perf_counter()
    strip = folder / "decoder_layers.png"
    Image.fromarray(layers.strip()).save(strip)
    gallery, files = [], [str(strip)]
    for k, (column, caption) in enumerate(zip(layers.columns(), layers.column_captions()), start=1):
        check()
        Image.fromarray(column).save(folder / f"layer_{k}.png")
        gallery.append((str(folder / f"layer_{k}.png"), caption))
        save_ply(layers.gaussians[k - 1][0], folder / f"layer_{k}.ply")
        files.append(str(folder / f"layer_{k}.ply"))
    timings = {**layers.timings, "export": time.perf_counter() - start}
    line = (f"**{layers.n_layers} decoder layers in {layers.timings['total']:.1f} s** (files in "
            f"{timings['export']:.1f} s) · top: {layers.view_captions[0]}, bottom: {layers.view_captions[1]}")
    return str(strip), gallery, files, rounded(timings), "\n".join([line, *(f"- {note}" for note in layers.notes)])


def clip_result(out) -> tuple:
    """The 4 outputs of /reconstruct_video (API order) from a
    :class:`~perchead.pipelines.sequence.HeadSequence`: side-by-side video, heads zip, timings, summary."""
    seconds = out.timings["total"]
    line = (f"**{out.frames} heads in {seconds:.1f} s** ({out.frames / max(seconds, 1e-6):.1f} frames per "
            f"second) · {out.fps:g} frames per second of the clip")
    return str(out.video), str(out.heads), rounded(out.timings), "\n".join([line, *(f"- {note}" for note in out.notes)])


def map_result(labels: np.ndarray, notes: list[str], seconds: float, path: Path, size: int) -> tuple:
    """The 3 outputs of /segment (API order): the map as a palette-coloured PNG of side ``size`` (written to
    ``path``), the same for the editor, and the notes.

    Args:
        labels: the class map. ``[S, S]`` int
        notes: remarks from preprocessing.
        seconds: how long parsing took.
        path: where to write the PNG.
        size: its side, pixels.
    """
    Image.fromarray(labels_to_color(resize_labels(labels, size))).save(path)
    notes = [f"parsed in {seconds:.1f} s", *notes]
    if not (labels != 0).any():
        notes.append("no head was found in the photo (all background): paint one, or try another photo")
    return str(path), str(path), "\n".join(f"- {note}" for note in notes)


def edit_input(edited, path: Path) -> str:
    """Writes what the editing model saw to ``path``: the label map, beside the cropped style image when
    there is one. Returns the path as text.

    Args:
        edited: a :class:`~perchead.pipelines.edit.Edit`.
        path: where to write the PNG.
    """
    seen = labels_to_color(edited.labels[0])  # [S, S, 3]
    if edited.style_input is not None:
        seen = np.concatenate([seen, to_uint8(edited.style_input.image[0])], axis=1)  # [S, 2S, 3]
    Image.fromarray(seen).save(path)
    return str(path)
