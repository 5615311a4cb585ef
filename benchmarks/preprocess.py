"""Preprocessing benchmark: detection rate, framing and yaw error on synthetic renders, time per photo.

    python benchmarks/preprocess.py              # measure (writes docs/preprocess_results.json)
    python benchmarks/preprocess.py --calibrate  # re-derive perchead.pipelines.faces.FACE_POINTS_3D
    python benchmarks/preprocess.py --fit-framing 1000  # re-fit perchead/pipelines/framing_model.json

Synthetic renders (test-split heads, never trained on) are made with known cameras: azimuth (yaw) in
[-60°, 60°], elevation in [-20°, 20°], distance 0.6–1.6 m, then rolled by up to ±25° and shifted inside a
larger canvas with a grey background, so the ideal crop (the training camera's frame around the head
centre, upright) is known exactly. Errors are given as fractions of the ideal crop side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import perchead  # noqa: E402,F401  (before torch: idle OpenMP threads sleep instead of spinning)
import torch  # noqa: E402

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


def _synthetic_view(head_seed: int, rng: np.random.Generator, size: int, yaw=(-60, 60), pitch=(-20, 20), radius=(0.7, 1.6),
                    roll=25.0, shift=0.12):
    """One render of a head from a random known camera over a random colour, rolled and shifted (the
    benchmark's recipe): (image ``[S, S, 3]`` uint8, alpha ``[S, S]`` uint8, truth dict)."""
    import cv2

    az, el = rng.uniform(*yaw), rng.uniform(*pitch)
    distance, turn = rng.uniform(*radius), rng.uniform(-roll, roll)
    offset = rng.uniform(-shift, shift, 2) * size
    background = rng.uniform(0.15, 0.85, 3)
    out = render_head(make_head(int(head_seed)), orbit_cameras([az], [el], radius=distance, size=size))
    rgb, alpha = out["rgb"][0].permute(1, 2, 0).numpy(), out["alpha"][0, 0].numpy()  # [S, S, 3], [S, S]
    rgb = rgb - (1 - alpha[..., None]) + (1 - alpha[..., None]) * background  # over a coloured background
    M = cv2.getRotationMatrix2D((size / 2, size / 2), turn, 1.0)  # + = counter-clockwise on screen
    M[:, 2] += offset
    rgb = cv2.warpAffine(rgb.astype(np.float32), M, (size, size), borderMode=cv2.BORDER_CONSTANT,
                         borderValue=tuple(float(b) for b in background))
    alpha = cv2.warpAffine(alpha.astype(np.float32), M, (size, size))
    truth = {"seed": int(head_seed), "yaw": az, "pitch": el, "roll": turn, "centre": np.array([size / 2, size / 2]) + offset,
             "side": size * 0.7 / distance}
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), (np.clip(alpha, 0, 1) * 255).round().astype(np.uint8), truth


def framing_sample(analyzer, image: np.ndarray, truth: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The framing regressor's features and targets for one view with a known camera, or None when no
    face, no pose or no usable silhouette is found. Targets: the true crop centre's offset (x, y) and the log
    of the true crop side, in the pose's upright crop (fractions of its side), and the yaw error."""
    import math

    from perchead.pipelines import framing
    from perchead.pipelines.preprocess import PreprocessConfig, crop_square, pose_to_crop, to_crop_pixels

    found = analyzer.detect(image)
    if not found:
        return None
    face = found[0] if found[0].landmarks is not None else analyzer.landmarks(image, found[0])
    try:
        pose = F.estimate_pose(face.landmarks, image.shape[1], image.shape[0])
    except RuntimeError:
        return None
    box, roll = pose_to_crop(pose, PreprocessConfig())
    side = box[2] - box[0]
    cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, side * framing.ENLARGE / 2
    big = (cx - half, cy - half, cx + half, cy + half)
    crop = crop_square(image, big, framing.SIZE, 255, roll)
    valid = crop_square(np.full(image.shape[:2], 255, np.uint8), big, framing.SIZE, 0, roll) > 127
    matte = analyzer.segment(crop) * valid
    measured = framing.features(matte, to_crop_pixels(face.landmarks[:, :2], big, framing.SIZE, roll),
                                to_crop_pixels(face.keypoints, big, framing.SIZE, roll), valid, pose.yaw_deg, pose.pitch_deg,
                                pose.reprojection_px * framing.SIZE / (2 * half))
    if measured is None:
        return None
    feats, mirrored = measured
    centre = (to_crop_pixels(truth["centre"][None], big, framing.SIZE, roll)[0] - framing.SIZE / 2) / (framing.SIZE / framing.ENLARGE)
    target = np.array([centre[0], centre[1], math.log(truth["side"] / side), truth["yaw"] - pose.yaw_deg])
    if mirrored:
        target[[0, 3]] *= -1
    return feats, target


def framing_data(n_heads: int, start: int = 0, seed: int = 1000, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets (:func:`framing_sample`) of ``n_heads`` train-split heads, each from one random
    camera (a slightly wider range than the benchmark's) and mirrored. ``[N, F]``, ``[N, 4]``"""
    analyzer = F.FaceAnalyzer(F.find_models() or F.fetch_models())
    rng = np.random.default_rng(seed + start)
    X, Y = [], []
    for i, head_seed in enumerate(list(split_seeds("train"))[start : start + n_heads]):
        image, _, truth = _synthetic_view(head_seed, rng, size, yaw=(-66, 66), pitch=(-22, 22), radius=(0.65, 1.7), roll=28.0)
        mirrored = dict(truth, yaw=-truth["yaw"], roll=-truth["roll"], centre=np.array([size - truth["centre"][0], truth["centre"][1]]))
        for im, tr in ((image, truth), (np.ascontiguousarray(image[:, ::-1]), mirrored)):
            sample = framing_sample(analyzer, im, tr)
            if sample is not None:
                X.append(sample[0])
                Y.append(sample[1])
        if i % 100 == 0:
            print(f"framing data: {i}/{n_heads} heads, {len(X)} samples", flush=True)
    return np.stack(X), np.stack(Y)


def fit_framing(X: np.ndarray, Y: np.ndarray, hidden: int = 32, steps: int = 600, seed: int = 0) -> dict:
    """Fits the framing regressor (one tanh layer; Huber loss on standardised targets; Adam with weight
    decay) and returns it as :func:`perchead.pipelines.framing.load_model` reads it (lists of floats).
    The outputs are clipped at run time to the 0.5–99.5 % range of the targets."""
    torch.manual_seed(seed)
    mean, std = X.mean(0), X.std(0) + 1e-6
    out_scale = Y.std(0) + 1e-6
    x = torch.tensor(np.clip((X - mean) / std, -4, 4), dtype=torch.float32)
    y = torch.tensor(Y / out_scale, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, Y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-3)
    for _ in range(steps):
        loss = torch.nn.functional.huber_loss(net(x), y, delta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    w1, b1 = net[0].weight.detach().numpy().T, net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy().T, net[2].bias.detach().numpy()
    r = lambda a, d=6: np.round(np.asarray(a, np.float64), d).tolist()  # noqa: E731
    return {"mean": r(mean), "std": r(std), "w1": r(w1), "b1": r(b1), "w2": r(w2), "b2": r(b2), "out_scale": r(out_scale),
            "low": r(np.percentile(Y, 0.5, 0)), "high": r(np.percentile(Y, 99.5, 0)),
            "outputs": ["dx", "dy", "log_scale", "dyaw_deg"], "samples": int(len(X)), "hidden": hidden}


def synthetic_cases(n: int, size: int = 512, seed: int = 0):
    """Yields (image ``[S, S, 3]`` uint8, alpha ``[S, S]`` uint8, truth dict) for ``n`` test-split heads."""
    rng = np.random.default_rng(seed)
    for head_seed in list(split_seeds("test"))[:n]:
        yield _synthetic_view(head_seed, rng, size)


def evaluate_synthetic(n: int, size: int = 512) -> dict:
    """Old (Haar + GrabCut) vs new (MediaPipe) path on synthetic renders with known cameras."""
    from perchead.pipelines.preprocess import PreprocessConfig, PreprocessError, crop_square, preprocess

    config = PreprocessConfig(size=256)
    paths = {"haar": {"detector": "haar"}, "mediapipe_landmarks": {"detector": "mediapipe", "refine_framing": False},
             "mediapipe": {"detector": "mediapipe"}}  # the landmark pose alone, and refined by the silhouette
    rows = {name: [] for name in paths}
    for image, alpha, truth in synthetic_cases(n, size):
        for detector, options in paths.items():
            try:
                result = preprocess(image, config, **options)
            except PreprocessError:
                rows[detector].append({"found": False, **{k: truth[k] for k in ("yaw", "pitch", "roll")}})
                continue
            x0, y0, x1, y1 = result.crop_box
            side = x1 - x0
            centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
            truth_mask = crop_square(alpha, result.crop_box, 256, 0, result.crop_roll_deg) > 127
            mask = result.mask[0, 0].numpy() > 0.5
            row = {"found": True, "yaw": truth["yaw"], "pitch": truth["pitch"], "roll": truth["roll"],
                   "centre_error": float(np.linalg.norm(centre - truth["centre"]) / truth["side"]),
                   "scale_error": float(abs(side / truth["side"] - 1)),
                   "roll_error": float(abs(((result.crop_roll_deg - truth["roll"]) + 180) % 360 - 180)),
                   "matte_iou": float((mask & truth_mask).sum() / max(1, (mask | truth_mask).sum()))}
            if result.pose is not None:
                row["yaw_error"] = float(abs(result.pose.yaw_deg - truth["yaw"]))
                row["pitch_error"] = float(abs(result.pose.pitch_deg - truth["pitch"]))
            rows[detector].append(row)
        print(f"head {truth['seed']}: " + ", ".join(f"{d} {_short(r[-1])}" for d, r in rows.items()), flush=True)
    summary = {d: _summary(r) for d, r in rows.items()}
    for d, r in rows.items():  # by yaw band
        summary[d]["yaw_0_30"] = _summary([x for x in r if abs(x["yaw"]) <= 30])
        summary[d]["yaw_30_60"] = _summary([x for x in r if abs(x["yaw"]) > 30])
        for lo in (0, 15, 30, 45):
            summary[d][f"yaw_{lo}_{lo + 15}"] = _summary([x for x in r if lo < abs(x["yaw"]) <= lo + 15 or (lo == 0 and x["yaw"] == 0)])
    return summary | {"cases": n, "image_size": size,
                      "per_case": {d: [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in x.items()} for x in r] for d, r in rows.items()}}


def _short(row: dict) -> str:
    if not row["found"]:
        return "no face"
    yaw = f" yaw err {row['yaw_error']:.1f}°" if "yaw_error" in row else ""
    return f"centre {row['centre_error']:.3f} scale {row['scale_error']:.3f}{yaw} IoU {row['matte_iou']:.2f}"


def _summary(rows: list[dict]) -> dict:
    found = [r for r in rows if r["found"]]
    out = {"detection_rate": len(found) / max(1, len(rows)), "detected": len(found), "total": len(rows)}
    for key in ("centre_error", "scale_error", "roll_error", "matte_iou", "yaw_error", "pitch_error"):
        values = np.array([r[key] for r in found if key in r])
        if len(values):
            out[key] = {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)), "max": float(values.max()),
                        "share_within_0.03" if key in ("centre_error", "scale_error") else "mean": (
                            float((values <= 0.03).mean()) if key in ("centre_error", "scale_error") else float(values.mean()))}
    yaw60 = np.array([r["yaw_error"] for r in found if "yaw_error" in r and abs(r["yaw"]) <= 60])
    if len(yaw60):
        out["yaw_within_10deg"] = float((yaw60 <= 10).mean())
    return out


def portrait_variants() -> dict[str, np.ndarray]:
    """Real portraits (tests/portraits.py) and harder variants of them: grayscale, tight crop, rolled,
    mirrored, a small face, a group photo."""
    import cv2
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    import portraits

    folder = portraits.fetch()
    load = lambda name: np.asarray(Image.open(folder / name).convert("RGB"))  # noqa: E731
    astronaut, hopper = load("astronaut.png"), load("grace_hopper.jpg")
    variants = {"astronaut": astronaut, "grace_hopper": hopper,
                "astronaut_gray": np.repeat(cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)[..., None], 3, -1),
                "hopper_tight_112": cv2.resize(hopper[150:350, 160:370], (112, 112), interpolation=cv2.INTER_AREA),
                "astronaut_rolled_30": cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((256, 256), 30, 1.0), (512, 512),
                                                      borderMode=cv2.BORDER_REFLECT),
                "hopper_mirrored": np.ascontiguousarray(hopper[:, ::-1]),
                "astronaut_small_face": cv2.copyMakeBorder(cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA),
                                                           128, 128, 128, 128, cv2.BORDER_CONSTANT, value=(128, 128, 128))}
    for name in ("group.jpg", "tight_gray.png"):
        if (folder / name).is_file():
            variants[name.split(".")[0]] = load(name)
    return variants


def evaluate_portraits() -> dict:
    from perchead.pipelines.preprocess import PreprocessError, preprocess

    table = {}
    for name, image in portrait_variants().items():
        row = {}
        for detector in ("haar", "mediapipe"):
            try:
                result = preprocess(image, size=256, detector=detector)
                row[detector] = {"faces": result.face_count, "mask": result.mask_source, "roll": round(result.crop_roll_deg, 1),
                                 "yaw": None if result.pose is None else round(result.pose.yaw_deg, 1)}
            except PreprocessError as error:
                row[detector] = {"faces": 0, "error": str(error)[:60]}
        table[name] = row
        print(name, row, flush=True)
    return table


def time_per_photo(repeats: int = 15) -> dict:
    """Milliseconds of preprocess() per 512² photo (decoded array in, model input out): median and fastest
    of ``repeats`` runs (the fastest is the better guide when other jobs share the cores)."""
    import cv2

    from perchead.pipelines.preprocess import preprocess

    variants = portrait_variants()
    photos = {"astronaut": variants["astronaut"], "grace_hopper": cv2.resize(variants["grace_hopper"], (512, 512))}
    timings = {}
    for detector in ("mediapipe", "haar"):
        for name, image in photos.items():
            preprocess(image, size=256, detector=detector)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                preprocess(image, size=256, detector=detector)
                times.append(time.perf_counter() - start)
            timings[f"{detector}/{name}"] = round(float(np.median(times)) * 1e3, 1)
            timings[f"{detector}/{name}/fastest"] = round(float(np.min(times)) * 1e3, 1)
    timings["load_average_1min"] = round(os.getloadavg()[0], 2)  # other jobs on the cores slow every figure
    print(timings)
    return timings


def figure(path: Path, tile: int = 128) -> None:
    """docs figure: public-domain portraits (and harder variants of them), old path beside new.

    Columns: input | old crop (Haar + GrabCut, over white) | new crop | new matte | 19-class map of the
    face parser (trained on synthetic renders) | 19-class map from landmarks + matte.
    """
    import cv2
    from PIL import Image, ImageDraw

    from perchead.geometry.segmentation import labels_to_color
    from perchead.models.face_parser import FaceParser
    from perchead.pipelines.preprocess import PreprocessError, preprocess, to_uint8

    parser = FaceParser.from_pretrained(str(ROOT / "weights_card" / "parser"))
    variants = portrait_variants()
    astronaut, hopper = variants["astronaut"], variants["grace_hopper"]
    group = np.full((520, 1100, 3), 200, np.uint8)
    group[4:516, 0:512] = astronaut
    group[150:326, 750:900] = cv2.resize(hopper, (150, 176), interpolation=cv2.INTER_AREA)
    rows = [(name, variants[name], {}) for name in ("astronaut", "grace_hopper", "astronaut_gray", "hopper_tight_112",
                                                     "astronaut_rolled_30", "hopper_mirrored", "astronaut_small_face")]
    rows.append(("group, face_index=1", group, {"face_index": 1}))
    header = ["input", "old: Haar+GrabCut", "new: crop", "new: matte", "parser map", "landmark map"]
    canvas = Image.new("RGB", (tile * len(header), 18 + tile * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(header):
        draw.text((c * tile + 4, 3), text, fill=(0, 0, 0))
    blank = np.full((tile, tile, 3), 235, np.uint8)
    for r, (name, image, options) in enumerate(rows):
        cells = []
        h, w = image.shape[:2]
        scale = tile / max(h, w)
        thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        cell = blank.copy()
        cell[: thumb.shape[0], : thumb.shape[1]] = thumb
        cells.append(cell)
        try:
            old = preprocess(image, size=tile, detector="haar", **options)
            cells.append(to_uint8(old.image[0]))
        except PreprocessError as error:
            cells.append(blank.copy())
            text = "no face" if "no face" in str(error) else "1 face only"
            cv2.putText(cells[-1], text, (12, 64), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 0, 0), 2)
        new = preprocess(image, size=tile, **options)
        cells.append(to_uint8(new.image[0]))
        cells.append(to_uint8(new.mask[0].expand(3, -1, -1)))
        parsed = parser.parse(new.image[0], new.mask[0]).numpy()
        cells.append(labels_to_color(parsed))
        cells.append(labels_to_color(new.label_map().numpy()))
        row = np.concatenate(cells, 1)
        canvas.paste(Image.fromarray(row), (0, 18 + r * tile))
        draw.text((4, 18 + r * tile + tile - 14), name, fill=(0, 0, 0))
    canvas.save(path, optimize=True)
    print(f"wrote {path}")


def evaluate_label_maps(n: int = 24, size: int = 256) -> dict:
    """mIoU of 19-class maps on synthetic test renders (training framing, |yaw| ≤ 45°, |pitch| ≤ 15°):
    the face parser alone, landmarks + matte + colour, and landmarks + matte refined by the parser."""
    from perchead.models.face_parser import FaceParser
    from perchead.pipelines.preprocess import crop_square, preprocess

    parser = FaceParser.from_pretrained(str(ROOT / "weights_card" / "parser"))
    confusion = {k: np.zeros((19, 19), np.int64) for k in ("parser", "landmarks", "landmarks+parser")}
    rng = np.random.default_rng(3)
    for seed in list(split_seeds("test"))[200 : 200 + n]:
        az, el = rng.uniform(-45, 45), rng.uniform(-15, 15)
        out = render_head(make_head(int(seed)), orbit_cameras([az], [el], size=size))
        rgb = (out["rgb"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [S, S, 3]
        truth = out["labels"][0].numpy()  # [S, S]
        result = preprocess(rgb, size=size)
        stack = np.stack([crop_square((truth == c).astype(np.uint8) * 255, result.crop_box, size, 0, result.crop_roll_deg)
                          for c in range(19)])  # [19, S, S] the truth in the crop
        truth = np.where(stack.max(0) >= 128, stack.argmax(0), 0)
        parsed = parser.parse(result.image[0], result.mask[0]).numpy()
        maps = {"parser": parsed, "landmarks": result.label_map().numpy(), "landmarks+parser": result.label_map(parsed).numpy()}
        for key, pred in maps.items():
            np.add.at(confusion[key], (truth.ravel(), pred.ravel()), 1)
    out = {}
    for key, c in confusion.items():
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        present = union > 0  # classes present in the truth or the predictions, as the parser's own val mIoU
        out[key] = {"miou": float((inter[present] / union[present]).mean()),
                    "class_iou": {int(k): round(float(inter[k] / union[k]), 3) for k in np.nonzero(present)[0]}}
        print(key, round(out[key]["miou"], 3), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibrate", action="store_true", help="re-derive FACE_POINTS_3D and print it")
    parser.add_argument("--figure", action="store_true", help="only write docs/preprocessing.png")
    parser.add_argument("--timing", action="store_true", help="only re-measure the time per photo (updates the JSON)")
    parser.add_argument("--fit-framing", type=int, default=0, metavar="HEADS",
                        help="fit perchead/pipelines/framing_model.json on this many train-split heads (×2 mirrored)")
    parser.add_argument("--heads", type=int, default=16, help="test-split heads (calibration; ×3 views measured)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "preprocess_results.json"), help="results JSON")
    args = parser.parse_args(argv)
    if args.calibrate:
        points = calibrate(args.heads)
        print("FACE_POINTS_3D = {")
        for index, xyz in points.items():
            print(f"    {index}: ({xyz[0]:.4f}, {xyz[1]:.4f}, {xyz[2]:.4f}),")
        print("}")
        return
    if args.fit_framing:
        torch.set_num_threads(2)
        X, Y = framing_data(args.fit_framing)
        model = fit_framing(X, Y)
        path = ROOT / "perchead" / "pipelines" / "framing_model.json"
        path.write_text(json.dumps(model) + "\n")
        print(f"wrote {path} ({len(X)} samples)")
        return
    if args.figure:
        figure(ROOT / "docs" / "preprocessing.png")
        return
    torch.set_num_threads(2)
    if args.timing:
        out = Path(args.output)
        results = json.loads(out.read_text()) if out.exists() else {}
        results["ms_per_photo_512"] = time_per_photo()
        out.write_text(json.dumps(results, indent=1) + "\n")
        return
    results = {"synthetic": evaluate_synthetic(args.heads * 3), "portraits": evaluate_portraits(),
               "label_maps": evaluate_label_maps(),
               "ms_per_photo_512": time_per_photo(), "threads": torch.get_num_threads()}
    out = Path(args.output)
    out.write_text(json.dumps(results, indent=1) + "\n")
    for detector in ("haar", "mediapipe_landmarks", "mediapipe"):
        print(detector, json.dumps({k: v for k, v in results["synthetic"][detector].items() if not k.startswith("yaw_")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
