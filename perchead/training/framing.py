"""Training the photo framing on synthetic heads: the face-mesh points the head pose is found against
(``perchead/photo/face_points.json``, :data:`perchead.photo.faces.FACE_POINTS_3D`, triangulated on renders with
known cameras) and the regressor that corrects the landmark pose's crop by the head's silhouette
(``perchead/photo/framing_model.json``). Both are steps of ``python3 tasks.py weights``, which copies each file
into ``perchead/photo``:

    python -m perchead.training.framing --face-points --heads 16 --output runs/face_points  # → face_points.json
    python -m perchead.training.framing --heads 3600 --output runs/framing                  # → framing_model.json

The regressor is fitted on train-split heads only (heads 0–3,599, each view also mirrored; its size chosen on
heads 50,000–50,799); the views' measurements are kept in ``--cache`` (default ``OUTPUT/views.npz``) and reused,
as the renders and face networks take most of the ≈ 35 min on 2 cores. The face points use test-split heads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from perchead.data.synthetic import make_head, render_head, split_seeds
from perchead.geometry.cameras import orbit_cameras
from perchead.photo import faces as F


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


def calibrate(n_heads: int, size: int = 320, az=(-40, -30, -20, -10, 0, 10, 20, 30, 40), el=(-15, 0, 15)) -> dict[int, tuple[float, float, float]]:
    """Triangulates :data:`CALIBRATED` landmarks on ``n_heads`` test-split heads seen from every (az, el)."""
    analyzer = F.FaceAnalyzer(F.find_models() or F.fetch_models())
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


def synthetic_view(head_seed: int, rng: np.random.Generator, size: int, yaw=(-60, 60), pitch=(-20, 20), radius=(0.7, 1.6),
                    roll=25.0, shift=0.12, anchors: bool = False):
    """One render of a head from a random known camera over a random colour, rolled and shifted (the
    benchmark's recipe): (image ``[S, S, 3]`` uint8, alpha ``[S, S]`` uint8, truth dict). With ``anchors``
    the truth also holds ``anchors``: the image pixels of :func:`head_anchors`. ``[A, 2]``"""
    import cv2

    az, el = rng.uniform(*yaw), rng.uniform(*pitch)
    distance, turn = rng.uniform(*radius), rng.uniform(-roll, roll)
    offset = rng.uniform(-shift, shift, 2) * size
    background = rng.uniform(0.15, 0.85, 3)
    cameras = orbit_cameras([az], [el], radius=distance, size=size)
    out = render_head(make_head(int(head_seed)), cameras)
    rgb, alpha = out["rgb"][0].permute(1, 2, 0).numpy(), out["alpha"][0, 0].numpy()  # [S, S, 3], [S, S]
    rgb = rgb - (1 - alpha[..., None]) + (1 - alpha[..., None]) * background  # over a coloured background
    M = cv2.getRotationMatrix2D((size / 2, size / 2), turn, 1.0)  # + = counter-clockwise on screen
    M[:, 2] += offset
    rgb = cv2.warpAffine(rgb.astype(np.float32), M, (size, size), borderMode=cv2.BORDER_CONSTANT,
                         borderValue=tuple(float(b) for b in background))
    alpha = cv2.warpAffine(alpha.astype(np.float32), M, (size, size))
    truth = {"seed": int(head_seed), "yaw": az, "pitch": el, "roll": turn, "centre": np.array([size / 2, size / 2]) + offset,
             "side": size * 0.7 / distance}
    if anchors:
        from perchead.geometry.cameras import project_points

        uv, _ = project_points(torch.tensor(head_anchors(int(head_seed)), dtype=torch.float32), cameras.viewmats, cameras.Ks)
        truth["anchors"] = uv[0].numpy().astype(np.float64) @ M[:, :2].T + M[:, 2]  # [A, 2]
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), (np.clip(alpha, 0, 1) * 255).round().astype(np.uint8), truth


ANCHORS = ("right eye", "left eye", "nose bridge", "nose tip", "mouth", "chin", "right ear", "left ear", "crown", "brow")


def head_anchors(seed: int) -> np.ndarray:
    """Exact head-space points of a synthetic head (:data:`ANCHORS`, the subject's sides; the crown is the
    skull's top, under any hair), from its generator's own geometry, turned by its small pose. ``[A, 3]``"""
    from perchead.data import synthetic as syn

    a = syn._sample_attributes(np.random.default_rng(seed))  # make_head draws these first, from the same seed
    s = syn._face_solids(a)
    face = lambda x, y: s.head.point(np.array([[x, y, 0.09]]))[0]  # noqa: E731
    eye_l, eye_r = (eye.centre + np.array([0, 0, s.eye_r]) for eye in s.eyes)  # front of the eyeballs (+x = left)
    mouth_y = -0.064 - 0.1 * (a["nose_length"] - 0.05)  # as synthetic._face_decals draws the lips
    ear_x = a["head_half_width"] - 0.004
    points = np.array([eye_r, eye_l, face(0, -0.002), s.nose.point(np.array([[0, -0.5, 0.85]]))[0], face(0, mouth_y),
                       s.head.point(np.array([[0, -0.8, 0.6]]))[0], [-ear_x, -0.018, -0.012], [ear_x, -0.018, -0.012],
                       [0, a["crown_height"], 0], face(0, 0.02)])  # [A, 3]
    pose = syn._rot_y(a["head_yaw"]) @ syn._rot_x(a["head_pitch"])  # as make_head's step 9
    pivot = np.array([0.0, -0.1, -0.02])
    w = syn._smoothstep(-0.16, -0.06, points[:, 1])[:, None]
    return points * (1 - w) + ((points - pivot) @ pose.T + pivot) * w


def framing_row(analyzer, image: np.ndarray, alpha: np.ndarray, truth: dict) -> dict | None:
    """What the framing refinement sees of one view with a known camera, and the truth, in the pose's
    enlarged upright crop (``framing.SIZE`` pixels); None when no face or no pose is found.

    Keys: ``matte``, ``valid``, ``alpha`` (bit-packed ``[S, S]``: the selfie matte > 0.5, the photo's
    extent, the render's alpha > 0.5), ``marks`` (face-mesh landmarks and depth, ``[468, 3]``), ``points``
    (BlazeFace key points, ``[6, 2]``), ``anchors`` (exact :data:`ANCHORS`, ``[A, 2]``), ``pose`` (yaw,
    pitch, roll in degrees, reprojection error in crop pixels) and ``truth`` (yaw, pitch, roll, centre x,
    centre y, side, in degrees and crop pixels)."""
    from perchead.photo import framing
    from perchead.photo.config import PreprocessConfig
    from perchead.photo.crop import crop_square, pose_to_crop, to_crop_pixels

    found = analyzer.detect(image)
    if not found:
        return None
    face = found[0] if found[0].landmarks is not None else analyzer.landmarks(image, found[0])
    try:
        pose = F.estimate_pose(face.landmarks, image.shape[1], image.shape[0])
    except RuntimeError:
        return None
    box, roll = pose_to_crop(pose, PreprocessConfig())
    side, S = box[2] - box[0], framing.SIZE
    cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, side * framing.ENLARGE / 2
    big = (cx - half, cy - half, cx + half, cy + half)
    valid = crop_square(np.full(image.shape[:2], 255, np.uint8), big, S, 0, roll) > 127  # [S, S]
    matte = analyzer.segment(crop_square(image, big, S, 255, roll)) * valid  # [S, S]
    to_crop = lambda p: to_crop_pixels(np.asarray(p, np.float64).reshape(-1, 2), big, S, roll)  # noqa: E731
    marks = np.concatenate([to_crop(face.landmarks[:, :2]), face.landmarks[:, 2:3] * S / (2 * half)], 1)  # [468, 3]
    centre = to_crop(truth["centre"])[0]
    return {"matte": np.packbits(matte > 0.5), "valid": np.packbits(valid),
            "alpha": np.packbits(crop_square(alpha, big, S, 0, roll) > 127), "marks": marks.astype(np.float32),
            "points": to_crop(face.keypoints).astype(np.float32), "anchors": to_crop(truth["anchors"]).astype(np.float32),
            "pose": np.array([pose.yaw_deg, pose.pitch_deg, pose.roll_deg, pose.reprojection_px * S / (2 * half)]),
            "truth": np.array([truth["yaw"], truth["pitch"], truth["roll"], centre[0], centre[1], truth["side"] * S / (2 * half)])}


FRAMING_FIT = {"hidden": 96, "steps": 1500}  # chosen on held-out train-split heads (50,000–50,799)


FRAMING_SHARD = 600  # heads per random stream of the framing data (each seeded by its first head)


def framing_rows(heads: range, views: int = 1, size: int = 512, fitting: bool = True, seed: int = 1000) -> dict[str, np.ndarray]:
    """:func:`framing_row` of renders of train-split ``heads`` (indices into the split), stacked.

    ``fitting``: cameras a little wider than the benchmark's (yaw ±66°, pitch ±22°, 0.65–1.7 m, roll ±28°)
    and every view also mirrored; else the benchmark's ranges, unmirrored (held-out heads for checking).
    Each block of :data:`FRAMING_SHARD` heads draws its cameras from its own stream (``seed`` + its first
    head's index), so blocks can be made apart (in parallel) and joined."""
    analyzer = F.FaceAnalyzer(F.find_models() or F.fetch_models())
    ranges = dict(yaw=(-66, 66), pitch=(-22, 22), radius=(0.65, 1.7), roll=28.0) if fitting else {}
    seeds, rows = list(split_seeds("train")), []
    for n, index in enumerate(heads):
        if n % FRAMING_SHARD == 0:
            rng = np.random.default_rng(seed + index)
        for _ in range(views):
            image, alpha, truth = synthetic_view(seeds[index], rng, size, anchors=True, **ranges)
            pairs = [(image, alpha, truth)]
            if fitting:  # the mirrored view: opposite yaw and roll, the subject's sides swapped
                anchors = truth["anchors"][[1, 0, 2, 3, 4, 5, 7, 6, 8, 9]] * np.array([-1, 1]) + np.array([size, 0])
                pairs.append((np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(alpha[:, ::-1]),
                              dict(truth, yaw=-truth["yaw"], roll=-truth["roll"], anchors=anchors,
                                   centre=np.array([size - truth["centre"][0], truth["centre"][1]]))))
            for im, al, tr in pairs:
                row = framing_row(analyzer, im, al, tr)
                if row is not None:
                    rows.append(row | {"head": index})
        if n % 100 == 0:
            print(f"framing data: {n}/{len(heads)} heads, {len(rows)} views", flush=True)
    return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def unpack_bits(bits: np.ndarray) -> np.ndarray:
    from perchead.photo.framing import SIZE

    return np.unpackbits(bits)[: SIZE * SIZE].reshape(SIZE, SIZE).astype(bool)


def framing_features(rows: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`perchead.photo.framing.features` of every row: (features ``[N, F]``, NaN where the
    refinement does not apply; mirrored ``[N]``; applies ``[N]``)."""
    from perchead.photo import framing

    X, mirrored, ok = np.full((len(rows["pose"]), framing.FEATURES), np.nan), rows["pose"][:, 0] < 0, np.zeros(len(rows["pose"]), bool)
    for i, (yaw, pitch, _, reprojection) in enumerate(rows["pose"]):
        out = framing.features(unpack_bits(rows["matte"][i]).astype(np.float32), rows["marks"][i].astype(np.float64),
                               rows["points"][i].astype(np.float64), unpack_bits(rows["valid"][i]), yaw, pitch, reprojection)
        if out is not None:
            X[i], mirrored[i], ok[i] = out[0], out[1], True
    return X, mirrored, ok


def framing_targets(rows: dict) -> np.ndarray:
    """The corrections that would make each row's framing exact, unmirrored: crop centre shift (x, y) and
    log crop side in the pose's crop (fractions of its side), yaw error in degrees. ``[N, 4]``"""
    from perchead.photo import framing

    t, unit = rows["truth"], framing.SIZE / framing.ENLARGE
    return np.stack([(t[:, 3] - framing.SIZE / 2) / unit, (t[:, 4] - framing.SIZE / 2) / unit, np.log(t[:, 5] / unit),
                     t[:, 0] - rows["pose"][:, 0]], 1)


def framing_errors(rows: dict, corrections: np.ndarray) -> np.ndarray:
    """Centre error, scale error (fractions of the true crop side) and yaw error (degrees) of each row
    after ``corrections`` (``[N, 4]``, unmirrored, as :func:`framing_targets`). ``[N, 3]``"""
    from perchead.photo import framing

    t, unit = rows["truth"], framing.SIZE / framing.ENLARGE
    centre = framing.SIZE / 2 + unit * corrections[:, :2]
    side = unit * np.exp(corrections[:, 2])
    return np.stack([np.hypot(*(centre - t[:, 3:5]).T) / t[:, 5], np.abs(side / t[:, 5] - 1),
                     np.abs(rows["pose"][:, 0] + corrections[:, 3] - t[:, 0])], 1)


def framing_data(n_heads: int, start: int = 0, views: int = 1, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features and mirrored targets of the views of ``n_heads`` train-split heads (:func:`framing_rows`,
    fitting cameras) where the refinement applies. ``[N, F]``, ``[N, 4]``. ``cache``: an ``.npz`` of the
    rows, read when it exists, else written."""
    rows = cached_rows(cache, lambda: framing_rows(range(start, start + n_heads), views))
    X, mirrored, ok = framing_features(rows)
    Y = framing_targets(rows)
    Y[mirrored] *= np.array([-1, 1, 1, -1])
    return X[ok], Y[ok]


def cached_rows(cache: Path | None, make) -> dict[str, np.ndarray]:
    if cache is not None and Path(cache).is_file():
        with np.load(cache) as data:
            return dict(data)
    rows = make()
    if cache is not None:
        np.savez_compressed(cache, **rows)
    return rows


def fit_framing(X: np.ndarray, Y: np.ndarray, hidden: int = 32, steps: int = 600, seed: int = 0, members: int = 1) -> dict:
    """Fits the framing regressor (one tanh layer; Huber loss on standardised targets; Adam with weight
    decay) and returns it as :func:`perchead.photo.framing.load_model` reads it (lists of floats).
    ``members`` nets fitted from seeds ``seed, seed + 1, …`` are averaged: one net whose hidden layer holds
    all of theirs. The outputs are clipped at run time to the 0.5–99.5 % range of the targets."""
    mean, std = X.mean(0), X.std(0) + 1e-6
    out_scale = Y.std(0) + 1e-6
    x = torch.tensor(np.clip((X - mean) / std, -4, 4), dtype=torch.float32)
    y = torch.tensor(Y / out_scale, dtype=torch.float32)
    w1, b1, w2, b2 = [], [], [], []
    for member in range(members):
        torch.manual_seed(seed + member)
        net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, Y.shape[1]))
        opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-3)
        for _ in range(steps):
            loss = torch.nn.functional.huber_loss(net(x), y, delta=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        w1.append(net[0].weight.detach().numpy().T)
        b1.append(net[0].bias.detach().numpy())
        w2.append(net[2].weight.detach().numpy().T / members)
        b2.append(net[2].bias.detach().numpy() / members)
    r = lambda a, d=6: np.round(np.asarray(a, np.float64), d).tolist()  # noqa: E731
    return {"mean": r(mean), "std": r(std), "w1": r(np.concatenate(w1, 1)), "b1": r(np.concatenate(b1)),
            "w2": r(np.concatenate(w2, 0)), "b2": r(np.sum(b2, 0)), "out_scale": r(out_scale),
            "low": r(np.percentile(Y, 0.5, 0)), "high": r(np.percentile(Y, 99.5, 0)),
            "outputs": ["dx", "dy", "log_scale", "dyaw_deg"], "samples": int(len(X)), "hidden": hidden * members}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/framing",
                        help="folder for framing_model.json (and the cache), or face_points.json")
    parser.add_argument("--heads", type=int, default=None,
                        help="train-split heads to fit on, ×2 mirrored (default 3600); with --face-points: test-split "
                             "heads to triangulate on (default 16)")
    parser.add_argument("--cache", default=None, metavar="PATH",
                        help="the views' measurements as an .npz, read when it exists, else written "
                             "(default OUTPUT/views.npz)")
    parser.add_argument("--face-points", action="store_true",
                        help="triangulate the face-mesh points (FACE_POINTS_3D) into OUTPUT/face_points.json instead")
    args = parser.parse_args(argv)
    if args.heads is not None and args.heads < 1:
        parser.error(f"--heads must be at least 1, got {args.heads}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.face_points:
        points = calibrate(args.heads or 16)
        path = out / "face_points.json"
        path.write_text("{\n" + ",\n".join(f' "{index}": [{x:.4f}, {y:.4f}, {z:.4f}]'
                                           for index, (x, y, z) in points.items()) + "\n}\n")
        print(f"wrote {path} ({len(points)} landmarks)")
        return
    torch.set_num_threads(2)
    X, Y = framing_data(args.heads or 3600, cache=Path(args.cache) if args.cache else out / "views.npz")
    path = out / "framing_model.json"
    path.write_text(json.dumps(fit_framing(X, Y, **FRAMING_FIT)) + "\n")
    print(f"wrote {path} ({len(X)} samples)")


if __name__ == "__main__":
    main()
