"""Benchmark of the video pipeline (perchead.pipelines.sequence): speed, and how steady the heads are.

1. **Speed**: a clip of a synthetic head moving across a 640×480 frame and turning (``--seconds`` at 10
   frames per second) through the whole pipeline — decode, track, cut out, reconstruct, render, write —
   frames per second overall and seconds per frame for each stage.
2. **Temporal stability** (paper Fig. 4: consistent geometry across frames): one synthetic head held still
   while the camera jitters a little (σ = 1° in yaw and pitch, 2 px in position, 1 % in scale): the mean
   distance a Gaussian moves between consecutive frames, with the crop smoothed (the default) and without;
   against the same measure between *different* heads (each frame a different test head, held still, not
   fitted: a warm start would carry one identity into the next),
   the change a real change of identity makes; and on the moving, turning head of the speed clip, where
   the crop's frame-to-frame jerk (second difference) is the detector's noise.

Both with the default photo-fit (the first frame fitted, each next one warm-started from the previous fit)
and without it (``*_unfitted``: the network's heads, as the paper).

    python benchmarks/video.py                       # bundled weights_card/, 10 s
    python benchmarks/video.py --seconds 4 --heads 6 --output video.json
    python benchmarks/video.py --figure docs/video_frames.jpg   # also: 4 frames of the speed clip's output
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/render.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from _common import report  # noqa: E402

from perchead.data.clips import render_clip  # noqa: E402
from perchead.data.synthetic import make_head, split_seeds  # noqa: E402
from perchead.export.turntable import write_mp4
from perchead.geometry.gaussians import load_ply  # noqa: E402
from perchead.pipelines.sequence import SequenceConfig, SequencePipeline  # noqa: E402

FPS = 10
SIZE = (640, 480)
SCALE = 900.0  # pixels per metre at the head: a 207-px-tall head in a 480-px frame


def means_per_frame(heads_zip: Path) -> torch.Tensor:
    """The Gaussian centres of every head in the zip. ``[T, N, 3]`` metres"""
    out = []
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(heads_zip) as archive:
        for name in archive.namelist():
            out.append(load_ply(archive.extract(name, tmp)).means)
    return torch.stack(out)


def consecutive_change_mm(means: torch.Tensor) -> float:
    """Mean over consecutive frames and Gaussians of how far a Gaussian moves, millimetres."""
    return float((means[1:] - means[:-1]).norm(dim=-1).mean() * 1000)


def run(pipe: SequencePipeline, frames: np.ndarray, folder: Path, name: str):
    path = folder / f"{name}.mp4"
    write_mp4(frames, path, fps=FPS, crf=14)
    return pipe(path, folder / name)


def save_frames(video: Path, path: str, count: int = 4) -> None:
    """Tiles ``count`` (even) evenly spaced frames of the side-by-side output video two per row into one JPEG."""
    import imageio.v3 as iio
    from PIL import Image

    frames = np.stack(list(iio.imiter(video)))  # [T, H, W, 3]
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    rows = [np.concatenate([frames[i] for i in picks[r:r + 2]], axis=1) for r in range(0, count, 2)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="weights_card")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the speed clip")
    parser.add_argument("--still-frames", type=int, default=30, help="frames of the jittered still head")
    parser.add_argument("--heads", type=int, default=10, help="different heads for the identity comparison")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--figure", default=None, help="also save 4 frames of the side-by-side video (JPEG) here")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pipe = SequencePipeline.from_pretrained(args.model, device="cpu")
    smooth_off = SequencePipeline(pipe.pipeline, SequenceConfig(smooth_s=0.0))
    unfitted = SequencePipeline(pipe.pipeline, SequenceConfig(fit_first_steps=0))
    head = make_head(split_seeds("test")[0])
    results = {"model": args.model, "threads": torch.get_num_threads(), "frame": list(SIZE),
               "model_input": pipe.pipeline.image_size, "panel": pipe.config.panel_size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # 1. speed: moving and turning
        T = int(args.seconds * FPS)
        poses = np.zeros((1, T, 5), np.float32)
        poses[0, :, 0] = 25 * np.sin(np.linspace(0, 2 * np.pi, T))
        poses[0, :, 1] = 5.0
        poses[0, :, 2] = np.linspace(240, 400, T)
        poses[0, :, 3] = 240.0
        poses[0, :, 4] = SCALE
        moving = render_clip([head], poses, SIZE)
        out = run(pipe, moving, folder, "moving")
        plain = run(unfitted, moving, folder, "moving_unfitted")
        for name, seq in (("speed", out), ("speed_unfitted", plain)):
            results[name] = {
                "frames": seq.frames, "seconds": round(seq.timings["total"], 2),
                "frames_per_second": round(seq.frames / seq.timings["total"], 2),
                "seconds_per_frame": {k: round(v / seq.frames, 4) for k, v in seq.timings.items() if k != "total"},
            }  # fmt: skip
        results["fit"] = {"first_frame_steps": pipe.config.fit_first_steps, "next_frame_steps": pipe.config.fit_next_steps}
        if args.figure:
            save_frames(out.video, args.figure)
        # 2. stability: one head held still, the camera jittering
        S = args.still_frames
        still = np.zeros((1, S, 5), np.float32)
        still[0, :, 0] = rng.normal(0, 1.0, S)
        still[0, :, 1] = 5.0 + rng.normal(0, 1.0, S)
        still[0, :, 2] = 320 + rng.normal(0, 2.0, S)
        still[0, :, 3] = 240 + rng.normal(0, 2.0, S)
        still[0, :, 4] = SCALE * (1 + rng.normal(0, 0.01, S))
        frames = render_clip([head], still, SIZE)
        stability = {}
        for name, runner in (("smoothed", pipe), ("not_smoothed", smooth_off), ("smoothed_unfitted", unfitted)):
            seq = run(runner, frames, folder, f"still_{name}")
            jitter = np.abs(np.diff(seq.crops[:, :2], axis=0)).mean()
            stability[name] = {"gaussian_change_mm": round(consecutive_change_mm(means_per_frame(seq.heads)), 3),
                               "crop_centre_change_px": round(float(jitter), 2)}
        # the moving, turning head: the detector's noise on a smooth path, which smoothing removes
        for name, runner in (("moving_smoothed", pipe), ("moving_not_smoothed", smooth_off),
                             ("moving_smoothed_unfitted", unfitted)):
            seq = {"moving_smoothed": out, "moving_smoothed_unfitted": plain}.get(name) or run(runner, moving, folder, name)
            stability[name] = {"gaussian_change_mm": round(consecutive_change_mm(means_per_frame(seq.heads)), 3),
                               "crop_centre_jerk_px": round(float(np.abs(np.diff(seq.crops[:, :2], n=2, axis=0)).mean()), 2)}
        # different heads, each held still: what a change of identity moves
        heads = [make_head(split_seeds("test")[i]) for i in range(args.heads)]
        front = np.array([[[0.0, 5.0, 320.0, 240.0, SCALE]]], np.float32)  # [1, 1, 5]
        frames = np.concatenate([render_clip([h], front, SIZE) for h in heads])
        different = SequencePipeline(pipe.pipeline, SequenceConfig(smooth_s=0.0, fit_first_steps=0))  # no warm start
        seq = run(different, frames, folder, "different_heads")
        stability["different_heads"] = {"gaussian_change_mm": round(consecutive_change_mm(means_per_frame(seq.heads)), 3)}
        stability["ratio_still_smoothed_to_different"] = round(
            stability["smoothed"]["gaussian_change_mm"] / stability["different_heads"]["gaussian_change_mm"], 3)
        results["stability"] = stability
    report(results, args.output)


if __name__ == "__main__":
    main()
