"""Restyle my head, measured: likeness, hair colour, the kept face, longer hair, region labels and speed.

    PYTHONPATH=/tmp/dlibpkgs python benchmarks/restyle.py [--faces 13] [--synthetic 5] \
        [--figure docs/restyle.jpg] [--json out.json]

Real portraits (perchead/data/portraits.py; every face of the group photo, 13 in all; dlib as the yardstick, see
benchmarks/fit_identity.py): each face is reconstructed with the app's photo-fit (40 steps, preset
``real``), its photo map made (:meth:`PercHeadEditPipeline.map_of`), its Gaussians labelled, then edited with
five "<colour> hair" prompts two ways: **restyled** (:class:`~perchead.pipelines.restyle.Restyler`, the
person's head with the edit's hair) and **map-only** (today's editor: the head generated from the map).
Printed: the share of renders at yaw 0°, ±20° that dlib recognises as the photo's person (distance < 0.6),
for the reconstruction, the restyled heads and the map-only heads; the face's PSNR of the restyled head
against the reconstruction at those views (face pixels of the reconstruction's label render, outside the
hair band: both heads' hair dilated by 3 pixels), and against the photo at the input view for both; the
hair-silhouette IoU at the input view with the map's hair for the photo's map and a longer-hair map
(:func:`perchead.geometry.regions.longer_hair`), and for the unedited reconstruction with the photo's map
(the measure's own ceiling: the head's shape is the reconstruction's); the seconds of labelling and of
each edit.

Synthetic test heads (``--synthetic``; held-out seeds, the ground truth known): each head's front render is
reconstructed (photo-fit ``fast``) and its map parsed; per-class IoU of the labelled head's label renders
against the true label renders at 0°, ±45°, ±90°, 180°; and the hair-colour score of
:func:`perchead.evaluation.editing.hair_color_scores` over the 10 colours (rendered hair against the ground
truth with its hair repainted) for the restyled heads and for the map-only edit of the same map.

The figure shows the public-domain portraits only (the others' licences allow tests, not committed files):
the photo (its map below), the debug render of the reconstruction's regions, the reconstruction, red,
blonde, blue and longer hair, at 0° (upper row) and 45° (lower row).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import report  # noqa: E402
from fit_identity import THRESHOLD, Yardstick, to_uint8  # noqa: E402

from perchead.evaluation.editing import (  # noqa: E402
    DEFAULT_COLORS, hair_color_scores, input_map, region_mean_color, repainted_hair_colors,
)
from perchead.geometry.regions import FACE_CLASSES, longer_hair  # noqa: E402
from perchead.data.figures import save_labelled_grid  # noqa: E402
from perchead.geometry.segmentation import CLASSES, NUM_CLASSES, labels_to_color, mask_iou, resize_labels  # noqa: E402
from perchead.pipelines.edit import PercHeadEditPipeline  # noqa: E402
from perchead.fit.config import FitConfig  # noqa: E402
from perchead.photo.load import load_image  # noqa: E402
from perchead.photo.preprocess import preprocess  # noqa: E402
from perchead.pipelines.reconstruct import PercHeadPipeline  # noqa: E402
from perchead.pipelines.restyle import Restyler, at_size, label_colors  # noqa: E402

ANGLES = (0.0, 20.0, -20.0)
PROMPTS = ("red", "blonde", "blue", "pink", "green")
FIGURE = ("reconstruction", "red", "blonde", "blue", "longer hair")  # the figure's columns after the photo
LABEL_VIEWS = (0.0, 45.0, -45.0, 90.0, -90.0, 180.0)
HAIR_IDS = (CLASSES.index("hair"), CLASSES.index("hat"))


def label_render(editor, gaussians, labels, cameras) -> torch.Tensor:
    """Argmax of one-hot class features rendered at ``cameras`` (background where alpha < 0.5). ``[V, H, W]``"""
    onehot = F.one_hot(labels.long(), NUM_CLASSES).float()  # [N, 19]
    out = editor.render_views(gaussians, cameras, refine=False, features=onehot)
    lab = out.features[0].argmax(1)  # [V, H, W]
    lab[out.alpha[0, :, 0] < 0.5] = 0
    return lab.cpu()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float | None:
    """PSNR (dB) of two ``[V, 3, H, W]`` images over ``mask`` ``[V, H, W]``; None for an empty mask."""
    if int(mask.sum()) < 20:
        return None
    mse = ((a - b) ** 2).permute(1, 0, 2, 3)[:, mask].mean()
    return float(10 * torch.log10(1 / mse.clamp_min(1e-10)))


def hair_band(*maps: torch.Tensor, pixels: int = 3) -> torch.Tensor:
    """Hair pixels of any of the label maps, dilated by ``pixels``. ``[V, H, W]`` bool"""
    hair = torch.zeros_like(maps[0], dtype=torch.bool)
    for m in maps:
        hair |= torch.isin(m, torch.tensor(HAIR_IDS))
    k = 2 * pixels + 1
    return F.max_pool2d(hair.float()[:, None], k, stride=1, padding=pixels)[:, 0] > 0.5


def recognised(yard, views, ref) -> list[float | None]:
    out = []
    for view in views:
        d = yard.descriptor(to_uint8(view))
        out.append(None if d is None else float(np.linalg.norm(d - ref)))
    return out


def share(dists) -> float:
    return sum(d is not None and d < THRESHOLD for d in dists) / max(len(dists), 1)


def real_faces(rp, ep, restyler, limit: int, size: int, figure_rows: list) -> dict:
    from perchead.data import portraits

    yard = Yardstick()
    config = FitConfig.preset("real")
    cams = ep.editor.default_cameras(list(ANGLES), size=size)
    label_cams = ep.editor.default_cameras(list(ANGLES), size=restyler.config.label_size)
    fig_cams = ep.editor.default_cameras([0.0, 45.0], size=rp.model.config.render.render_size)
    r = rp.model.config.render
    faces, done = {}, 0
    for name in portraits.NAMES:
        path = portraits.path(name)
        if path is None:
            continue
        photo = load_image(str(path), rp.preprocess_config())[0]
        boxes = list(preprocess(str(path), rp.preprocess_config()).face_boxes) or [None]
        for face, box in enumerate(boxes):
            if done >= limit:
                return faces
            key = name if face == 0 else f"{name}#{face}"
            ref = yard.descriptor(photo, box)
            if ref is None:
                faces[key] = {"error": "dlib finds no face in the photo"}
                continue
            done += 1
            options = {} if box is None else {"face_index": face}
            rec = rp(str(path), fit_steps=40, fit=config, **options)
            prep = rec.preprocessed[0]
            labels = ep.map_of(prep)  # [S, S] the photo's map
            camera = prep.input_camera(radius=r.radius, fov_deg=r.fov_deg,
                                       pitch_offset_deg=config.pose.landmark_pitch_offset_deg)
            t0 = time.perf_counter()
            person = restyler.regions(rec.gaussians[0], labels, camera)
            entry = {"regions_s": time.perf_counter() - t0, "pose": camera is not None}
            with torch.no_grad():
                rec_views = ep.editor.render_views(person.gaussians, cams).rgb[0].float().clamp(0, 1)
                rec_labels = label_render(ep.editor, person.gaussians, person.labels, label_cams)
            entry["reconstruction"] = share(recognised(yard, rec_views, ref))
            restyled_d, maponly_d, face_psnr, photo_psnr, seconds = [], [], [], [], []
            in_cam = person.camera
            photo_img = F.interpolate(prep.image.float(), size=restyler.config.label_size, mode="area")  # [1, 3, s, s]
            photo_mask = F.interpolate(prep.mask.float(), size=restyler.config.label_size, mode="area")[0].cpu()  # [1, s, s]
            with torch.no_grad():
                rec_in = ep.editor.render_views(person.gaussians, at_size(in_cam, restyler.config.label_size)).rgb[0]
                rec_in_labels = label_render(ep.editor, person.gaussians, person.labels,
                                             at_size(in_cam, restyler.config.label_size))
            outs = {}
            for colour in PROMPTS:
                out = restyler(person, style_text=f"{colour} hair")
                seconds.append(out.timings["total"])
                outs[colour] = out
                with torch.no_grad():
                    views = ep.editor.render_views(out.gaussians, cams).rgb[0].float().clamp(0, 1)
                    generated = ep.editor.render_views(out.edit.gaussians, cams).rgb[0].float().clamp(0, 1)
                    small = ep.editor.render_views(out.gaussians, label_cams).rgb[0].float().clamp(0, 1)
                    small_rec = ep.editor.render_views(person.gaussians, label_cams).rgb[0].float().clamp(0, 1)
                    out_labels = label_render(ep.editor, out.gaussians[0], out.labels, label_cams)
                    out_in = ep.editor.render_views(out.gaussians, at_size(in_cam, restyler.config.label_size)).rgb[0]
                    out_in_labels = label_render(ep.editor, out.gaussians[0], out.labels,
                                                 at_size(in_cam, restyler.config.label_size))
                restyled_d += recognised(yard, views, ref)
                maponly_d += recognised(yard, generated, ref)
                kept = torch.isin(rec_labels, torch.tensor(FACE_CLASSES)) & ~hair_band(rec_labels, out_labels)
                face_psnr.append(psnr(small, small_rec, kept))
                face_in = (torch.isin(rec_in_labels, torch.tensor(FACE_CLASSES)) & ~hair_band(rec_in_labels, out_in_labels)
                           & (photo_mask > 0.5))  # [1, s, s] the kept face inside the photo's matte
                photo_psnr.append((psnr(rec_in.float().clamp(0, 1), photo_img, face_in),
                                   psnr(out_in.float().clamp(0, 1), photo_img, face_in)))
            entry["restyled"] = share(restyled_d)
            entry["map_only"] = share(maponly_d)
            entry["face_psnr_vs_reconstruction"] = _mean([p for p in face_psnr if p is not None])
            drops = [a - b for a, b in photo_psnr if a is not None and b is not None]
            entry["face_psnr_vs_photo"] = {"reconstruction": _mean([a for a, _ in photo_psnr if a is not None]),
                                           "restyled": _mean([b for _, b in photo_psnr if b is not None]),
                                           "drop_db": _mean(drops)}
            entry["edit_s"] = statistics.median(seconds)
            # geometry: the photo's map and a longer-hair map, hair silhouette IoU at the input view
            long_map = longer_hair(labels)
            long = restyler(person, long_map, style_text="long hair")
            ious = {"reconstruction": mask_iou(torch.isin(rec_in_labels[0], torch.tensor(HAIR_IDS)),
                                               torch.isin(resize_labels(labels, restyler.config.label_size),
                                                          torch.tensor(HAIR_IDS)))}  # the ceiling of the measure
            for tag, m, out in (("photo_map", labels, outs[PROMPTS[0]]), ("longer_hair", long_map, long)):
                for who, g, lab in (("", out.gaussians[0], out.labels), ("_map_only", out.edit.gaussians[0],
                                                                        out.edit_labels)):
                    seen = label_render(ep.editor, g, lab, at_size(in_cam, m.shape[-1]))[0]
                    ious[tag + who] = mask_iou(torch.isin(seen, torch.tensor(HAIR_IDS)),
                                               torch.isin(m, torch.tensor(HAIR_IDS)))
            entry["hair_iou_input_view"] = ious
            faces[key] = entry
            print(key, json.dumps(entry), flush=True)
            if name in portraits.PUBLIC_DOMAIN and face == 0:
                heads = [person.gaussians.batched()] + [outs[c].gaussians for c in ("red", "blonde", "blue")]
                heads.append(long.gaussians)
                with torch.no_grad():
                    cols = [ep.editor.render_views(h, fig_cams).rgb[0].float().clamp(0, 1) for h in heads]  # [2, 3, S, S]
                S = fig_cams.width
                first = [F.interpolate(prep.image.float(), size=S, mode="area")[0],  # the photo, then its map
                         torch.from_numpy(labels_to_color(resize_labels(labels, S))).permute(2, 0, 1).float() / 255]
                with torch.no_grad():  # the debug render of the person's regions
                    debug = ep.editor.render_views(replace(person.gaussians, colors=label_colors(person.labels)),
                                                   fig_cams, refine=False).rgb[0].float().clamp(0, 1)
                figure_rows += [torch.cat([first[v], debug[v]] + [c[v] for c in cols], dim=-1) for v in range(2)]
    return faces


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def synthetic(rp, ep, restyler, heads: int) -> dict:
    from perchead.data.synthetic import make_head, render_head, split_seeds

    S = ep.image_size
    cams = ep.editor.default_cameras(list(LABEL_VIEWS), size=S)
    inter = torch.zeros(NUM_CLASSES)
    union = torch.zeros(NUM_CLASSES)
    hair_restyled = {c: [] for c in DEFAULT_COLORS}
    hair_maponly = {c: [] for c in DEFAULT_COLORS}
    targets = {c: [] for c in DEFAULT_COLORS}
    for seed in list(split_seeds("test"))[:heads]:
        head = make_head(seed)
        true_map, rgb = input_map(head, ep)  # [S, S], [3, S, S]
        alpha = render_head(head, ep.editor.default_cameras([0.0], size=S))["alpha"][0]  # [1, S, S]
        rec = rp(rgb, alpha, fit_steps=40, fit=FitConfig.preset("fast"))
        parsed = ep.parser.parse(rgb, mask=alpha)  # [S, S] what the app would read off the picture
        person = restyler.regions(rec.gaussians[0], parsed)
        truth = render_head(head, cams)["labels"].cpu()  # [V, S, S]
        mine = label_render(ep.editor, person.gaussians, person.labels, cams)  # [V, S, S]
        for c in range(1, NUM_CLASSES):
            inter[c] += ((truth == c) & (mine == c)).sum()
            union[c] += ((truth == c) | (mine == c)).sum()
        target = repainted_hair_colors(head, true_map, rgb, DEFAULT_COLORS)
        region, inside = true_map == HAIR_IDS[0], true_map != 0
        for c in DEFAULT_COLORS:
            out = restyler(person, style_text=f"{c} hair")
            front = ep.editor.default_cameras([0.0], size=S)
            with torch.no_grad():
                a = ep.editor.render_views(out.gaussians, front)
                b = ep.editor.render_views(out.edit.gaussians, front)
            hair_restyled[c].append(region_mean_color(a.rgb[0, 0].float().clamp(0, 1), region,
                                                      (a.alpha[0, 0, 0] > 0.5) & inside))
            hair_maponly[c].append(region_mean_color(b.rgb[0, 0].float().clamp(0, 1), region,
                                                     (b.alpha[0, 0, 0] > 0.5) & inside))
            targets[c].append(target[c])
        print(f"synthetic {seed}", flush=True)
    per_class = {CLASSES[c]: round(float(inter[c] / union[c]), 3) for c in range(1, NUM_CLASSES) if union[c] > 0}
    scores_r = hair_color_scores(hair_restyled, targets)
    scores_m = hair_color_scores(hair_maponly, targets)
    return {"label_iou": per_class, "label_iou_mean": _mean(list(per_class.values())),
            "hair_nearest_restyled": scores_r["nearest_fraction"], "hair_nearest_map_only": scores_m["nearest_fraction"],
            "hair_distance_restyled": scores_r["matching_distance"], "hair_distance_map_only": scores_m["matching_distance"],
            "heads": heads}


def main(argv=None):
    from perchead.data import portraits

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="weights_card")
    p.add_argument("--faces", type=int, default=13, help="real faces to measure (0 = none)")
    p.add_argument("--synthetic", type=int, default=5, help="synthetic test heads (0 = none)")
    p.add_argument("--size", type=int, default=384, help="side of the renders dlib reads")
    p.add_argument("--figure", default=None, help="e.g. docs/restyle.jpg")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    portraits.fetch()
    rp = PercHeadPipeline.from_pretrained(args.model, device="cpu")
    ep = PercHeadEditPipeline.from_pretrained(args.model, device="cpu")
    restyler = Restyler(ep)
    results, rows = {}, []
    if args.faces:
        faces = real_faces(rp, ep, restyler, args.faces, args.size, rows)
        ok = [f for f in faces.values() if "error" not in f]
        results["real"] = {
            "faces": len(ok),
            "recognised_reconstruction": _mean([f["reconstruction"] for f in ok]),
            "recognised_restyled": _mean([f["restyled"] for f in ok]),
            "recognised_map_only": _mean([f["map_only"] for f in ok]),
            "face_psnr_vs_reconstruction_db": _mean([f["face_psnr_vs_reconstruction"] for f in ok]),
            "face_psnr_drop_vs_photo_db": _mean([f["face_psnr_vs_photo"]["drop_db"] for f in ok]),
            "hair_iou_photo_map": _mean([f["hair_iou_input_view"]["photo_map"] for f in ok]),
            "hair_iou_longer_hair": _mean([f["hair_iou_input_view"]["longer_hair"] for f in ok]),
            "hair_iou_reconstruction": _mean([f["hair_iou_input_view"]["reconstruction"] for f in ok]),
            "hair_iou_photo_map_map_only": _mean([f["hair_iou_input_view"]["photo_map_map_only"] for f in ok]),
            "hair_iou_longer_hair_map_only": _mean([f["hair_iou_input_view"]["longer_hair_map_only"] for f in ok]),
            "regions_s_median": statistics.median([f["regions_s"] for f in ok]) if ok else None,
            "edit_s_median": statistics.median([f["edit_s"] for f in ok]) if ok else None,
            "per_face": faces,
        }
    if args.synthetic:
        results["synthetic"] = synthetic(rp, ep, restyler, args.synthetic)
    results["meta"] = {"threads": torch.get_num_threads(), "prompts": [f"{c} hair" for c in PROMPTS],
                       "angles": ANGLES, "fit": "40 steps, preset real (real faces) / fast (synthetic)"}
    report(results, args.json)
    if args.figure and rows:
        S = rp.model.config.render.render_size
        save_labelled_grid(torch.cat(rows, dim=-2), ["photo / map", "regions"] + list(FIGURE), S,
                           args.figure)  # [3, 2·P·S, 6·S]
    return results


if __name__ == "__main__":
    main()
