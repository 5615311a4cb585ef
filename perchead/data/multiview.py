"""On-disk multi-view head captures: the format, its loader and a synthetic exporter (paper §3.4, §4.1).

Every capture (NeRSemble, Cafca, Ava-256) and the pre-rendered synthetic heads reach training through one
folder format: ``ROOT/SUBJECT/{cameras.json, images/, masks/, labels/, caption.txt}`` with OpenCV
world-to-camera matrices in the canonical head space. ``docs/multiview.md`` specifies it and how to
convert a capture (camera axes, alignment, units, backgrounds, framing).

Public API: :class:`MultiViewDataset`, :func:`export_synthetic`, :func:`read_cameras`,
:func:`align_cameras`, :func:`opengl_to_opencv`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from perchead.geometry.cameras import camera_centers, orbit_cameras
from perchead.data.imagefolder import load_rgb_mask, read_image, square_resize_camera
from perchead.data.views import sample_input_view

CAMERAS_FILE = "cameras.json"


# --------------------------------------------------------------------------------------------- cameras
def read_cameras(subject_dir: str) -> dict:
    """Reads and validates ``cameras.json`` of a subject folder.

    Returns:
        the parsed dict, with ``viewmats`` ``[F, 4, 4]`` and ``Ks`` ``[F, 3, 3]`` tensors added.

    Raises:
        ValueError: naming the file and the problem (missing file, bad JSON, missing keys, bad shapes,
            non-rigid viewmats, missing image files).
    """
    path = os.path.join(subject_dir, CAMERAS_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing cameras.json (see perchead.data.multiview for the format)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: top level must be an object with width, height, frames")
    for key in ("width", "height", "frames"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    if not (isinstance(meta["width"], int) and isinstance(meta["height"], int)) or meta["width"] <= 0 or meta["height"] <= 0:
        raise ValueError(f"{path}: width and height must be positive integers, got {meta['width']!r}, {meta['height']!r}")
    if meta.get("background", "white") not in ("white", "any"):
        raise ValueError(f"{path}: background must be 'white' or 'any', got {meta['background']!r}")
    frames = meta["frames"]
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: frames must be a non-empty list")
    viewmats, Ks = [], []
    for i, fr in enumerate(frames):
        for key in ("file", "viewmat", "K"):
            if key not in fr:
                raise ValueError(f"{path}: frame {i} is missing {key!r}")
        try:
            vm = np.asarray(fr["viewmat"], dtype=np.float64)
            K = np.asarray(fr["K"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: frame {i} has non-numeric viewmat or K") from None
        if vm.shape != (4, 4):
            raise ValueError(f"{path}: frame {i} viewmat must be 4x4, got shape {vm.shape}")
        if K.shape != (3, 3):
            raise ValueError(f"{path}: frame {i} K must be 3x3, got shape {K.shape}")
        if not (np.isfinite(vm).all() and np.isfinite(K).all()):
            raise ValueError(f"{path}: frame {i} has non-finite numbers")
        R = vm[:3, :3]
        if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(R) - 1) > 1e-3 or np.abs(vm[3] - [0, 0, 0, 1]).max() > 1e-6:
            raise ValueError(f"{path}: frame {i} viewmat is not a rigid transform (rotation must be orthonormal, "
                             "det +1, last row 0 0 0 1); fold any scale into the world units")
        if K[0, 0] <= 0 or K[1, 1] <= 0 or np.abs(K[2] - [0, 0, 1]).max() > 1e-6:
            raise ValueError(f"{path}: frame {i} K must have positive focal lengths and last row 0 0 1")
        if not os.path.isfile(os.path.join(subject_dir, fr["file"])):
            raise ValueError(f"{path}: frame {i} image {fr['file']!r} does not exist")
        viewmats.append(vm)
        Ks.append(K)
    meta["viewmats"] = torch.tensor(np.stack(viewmats), dtype=torch.float32)  # [F, 4, 4]
    meta["Ks"] = torch.tensor(np.stack(Ks), dtype=torch.float32)  # [F, 3, 3]
    return meta


def opengl_to_opencv(c2w_gl: Tensor) -> Tensor:
    """World-to-camera OpenCV viewmats from OpenGL / Blender camera-to-world matrices. ``[..., 4, 4]``"""
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w_gl.dtype))
    return flip @ torch.linalg.inv(c2w_gl)


def align_cameras(viewmats: Tensor, scale: float, R: Tensor, t: Tensor) -> Tensor:
    """Re-expresses world-to-camera matrices in canonical head space.

    Args:
        viewmats: world-to-camera in the capture's world frame. ``[..., 4, 4]``
        scale, R, t: the similarity ``X_canonical = scale · R @ X_world + t``; ``R`` ``[3, 3]``, ``t`` ``[3]``.

    Returns:
        rigid world-to-camera matrices in canonical space (same projections). ``[..., 4, 4]``
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    M = torch.eye(4, dtype=viewmats.dtype)
    M[:3, :3] = scale * R.to(viewmats.dtype)
    M[:3, 3] = t.to(viewmats.dtype)
    S = torch.diag(torch.tensor([scale, scale, scale, 1.0], dtype=viewmats.dtype))
    return S @ viewmats @ torch.linalg.inv(M)


# ---------------------------------------------------------------------------------------------- loader
class MultiViewDataset(torch.utils.data.Dataset):
    """Training samples from an on-disk multi-view folder (format in the module docstring).

    Each item is one subject: a random input frame (or, with ``input_frames``, one of those) and
    ``n_targets`` other frames, the first ``n_extreme`` chosen as the frames seen from the most different
    directions (the paper's extreme views), the rest at random. Frames are reused when a subject has
    fewer than ``n_targets + 1``.

    Args:
        root: folder of subject folders (or a single subject folder with ``cameras.json``).
        n_targets: target views per sample.
        image_size: square side the images are resized to (K follows).
        n_extreme: how many targets are the most distant views from the input.
        input_frames: optional frame indices allowed as input (e.g. frontal cameras only).
        view_seed: None = fresh random frames per access; an int = deterministic per (seed, subject).
        include_input_in_targets: also supervise the input view as the first target.

    Raises:
        ValueError: if ``root`` is missing or holds no subject, or a ``cameras.json`` is malformed.
    """

    def __init__(self, root: str, n_targets: int = 4, image_size: int = 128, n_extreme: int = 1,
                 input_frames: Sequence[int] | None = None, view_seed: int | None = None,
                 include_input_in_targets: bool = False):
        if not os.path.isdir(root):
            raise ValueError(f"multi-view root {root!r} does not exist or is not a folder")
        if n_targets < 1:
            raise ValueError(f"n_targets must be at least 1, got {n_targets}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if os.path.isfile(os.path.join(root, CAMERAS_FILE)):
            dirs = [root]
        else:
            dirs = sorted(os.path.join(root, d) for d in os.listdir(root)
                          if os.path.isfile(os.path.join(root, d, CAMERAS_FILE)))
        if not dirs:
            raise ValueError(f"multi-view root {root!r} holds no subject folder with a {CAMERAS_FILE}")
        self.subjects = dirs
        self.meta = [read_cameras(d) for d in dirs]  # validates everything up front
        self.n_targets, self.image_size, self.n_extreme = n_targets, image_size, n_extreme
        self.input_frames = None if input_frames is None else list(input_frames)
        self.view_seed, self.include_input = view_seed, include_input_in_targets

    def __len__(self) -> int:
        return len(self.subjects)

    def load_frame(self, index: int, frame: int) -> dict[str, Tensor]:
        """One frame of one subject, resized: image ``[3,S,S]``, mask ``[1,S,S]``, label ``[S,S]``, viewmat, K."""
        sdir, meta = self.subjects[index], self.meta[index]
        fr = meta["frames"][frame]
        stem = os.path.splitext(os.path.basename(fr["file"]))[0]
        mask_path = fr.get("mask", os.path.join("masks", stem + ".png"))
        label_path = fr.get("label", os.path.join("labels", stem + ".png"))
        mask_file = os.path.join(sdir, mask_path)
        label_file = os.path.join(sdir, label_path)
        composite = meta.get("background", "any" if os.path.isfile(mask_file) else "white") == "any"
        image, mask = load_rgb_mask(os.path.join(sdir, fr["file"]), mask_file if os.path.isfile(mask_file) else None,
                                    composite=composite)  # [3, H, W], [1, H, W]
        if image.shape[-2:] != (meta["height"], meta["width"]):
            raise ValueError(f"{sdir}: {fr['file']} is {image.shape[-1]}x{image.shape[-2]}, cameras.json says "
                             f"{meta['width']}x{meta['height']}")
        labels = None
        if os.path.isfile(label_file):
            lab = np.asarray(read_image(label_file, "label map"))
            if lab.ndim != 2:
                raise ValueError(f"{label_file}: label maps must be single-channel class ids")
            labels = torch.from_numpy(lab.astype(np.int64))
            labels[labels == 255] = -1
        image, mask, labels, K = square_resize_camera(image, mask, labels, meta["Ks"][frame], self.image_size)
        if labels is None:
            labels = torch.full((self.image_size, self.image_size), -1, dtype=torch.long)
        return {"image": image, "mask": mask, "labels": labels, "viewmat": meta["viewmats"][frame], "K": K}

    def __getitem__(self, index: int) -> dict:
        meta = self.meta[index]
        n_frames = len(meta["frames"])
        rng = np.random.default_rng(None if self.view_seed is None else [self.view_seed, index])
        allowed = self.input_frames if self.input_frames is not None else range(n_frames)
        allowed = [f for f in allowed if f < n_frames] or list(range(n_frames))
        src = int(rng.choice(allowed))
        # view directions (camera centre directions from the origin) to rank how "extreme" each frame is
        dirs = camera_centers(meta["viewmats"])  # [F, 3]
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        others = [f for f in range(n_frames) if f != src] or [src]
        by_distance = sorted(others, key=lambda f: float(dirs[f] @ dirs[src]))  # most opposite first
        chosen = by_distance[: min(self.n_extreme, self.n_targets)]
        rest = [f for f in others if f not in chosen]
        need = self.n_targets - len(chosen) - int(self.include_input)
        if need > 0:
            pool = rest or others
            chosen += [int(f) for f in rng.choice(pool, size=need, replace=len(pool) < need)]
        targets = ([src] if self.include_input else []) + chosen[: self.n_targets - int(self.include_input)]
        inp = self.load_frame(index, src)
        tg = [self.load_frame(index, f) for f in targets]
        caption_file = os.path.join(self.subjects[index], "caption.txt")
        caption = open(caption_file).read().strip() if os.path.isfile(caption_file) else ""
        return {
            "image": inp["image"], "mask": inp["mask"],  # [3, S, S], [1, S, S]
            "labels": inp["labels"],  # [S, S] input view's class ids, -1 = unknown (editing input, §3.5)
            "input_viewmat": inp["viewmat"], "input_K": inp["K"],  # [4, 4], [3, 3]
            "target_images": torch.stack([t["image"] for t in tg]),  # [V, 3, S, S]
            "target_masks": torch.stack([t["mask"] for t in tg]),  # [V, 1, S, S]
            "target_viewmats": torch.stack([t["viewmat"] for t in tg]),  # [V, 4, 4]
            "target_Ks": torch.stack([t["K"] for t in tg]),  # [V, 3, 3]
            "target_labels": torch.stack([t["labels"] for t in tg]),  # [V, S, S]
            "caption": caption, "subject": os.path.basename(os.path.normpath(self.subjects[index])),
        }


# -------------------------------------------------------------------------------------------- exporter
def export_views(views_per_subject: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Views written per synthetic subject: a fixed ring of key views (front, profiles, back, top, bottom,
    and their diagonals) first, then random orbit views (azimuth, elevation in degrees)."""
    fixed = [(0, 0), (90, 0), (-90, 0), (180, 0), (0, 45), (0, -45), (45, 15), (-45, 15), (135, 0), (-135, 0),
             (45, -30), (-45, -30), (90, 40), (-90, 40), (180, 40), (0, 20)]
    views = [(float(a), float(e)) for a, e in fixed[:views_per_subject]]
    while len(views) < views_per_subject:
        az, el = sample_input_view(rng, p_extreme=0.3)
        views.append((az if rng.random() < 0.6 else float(rng.uniform(-180, 180)), el))
    return views


def export_synthetic(out_root: str, seeds: Sequence[int], views_per_subject: int = 16, image_size: int = 128,
                     radius: float = 0.7, fov_deg: float = 30.0, density: float = 1.0, backend: str = "auto",
                     progress: bool = False) -> dict:
    """Writes synthetic heads in the multi-view format (RGB over white + masks + labels + caption).

    Args:
        out_root: output folder; one ``synthetic-<seed>`` subject folder per seed.
        seeds: head seeds (see :data:`perchead.data.synthetic.SPLITS`).
        views_per_subject: frames per subject (the first 16 are fixed key views, the rest random).
        image_size: square image side.
        radius, fov_deg: orbit camera distance and field of view.
        density: Gaussian budget multiplier.
        backend: renderer backend.
        progress: show a tqdm bar.

    Returns:
        timing summary: ``{"subjects", "seconds", "seconds_per_subject", "make_head_s", "render_s", "write_s"}``.
    """
    from perchead.data.synthetic import make_head, render_head

    if views_per_subject < 1:
        raise ValueError(f"views_per_subject must be at least 1, got {views_per_subject}")
    seeds = list(seeds)
    os.makedirs(out_root, exist_ok=True)
    t_make = t_render = t_write = 0.0
    it = seeds
    if progress:
        from tqdm import tqdm
        it = tqdm(seeds, desc="export", unit="subject")
    start = time.perf_counter()
    for seed in it:
        t0 = time.perf_counter()
        head = make_head(int(seed), density=density)
        t1 = time.perf_counter()
        views = export_views(views_per_subject, np.random.default_rng([int(seed), 7]))
        az, el = zip(*views)
        cams = orbit_cameras(az, el, radius=radius, fov_deg=fov_deg, size=image_size)
        out = render_head(head, cams, backend=backend)
        t2 = time.perf_counter()
        sdir = os.path.join(out_root, f"synthetic-{int(seed)}")
        for sub in ("images", "masks", "labels"):
            os.makedirs(os.path.join(sdir, sub), exist_ok=True)
        rgb = (out["rgb"].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)  # [V, S, S, 3]
        alpha = (out["alpha"][:, 0].numpy() * 255 + 0.5).astype(np.uint8)  # [V, S, S]
        labels = out["labels"].numpy().astype(np.uint8)  # [V, S, S]
        frames = []
        for v in range(len(views)):
            name = f"{v:04d}.png"
            Image.fromarray(rgb[v]).save(os.path.join(sdir, "images", name), compress_level=1)
            Image.fromarray(alpha[v]).save(os.path.join(sdir, "masks", name), compress_level=1)
            Image.fromarray(labels[v]).save(os.path.join(sdir, "labels", name), compress_level=1)
            frames.append({"file": f"images/{name}", "viewmat": cams.viewmats[v].tolist(), "K": cams.Ks[v].tolist(),
                           "azimuth_deg": views[v][0], "elevation_deg": views[v][1]})
        with open(os.path.join(sdir, CAMERAS_FILE), "w") as f:
            json.dump({"width": image_size, "height": image_size, "background": "white", "frames": frames}, f)
        with open(os.path.join(sdir, "caption.txt"), "w") as f:
            f.write(head.caption + "\n")
        t3 = time.perf_counter()
        t_make, t_render, t_write = t_make + t1 - t0, t_render + t2 - t1, t_write + t3 - t2
    total = time.perf_counter() - start
    n = max(len(seeds), 1)
    return {"subjects": len(seeds), "seconds": total, "seconds_per_subject": total / n,
            "make_head_s": t_make / n, "render_s": t_render / n, "write_s": t_write / n}
