"""Photo-fit benchmark: seconds per fit (median of several runs) and quality with vs. without the fit.

    python benchmarks/fit.py speed [--model weights_card] [--runs 5] [--steps 40]
    python benchmarks/fit.py quality [--subjects 20] [--out docs/fit_heads.jsonl] [--pose oracle|search]
        [--set group.field=value ...]
    python benchmarks/fit.py summary [--out docs/fit_heads.jsonl] [--json docs/fit_results.json]

``speed`` fits the first synthetic test head (the evaluation's novel-view input) ``--runs`` times and
prints the median wall seconds with threads pinned to the machine's cores, the median CPU seconds (all
threads: on a shared machine the wall time of an idle one is about CPU / cores) and the load average,
and with ``--profile`` the functions that take the time. ``quality`` follows the evaluation protocol of
:mod:`perchead.evaluation.reconstruction` on the held-out test heads (novel views: one near-frontal input,
8 targets around the head; extreme views: profile and ±60° flips) and scores the bundled model's
prediction with and without the fit; each head is appended to a JSON-lines file as it finishes, so an
interrupted run resumes where it stopped. ``--pose oracle`` gives the fit the protocol's input camera (what
the landmark pose gives for a photo), ``--pose search`` lets it find the yaw and pitch itself. The
input-view PSNR is measured at the camera the fit returns (the given one when the refined rotation turns the
head, ``FitConfig.camera.rotate_head``, the default; else the refined camera).
``--set group.field=value`` overrides a :class:`FitConfig` field (a Python literal or a bare word), for ablations.
``--size N`` renders the fit's photo and scores the novel views at N² (the model still gets its own
input size; ``--set photo.fit_size=...`` then decides the size the fit compares at). ``--face-mesh`` runs the
face mesh on each input render and gives the fit its landmarks (for ``--set face.enabled=True``;
:mod:`perchead.fit.face_shape`). Every head also records the face's depth error in the input view:
mean |depth − true depth| over the true face pixels (skin, nose, eyes, brows, mouth, lips; alpha ≥ 0.95
in both), after removing its mean (shape, not distance), in millimetres.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from _common import config_overrides  # noqa: E402

from perchead.data.synthetic import make_head, split_seeds  # noqa: E402
from perchead.evaluation.reconstruction import _cameras, _ground_truth, extreme_pairs, novel_views  # noqa: E402
from perchead.fit.config import FitConfig
from perchead.fit.driver import fit_to_photo
from perchead.fit.face_shape import expected_depth, mesh_landmarks
from perchead.fit.priors import far_front_shares
from perchead.models.perchead import PercHead  # noqa: E402
from perchead.models.similarity import psnr, ssim  # noqa: E402

FACE_CLASSES = ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")


def _config(args) -> FitConfig:
    """The fast preset with ``--steps``, ``--camera-steps`` and ``--set group.field=value`` overrides."""
    overrides = config_overrides(FitConfig, args.set)
    camera_steps = FitConfig().camera.steps if getattr(args, "camera_steps", None) is None else args.camera_steps
    return FitConfig.preset("fast", {"gaussians.steps": args.steps, "camera.steps": min(camera_steps, args.steps),
                                     **overrides})


def _input(model, head, view, size=None):
    cams = _cameras([view], model, size or model.config.render.image_size)
    image, mask = _ground_truth(head, cams)  # [1, 3, S, S], [1, 1, S, S]
    return image, mask, cams


@torch.no_grad()
def _face_depth_mm(head, g, cams) -> float:
    """The face's depth-shape error of head ``g`` against the synthetic ``head`` from ``cams`` (one view), mm."""
    from perchead.data.synthetic import render_head
    from perchead.geometry.segmentation import CLASSES

    labels = render_head(head, cams)["labels"][0]  # [S, S]
    face = torch.zeros_like(labels, dtype=torch.bool)
    for name in FACE_CLASSES:
        face |= labels == CLASSES.index(name)
    d_true, a_true = expected_depth(head.gaussians, cams)
    d, a = expected_depth(g, cams)
    face &= (a_true >= 0.95) & (a >= 0.95)
    if int(face.sum()) < 10:
        return float("nan")
    diff = (d - d_true)[face]
    return 1000 * float((diff - diff.mean()).abs().mean())


@torch.no_grad()
def _views(model, g, cams, size):
    return model.render_at(g, cams.viewmats, cams.Ks, size, size).rgb[0].float().clamp(0, 1)  # [V, 3, S, S]


def speed(args) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    model = PercHead.from_pretrained(args.model).eval()
    head = make_head(split_seeds("test")[0])
    inp, _ = novel_views(0, 8, 0)
    image, mask, cams = _input(model, head, inp)
    with torch.no_grad():
        g = model(image, mask)[0]
    config = _config(args)

    def landmarks():  # the pipeline runs the face mesh on the model input before the fit (timed with it)
        return mesh_landmarks(image) if args.face_mesh else None

    fit_to_photo(model, g, image, mask, camera=cams, config=config, landmarks=landmarks())  # warm-up
    times, cpu = [], []
    for _ in range(args.runs):
        t, c = time.perf_counter(), time.process_time()
        fit_to_photo(model, g, image, mask, camera=cams, config=config, landmarks=landmarks())
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    t = time.perf_counter()
    fit_to_photo(model, g, image, mask, camera=None, config=config)
    searched = time.perf_counter() - t
    result = {"model": args.model, "gaussians": g.num_gaussians, "image_size": image.shape[-1], "steps": args.steps,
              "latent_steps": config.latent.steps,
              "threads": torch.get_num_threads(), "runs": args.runs, "median_s": statistics.median(times),
              "times_s": times, "median_cpu_s": statistics.median(cpu), "load_average": os.getloadavg(), "with_pose_search_s": searched}
    print(json.dumps(result, indent=2))
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(fit_to_photo, model, g, image, mask, camera=cams, config=config)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return result


def quality(args) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    model = PercHead.from_pretrained(args.model).eval()
    size = args.size or model.config.render.render_size
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        done = {json.loads(line)["subject"] for line in out.read_text().splitlines() if line.strip()}
    config = _config(args)
    seeds = split_seeds("test")
    for i in range(args.start, args.start + args.subjects):
        if i in done:
            continue
        head = make_head(seeds[i])
        row: dict = {"subject": i, "steps": args.steps, "latent_steps": config.latent.steps, "pose": args.pose,
                     "camera_steps": config.camera.steps}
        # novel views
        inp, targets = novel_views(i, 8, 0)
        image, mask, icams = _input(model, head, inp)
        photo, photo_mask, photo_cams = (image, mask, icams) if not args.size else _input(model, head, inp, args.size)
        tcams = _cameras(targets, model, size)
        gt, _ = _ground_truth(head, tcams)
        with torch.no_grad():
            g = model(image, mask)[0]
        t = time.perf_counter()
        landmarks = mesh_landmarks(photo) if args.face_mesh else None
        fr = fit_to_photo(model, g, photo, photo_mask, camera=photo_cams if args.pose == "oracle" else None,
                          config=config, landmarks=landmarks)
        row["fit_s"] = time.perf_counter() - t
        row["face_mesh"] = landmarks is not None
        if fr.sources is not None:
            row["far_front_sources"] = far_front_shares(fr.sources, model.template.normals.float(),
                                                        model.template.vertices.float(), icams.viewmats)
        for tag, head_g in (("without", g), ("with", fr.gaussians)):
            row[f"face_depth_mm_{tag}"] = _face_depth_mm(head, head_g, icams)
        for tag, head_g, cam in (("without", g, icams), ("with", fr.gaussians, fr.camera)):
            pred = _views(model, head_g, tcams, size)
            row[f"novel_psnr_{tag}"] = psnr(pred, gt).tolist()
            row[f"novel_ssim_{tag}"] = ssim(pred, gt).tolist()
            own = _views(model, head_g, cam, cam.width)
            seen = F.interpolate(photo, size=(cam.width,) * 2, mode="area") if cam.width != photo.shape[-1] else photo
            row[f"input_psnr_{tag}"] = float(psnr(own, seen)[0])
        # extreme views (the fit always gets the protocol's input camera: the search covers ±40° yaw)
        for k, (src, dst) in enumerate(extreme_pairs()):
            if args.no_extreme:
                break
            image, mask, icams = _input(model, head, src)
            tcam = _cameras([dst], model, size)
            gt, _ = _ground_truth(head, tcam)
            with torch.no_grad():
                g = model(image, mask)[0]
            landmarks = mesh_landmarks(image) if args.face_mesh else None
            fr = fit_to_photo(model, g, image, mask, camera=icams, config=config, landmarks=landmarks)
            for tag, head_g in (("without", g), ("with", fr.gaussians)):
                pred = _views(model, head_g, tcam, size)
                row.setdefault(f"extreme_psnr_{tag}", []).append(float(psnr(pred, gt)[0]))
                row.setdefault(f"extreme_ssim_{tag}", []).append(float(ssim(pred, gt)[0]))
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"head {i}: novel {statistics.mean(row['novel_psnr_without']):.2f} → "
              f"{statistics.mean(row['novel_psnr_with']):.2f} dB, input {row['input_psnr_without']:.2f} → "
              f"{row['input_psnr_with']:.2f} dB, fit {row['fit_s']:.1f} s", flush=True)
    summary(args)


def summary(args) -> dict:
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]

    def mean(key):
        vals = [v for r in rows if key in r for v in (r[key] if isinstance(r[key], list) else [r[key]])]
        vals = [v for v in vals if v == v]  # not NaN (a face metric without face pixels)
        return statistics.mean(vals) if vals else None

    result = {"subjects": len(rows), "steps": sorted({r["steps"] for r in rows}), "pose": sorted({r["pose"] for r in rows}),
              "extreme_subjects": sum("extreme_psnr_with" in r for r in rows)}
    for key in ("novel_psnr", "novel_ssim", "input_psnr", "extreme_psnr", "extreme_ssim", "face_depth_mm"):
        result[key] = {tag: mean(f"{key}_{tag}") for tag in ("without", "with")}
    far = [r["far_front_sources"] for r in rows if "far_front_sources" in r]
    if far:
        result["far_front_colour_sources"] = dict(zip(("photo", "mirror", "prediction"),
                                                      (statistics.mean(f[k] for f in far) for k in range(3))))
    lr = [(r["extreme_psnr_without"][:2], r["extreme_psnr_with"][:2]) for r in rows if "extreme_psnr_with" in r]
    if lr:
        result["extreme_left_right_psnr"] = {"without": statistics.mean(v for a, _ in lr for v in a),
                                             "with": statistics.mean(v for _, b in lr for v in b)}
    # novel-view gain by the target's yaw distance from the input (the protocol's view draws)
    bins = {"0-60": [], "60-120": [], "120-180": []}
    for r in rows:
        (a_in, _), targets = novel_views(r["subject"], len(r["novel_psnr_with"]), 0)
        for (a, _), w, wo in zip(targets, r["novel_psnr_with"], r["novel_psnr_without"]):
            d = abs((a - a_in + 180) % 360 - 180)
            bins["0-60" if d < 60 else "60-120" if d < 120 else "120-180"].append(w - wo)
    result["novel_psnr_gain_by_yaw_from_input"] = {k: statistics.mean(v) if v else None for k, v in bins.items()}
    result["fit_s_median"] = statistics.median(r["fit_s"] for r in rows)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["speed", "quality", "summary"])
    p.add_argument("--model", default="weights_card")
    p.add_argument("--steps", type=int, default=FitConfig().gaussians.steps)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--camera-steps", type=int, default=None, help="quality: camera refinement steps (default: FitConfig's)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--subjects", type=int, default=20)
    p.add_argument("--start", type=int, default=0, help="quality: first head; --subjects heads from there (to split a run over processes)")
    p.add_argument("--pose", choices=["oracle", "search"], default="oracle")
    p.add_argument("--no-extreme", action="store_true")
    p.add_argument("--size", type=int, default=None,
                   help="quality: the fit's photo and the novel views at this size (the model input stays at its own)")
    p.add_argument("--face-mesh", action="store_true", help="give the fit the face mesh of each input render")
    p.add_argument("--out", default="docs/fit_heads.jsonl")
    p.add_argument("--json", default=None)
    p.add_argument("--set", action="append", metavar="GROUP.FIELD=VALUE",
                   help="override a FitConfig field, e.g. latent.steps=0 (repeatable)")
    args = p.parse_args(argv)
    {"speed": speed, "quality": quality, "summary": summary}[args.mode](args)


if __name__ == "__main__":
    main()
