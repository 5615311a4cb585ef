"""Likeness on real portraits, measured by an independent face-recognition network, and the docs figure.

    pip install --target /tmp/dlibpkgs dlib-bin face_recognition_models    # the yardstick (never a loss)
    PYTHONPATH=/tmp/dlibpkgs python benchmarks/fit_identity.py [--steps 40] [--json docs/fit_identity.json] \
        [--figure docs/photo_fit.png] [--all-faces] [--preset real|fast] [--set group.field=value ...]

For each portrait that ships in a public package (perchead/data/portraits.py fetches them), the bundled model
reconstructs the head without and with the photo-fit; both heads are rendered at yaw 0°, ±20°, ±40°
(elevation 0, 384²) and dlib's ResNet face descriptor (``face_recognition_models``) of each render is
compared with the photo's: distance < 0.6 is dlib's "same person". The fit never sees this network. A
render where dlib's detectors find no face counts as not recognised. ``--all-faces`` measures every face
the preprocessing finds in a photo (``face_index``; the group photo has six), each against dlib's
descriptor of the largest face dlib finds with its centre inside that face's box, keyed ``photo#k``
beyond the largest. For photos of one person (:data:`SAME_PERSON`) each reconstruction's renders are also
compared with the OTHER photos' descriptors (``cross_photo``: a test that copying the input's pixels cannot
pass); ``recognised_per_angle`` counts the recognised renders per angle. The figure shows the public-domain
portraits (photo, then front, ¾, profile and back without and with the fit). ``--set group.field=value``
overrides a :class:`FitConfig` field of the fit (ablations; a setting chosen by its count here is no longer
measured blind, and docs/photo-fit.md says which were); the fit uses ``FitConfig.preset("real")`` as the app does for a
photo of a real person, or ``--preset fast`` (the pipeline's default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import config_overrides  # noqa: E402

from perchead.data.figures import save_labelled_grid  # noqa: E402
from perchead.fit.config import FitConfig
from perchead.photo.load import load_image
from perchead.photo.preprocess import preprocess
from perchead.pipelines.reconstruct import PercHeadPipeline  # noqa: E402

ANGLES = (0.0, 20.0, -20.0, 40.0, -40.0)
FIGURE_VIEWS = (("front", 0.0), ("3/4", 45.0), ("profile", 90.0), ("back", 180.0))
THRESHOLD = 0.6  # dlib's same-person distance
SAME_PERSON = (("obama.jpg", "obama2.jpg", "obama3.jpg"),)  # photos of one person: each render vs the OTHER photos


class Yardstick:
    """dlib's frontal detector (CNN detector as fallback), 5-point landmarks and ResNet descriptor."""

    def __init__(self):
        import importlib.util

        import dlib

        # the package's own accessors need pkg_resources (setuptools); its model files sit beside it
        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None:
            raise SystemExit("pip install dlib-bin face_recognition_models (see the module docstring)")
        models = Path(list(spec.submodule_search_locations)[0]) / "models"
        self.detect = dlib.get_frontal_face_detector()
        self.cnn = dlib.cnn_face_detection_model_v1(str(models / "mmod_human_face_detector.dat"))
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def descriptor(self, rgb: np.ndarray, within: tuple[float, float, float, float] | None = None) -> np.ndarray | None:
        """128-D descriptor of a face in a uint8 RGB image: the largest, or the largest whose box centre lies
        ``within`` (x0, y0, x1, y1 pixels); None when there is no such face."""
        boxes = list(self.detect(rgb, 1))
        if not boxes:
            boxes = [d.rect for d in self.cnn(rgb, 1)]
        if within is not None:
            x0, y0, x1, y1 = within
            boxes = [r for r in boxes if x0 <= r.center().x <= x1 and y0 <= r.center().y <= y1]
        if not boxes:
            return None
        box = max(boxes, key=lambda r: r.width() * r.height())
        chip_shape = self.shape(rgb, box)
        return np.asarray(self.net.compute_face_descriptor(rgb, chip_shape, 1))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def measure(pipe, yard, path, photo, options, box, cams, fig_cams, config, steps, figure) -> dict:
    """dlib distances of one face's renders without and with the fit (and its figure renders); ``box``: the
    face the preprocessing picks (``options``), in ``photo``'s pixels, or None for the largest."""
    ref = yard.descriptor(photo, box)
    if ref is None:
        return {"error": "dlib finds no face in the photo" + (" inside the chosen face's box" if box else "")}
    entry = {"_reference": ref}
    for tag, fit_steps in (("without", 0), ("with", steps)):
        rec = pipe(str(path), fit_steps=fit_steps, fit=config, **options)
        with torch.no_grad():
            views = pipe.model.render_views(rec.gaussians, cams).rgb[0]  # [5, 3, s, s]
        entry.setdefault("_descriptors", {})[tag] = descriptors = [yard.descriptor(to_uint8(v)) for v in views]
        dists = [None if d is None else float(np.linalg.norm(d - ref)) for d in descriptors]
        entry[tag] = {f"{a:+.0f}": d for a, d in zip(ANGLES, dists)}
        entry[f"{tag}_recognised"] = sum(d is not None and d < THRESHOLD for d in dists) / len(dists)
        entry[f"{tag}_fit_s"] = rec.timings.get("fit", 0.0)
        if fit_steps:
            entry[f"{tag}_notes"] = [n for n in rec.notes if n.startswith("photo-fit: face shape")
                                     or "face mesh" in n]
        if figure:
            with torch.no_grad():
                fig = pipe.model.render_views(rec.gaussians, fig_cams).rgb[0]  # [4, 3, S, S]
            entry.setdefault("_figure", {})[tag] = fig
            entry["_input"] = rec.preprocessed[0].image[0]
    return entry


def main(argv=None):
    from perchead.data import portraits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights_card")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--json", default="docs/fit_identity.json")
    p.add_argument("--figure", default="docs/photo_fit.png")
    p.add_argument("--preset", choices=["fast", "real"], default="real",
                   help="the fit's FitConfig preset: \"real\" as the app fits a photo of a real person (default), "
                        "\"fast\" the pipeline's default")
    p.add_argument("--set", action="append", metavar="GROUP.FIELD=VALUE",
                   help="override a FitConfig field, e.g. latent.steps=0 (repeatable)")
    p.add_argument("--all-faces", action="store_true",
                   help="every face the preprocessing finds in each photo (the group photo's six), not the largest")
    args = p.parse_args(argv)
    config = FitConfig.preset(args.preset, config_overrides(FitConfig, args.set))
    torch.set_num_threads(os.cpu_count() or 1)
    portraits.fetch()
    pipe = PercHeadPipeline.from_pretrained(args.model, device="cpu")
    yard = Yardstick()
    cams = pipe.model.default_cameras(list(ANGLES), size=args.size)
    fig_cams = pipe.model.default_cameras([a for _, a in FIGURE_VIEWS], size=pipe.model.config.render.render_size)
    results, rows, entries = {}, [], {}
    for name in portraits.NAMES:
        path = portraits.path(name)
        if path is None:
            continue
        photo = load_image(str(path), pipe.preprocess_config())[0]  # the working image the face boxes refer to
        boxes = [None]
        if args.all_faces:  # every face the preprocessing finds
            boxes = list(preprocess(str(path), pipe.preprocess_config()).face_boxes) or [None]
        for face, box in enumerate(boxes):
            key = name if face == 0 else f"{name}#{face}"
            options = {} if box is None else {"face_index": face}
            entry = measure(pipe, yard, path, photo, options, box, cams, fig_cams, config, args.steps,
                            figure=name in portraits.PUBLIC_DOMAIN and face == 0)
            results[key] = {k: v for k, v in entry.items() if not k.startswith("_")}
            entries[key] = entry
            if "_figure" in entry:
                rows.append(torch.cat([entry["_input"].float()] + list(entry["_figure"]["without"])
                                      + list(entry["_figure"]["with"]), dim=-1))  # [3, S, 9S]
            print(key, json.dumps(results[key]), flush=True)
    results["cross_photo"] = cross_photo(entries)
    results["recognised_per_angle"] = {tag: {f"{a:+.0f}": sum(
        r.get(tag, {}).get(f"{a:+.0f}") is not None and r[tag][f"{a:+.0f}"] < THRESHOLD
        for k, r in results.items() if k in entries) for a in ANGLES} for tag in ("without", "with")}
    print("cross_photo", json.dumps(results["cross_photo"]), "\nrecognised_per_angle",
          json.dumps(results["recognised_per_angle"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.figure and rows:
        S = pipe.model.config.render.render_size
        labels = ["photo (input)"] + [f"{v} no fit" for v, _ in FIGURE_VIEWS] + [f"{v} fit" for v, _ in FIGURE_VIEWS]
        save_labelled_grid(torch.cat(rows, dim=-2), labels, S, args.figure)
    return results


def cross_photo(entries: dict) -> dict:
    """Each reconstruction of a photo in :data:`SAME_PERSON` against dlib's descriptor of every OTHER photo of that
    person (which copying the input's pixels cannot pass): per fit and angle, renders recognised of those compared
    (a render without a face counts as not recognised), and the mean distance over the renders with a face."""
    out = {}
    for tag in ("without", "with"):
        per_angle = {}
        for k, angle in enumerate(ANGLES):
            dists = []
            for group in SAME_PERSON:
                for name in group:
                    if "_descriptors" not in entries.get(name, {}):
                        continue
                    d = entries[name]["_descriptors"][tag][k]
                    dists += [None if d is None else float(np.linalg.norm(d - entries[other]["_reference"]))
                              for other in group if other != name and "_reference" in entries.get(other, {})]
            found = [d for d in dists if d is not None]
            per_angle[f"{angle:+.0f}"] = {"recognised": sum(d < THRESHOLD for d in found), "compared": len(dists),
                                          "mean_distance": float(np.mean(found)) if found else None}
        out[tag] = per_angle
    return out


if __name__ == "__main__":
    main()
