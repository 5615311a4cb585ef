"""Preprocessing benchmark: detection rate, framing and yaw error on synthetic renders, time per photo.

    python benchmarks/preprocess.py              # measure (writes docs/preprocess_results.json)
    python benchmarks/preprocess.py --calibrate  # re-derive perchead.pipelines.faces.FACE_POINTS_3D

Synthetic renders (test-split heads, never trained on) are made with known cameras: azimuth (yaw) in
[-60°, 60°], elevation in [-20°, 20°], distance 0.6–1.6 m, then rolled by up to ±25° and shifted inside a
larger canvas with a grey background, so the ideal crop (the training camera's frame around the head
centre, upright) is known exactly. Errors are given as fractions of the ideal crop side.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perchead.data.synthetic import make_head, render_head, split_seeds  # noqa: E402
from perchead.geometry.cameras import orbit_cameras  # noqa: E402
from perchead.pipelines import faces as F  # noqa: E402

# Landmarks whose 3D positions are calibrated: eye corners, brows, nose bridge / tip / wings, mouth
# corners and lip middles, chin, forehead and cheeks (face-surface points, no sliding jaw contour).
CALIBRATED = (33, 133, 362, 263, 159, 145, 386, 374, 70, 105, 107, 336, 334, 300, 168, 6, 197, 4, 1, 2, 98, 327,
              61, 291, 0, 17, 13, 14, 152, 199, 10, 151, 50, 280, 205, 425, 117, 346)


def _triangulate(points: np.ndarray, projections: np.ndarray) -> tuple[np.ndarray, float]:
    """Linear (DLT) triangulation of one point seen in V views. points ``[V, 2]``, projections ``[V, 3, 4]``."""
    rows = []
    for (u, v), P in zip(points, projections):
        rows += [u * P[2] - P[0], v * P[2] - P[1]]
    _, _, vt = np.linalg.svd(np.asarray(rows))
    X = vt[-1]
    X = X[:3] / X[3]
    proj = projections @ np.append(X, 1.0)  # [V, 3]
    err = np.sqrt((((proj[:, :2] / proj[:, 2:]) - points) ** 2).sum(1))
    return X, float(np.median(err))


def calibrate(n_heads: int, size: int = 320) -> dict[int, tuple[float, float, float]]:
    analyzer = F.FaceAnalyzer(F.find_models() or F.fetch_models())
    az = [-40, -30, -20, -10, 0, 10, 20, 30, 40]
    el = [-15, 0, 15]
    grid = [(a, e) for e in el for a in az]
    cams = orbit_cameras([a for a, _ in grid], [e for _, e in grid], size=size)
    P = (cams.Ks @ cams.viewmats[:, :3, :]).numpy().astype(np.float64)  # [V, 3, 4]
    per_head = []
    for seed in list(split_seeds("test"))[:n_heads]:
        rgb = render_head(make_head(seed), cams)["rgb"]  # [V, 3, S, S]
        images = (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # [V, S, S, 3]
        marks, used = [], []
        for v, image in enumerate(images):
            found = analyzer.detect(image)
            if not found:
                continue
            face = analyzer.landmarks(image, found[0])
            marks.append(face.landmarks[:, :2])
            used.append(v)
        if len(used) < 6:
            continue
        marks = np.stack(marks)  # [V', 468, 2]
        points = {}
        for index in CALIBRATED:
            X, err = _triangulate(marks[:, index], P[used])
            points[index] = (X, err)
        per_head.append(points)
        print(f"head {seed}: {len(used)}/{len(grid)} views", flush=True)
    result = {}
    for index in CALIBRATED:
        xs = np.stack([h[index][0] for h in per_head])  # [H, 3]
        errs = [h[index][1] for h in per_head]
        result[index] = tuple(float(v) for v in np.median(xs, 0))
        print(f"{index:4d}: {np.round(result[index], 4)} spread {np.round(xs.std(0), 4)} reproj {np.median(errs):.2f}px")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", action="store_true", help="re-derive FACE_POINTS_3D and print it")
    parser.add_argument("--heads", type=int, default=16, help="test-split heads to use")
    args = parser.parse_args(argv)
    if args.calibrate:
        points = calibrate(args.heads)
        print("FACE_POINTS_3D = {")
        for index, xyz in points.items():
            print(f"    {index}: ({xyz[0]:.4f}, {xyz[1]:.4f}, {xyz[2]:.4f}),")
        print("}")
        return


if __name__ == "__main__":
    main()
