"""Preprocessing benchmark: detection rate, framing and yaw error on synthetic renders, time per photo.

    python benchmarks/preprocess.py              # measure (writes docs/preprocess_results.json)
    python benchmarks/preprocess.py --framing-floor 3600 --framing-cache /tmp/framing
        # what an exact face and silhouette would allow, beside the refinement (JSON key framing_floor)

The framing regressor (perchead/photo/framing_model.json) and FACE_POINTS_3D are trained by
:mod:`perchead.training.framing` (``python -m perchead.training.framing``, a step of ``python3 tasks.py weights``).

Synthetic renders (test-split heads, never trained on) are made with known cameras: azimuth (yaw) in
[-60°, 60°], elevation in [-20°, 20°], distance 0.7–1.6 m, then rolled by up to ±25° and shifted inside a
larger canvas with a coloured background, so the ideal crop (the training camera's frame around the head
centre, upright) is known exactly. Errors are given as fractions of the ideal crop side. 48 renders go
through all three paths (key ``synthetic``), 240 more through the MediaPipe paths (``synthetic_more``).
The framing regressor is fitted and chosen on train-split heads only (fit: heads 0–3,599; choice:
50,000–50,799).
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
from perchead.training.framing import (  # noqa: E402
    cached_rows, fit_framing, framing_errors, framing_features, framing_rows, framing_targets, synthetic_view,
    unpack_bits,
)


def _oracle_features(rows: dict) -> np.ndarray:
    """What a perfect landmark detector and matte would give: the exact :data:`ANCHORS` (but the skull's
    centre) in the pose's crop, the log lengths eyes → mouth, between the eyes, eyes → chin and eyes →
    crown, the exact silhouette (the render's alpha) measured as :func:`perchead.photo.framing.features`
    does, the true yaw and pitch, and the pose's roll error. NaN where the silhouette is cut. ``[N, F']``"""
    from perchead.photo import framing

    S, unit = framing.SIZE, framing.SIZE / framing.ENLARGE
    out = []
    for i, exact in enumerate(rows["anchors"].astype(np.float64)):
        a = (exact - S / 2) / unit  # [A, 2]
        yaw, pitch = np.radians(rows["truth"][i, :2])
        mid = (a[0] + a[1]) / 2
        f = [np.sin(yaw), np.cos(yaw), pitch, yaw * pitch, np.radians(rows["truth"][i, 2] - rows["pose"][i, 2]), *a.ravel(),
             *np.log([np.linalg.norm(a[4] - mid), np.linalg.norm(a[1] - a[0]) + 1e-3, np.linalg.norm(a[5] - mid),
                      np.linalg.norm(a[8] - mid), abs(a[4, 1] - mid[1]) + 1e-3])]
        marks = np.repeat(exact[2:3], 468, 0)  # the mesh indices framing.features reads, at the exact points
        marks[[33, 133]], marks[[263, 362]], marks[[61, 291]], marks[152], marks[1] = exact[0], exact[1], exact[4], exact[5], exact[3]
        measured = framing.features(unpack_bits(rows["alpha"][i]).astype(np.float32), marks, exact[[0, 1, 3, 4, 6, 7]],
                                    unpack_bits(rows["valid"][i]), rows["truth"][i, 0] or 1e-3, rows["truth"][i, 1], 0.0)
        if measured is None:
            out.append(np.full(len(f) + 14, np.nan))
            continue
        silhouette = measured[0][2:16].copy()  # top, widths at framing.ROWS, area, centroid, spread
        if measured[1]:  # measured mirrored: back to this view's sides
            silhouette[1:9] = -silhouette[1:9].reshape(4, 2)[:, ::-1].ravel()
            silhouette[10] *= -1
        out.append(np.concatenate([f, silhouette]))
    return np.asarray(out)


def framing_floor(n_heads: int, held_out: int = 400, cache: Path | None = None) -> dict:
    """How well any framing could do from one image of these heads: a regressor like the refinement's
    (:func:`fit_framing`), given the exact projections of the face's points and the exact silhouette with
    the true yaw and pitch (:func:`_oracle_features`), fitted on ``n_heads`` train-split heads (mirrored)
    and measured on ``held_out`` other train-split heads (from index 50,000) seen from the benchmark's
    cameras, beside the landmark pose alone and the refinement itself on the same views."""
    from perchead.photo import framing

    fit = cached_rows(cache and Path(f"{cache}.fit.npz"), lambda: framing_rows(range(n_heads)))
    test = cached_rows(cache and Path(f"{cache}.test.npz"), lambda: framing_rows(range(50_000, 50_000 + held_out), fitting=False))
    Xf, Xt = _oracle_features(fit), _oracle_features(test)
    okf, okt = ~np.isnan(Xf).any(1), ~np.isnan(Xt).any(1)
    oracle = fit_framing(Xf[okf], framing_targets(fit)[okf], hidden=64, steps=1200, members=3)
    best = np.zeros((len(Xt), 4))
    best[okt] = framing.network({k: np.asarray(v, np.float64) for k, v in oracle.items() if k != "outputs"}, Xt[okt])
    best[:, 3] = test["truth"][:, 0] - test["pose"][:, 0]  # the yaw is given
    model = framing.load_model()
    X, mirrored, ok = framing_features(test)
    refined = np.zeros((len(X), 4))
    for i in np.nonzero(ok)[0]:
        c = framing.predict(model, X[i], mirrored[i])
        refined[i] = (c.dx, c.dy, c.log_scale, c.dyaw_deg)
    from perchead.data.synthetic import _sample_attributes

    seeds = split_seeds("train")  # the heads' own small turn, which no camera yaw estimate can see past
    turn = [abs(np.degrees(_sample_attributes(np.random.default_rng(seeds[int(h)]))["head_yaw"])) for h in test["head"]]
    out = {"fit_views": int(okf.sum()), "held_out_views": len(Xt), "head_turn_deg_median": float(np.median(turn))}
    for name, corrections, keep in (("landmark_pose", np.zeros_like(refined), slice(None)), ("refined", refined, slice(None)),
                                    ("oracle", best, okt)):
        errors = framing_errors(test, corrections)[keep]
        yaw = np.abs(test["truth"][keep, 0])
        out[name] = {"cases": len(errors), "centre_median": float(np.median(errors[:, 0])), "centre_within_0.03": float((errors[:, 0] <= 0.03).mean()),
                     "scale_median": float(np.median(errors[:, 1])), "scale_within_0.03": float((errors[:, 1] <= 0.03).mean()),
                     "yaw_median": float(np.median(errors[:, 2])), "yaw_within_10deg": float((errors[:, 2] <= 10).mean()),
                     "yaw_45_60_within_10deg": float((errors[yaw > 45, 2] <= 10).mean())}
        print(name, out[name], flush=True)
    return out


def synthetic_cases(n: int, size: int = 512, seed: int = 0, start: int = 0):
    """Yields (image ``[S, S, 3]`` uint8, alpha ``[S, S]`` uint8, truth dict) for ``n`` test-split heads
    from index ``start``."""
    rng = np.random.default_rng(seed)
    for head_seed in list(split_seeds("test"))[start : start + n]:
        yield synthetic_view(head_seed, rng, size)


def evaluate_synthetic(n: int, size: int = 512, start: int = 0, seed: int = 0, haar: bool = True, per_case: bool = True) -> dict:
    """Old (Haar + GrabCut) vs new (MediaPipe) path on ``n`` synthetic renders with known cameras (test-split
    heads from index ``start``, cameras drawn from ``seed``; ``haar=False`` leaves the old path out;
    ``per_case=False`` returns the summaries only)."""
    from perchead.photo.config import PreprocessConfig
    from perchead.photo.crop import crop_square
    from perchead.photo.load import PreprocessError
    from perchead.photo.preprocess import preprocess

    config = PreprocessConfig(size=256)
    paths = {"haar": {"detector": "haar"}, "mediapipe_landmarks": {"detector": "mediapipe", "refine_framing": False},
             "mediapipe": {"detector": "mediapipe"}}  # the landmark pose alone, and refined by the silhouette
    if not haar:
        del paths["haar"]
    rows = {name: [] for name in paths}
    for image, alpha, truth in synthetic_cases(n, size, seed, start):
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
    summary |= {"cases": n, "first_head": start, "camera_seed": seed, "image_size": size}
    if per_case:
        summary["per_case"] = {d: [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in x.items()} for x in r]
                               for d, r in rows.items()}
    return summary


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
    """Real portraits (perchead/data/portraits.py) and harder variants of them: grayscale, tight crop, rolled,
    mirrored, a small face, a group photo."""
    import cv2
    from PIL import Image

    from perchead.data import portraits

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
    from perchead.photo.load import PreprocessError
    from perchead.photo.preprocess import preprocess

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

    from perchead.photo.preprocess import preprocess

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

    from perchead.geometry.images import to_uint8
    from perchead.geometry.segmentation import labels_to_color
    from perchead.models.face_parser import FaceParser
    from perchead.photo.load import PreprocessError
    from perchead.photo.preprocess import preprocess

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
    from perchead.photo.crop import crop_square
    from perchead.photo.preprocess import preprocess

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
    parser.add_argument("--figure", action="store_true", help="only write docs/preprocessing.png")
    parser.add_argument("--timing", action="store_true", help="only re-measure the time per photo (updates the JSON)")
    parser.add_argument("--framing-floor", type=int, default=0, metavar="HEADS",
                        help="only measure the framing an exact face and silhouette would allow (fitted on this many "
                             "train-split heads; updates the JSON)")
    parser.add_argument("--framing-cache", default=None, metavar="PATH",
                        help="keep the framing views' measurements in PATH(.fit/.test).npz and reuse them")
    parser.add_argument("--heads", type=int, default=16, help="test-split heads (×3 views measured)")
    parser.add_argument("--more-cases", type=int, default=240,
                        help="further test-split renders measured with the MediaPipe paths only (a steadier median)")
    parser.add_argument("--output", default=str(ROOT / "docs" / "preprocess_results.json"), help="results JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(args.output)
    if args.figure:
        figure(ROOT / "docs" / "preprocessing.png")
        return
    if args.timing or args.framing_floor:
        results = json.loads(out.read_text()) if out.exists() else {}
        if args.timing:
            results["ms_per_photo_512"] = time_per_photo()
        else:
            results["framing_floor"] = framing_floor(args.framing_floor, cache=args.framing_cache)
        out.write_text(json.dumps(results, indent=1) + "\n")
        return
    previous = json.loads(out.read_text()) if out.exists() else {}
    results = {"synthetic": evaluate_synthetic(args.heads * 3),
               "synthetic_more": evaluate_synthetic(args.more_cases, start=args.heads * 3, seed=1, haar=False, per_case=False),
               "portraits": evaluate_portraits(), "label_maps": evaluate_label_maps(),
               "ms_per_photo_512": time_per_photo(), "threads": torch.get_num_threads()}
    if "framing_floor" in previous:  # measured apart (--framing-floor): kept
        results["framing_floor"] = previous["framing_floor"]
    out.write_text(json.dumps(results, indent=1) + "\n")
    for key in ("synthetic", "synthetic_more"):
        for detector in ("haar", "mediapipe_landmarks", "mediapipe"):
            if detector in results[key]:
                print(key, detector, json.dumps({k: v for k, v in results[key][detector].items() if not k.startswith("yaw_")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
