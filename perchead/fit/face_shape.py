"""Face shape from the face mesh: the photo's landmark depths carried into a predicted head before the fit.

The feed-forward head was trained on synthetic heads only; the side of its face (nose protrusion, cheek
and jaw curvature, eye sockets) is an averaged synthetic shape. MediaPipe's face mesh, trained on real
faces, gives every one of its 468 landmarks a relative depth ``z`` (weak perspective, in image pixels like
``x`` and ``y``; smaller = nearer the camera). :func:`deform_face` moves the head's face toward that depth
profile, seen from the input camera:

1. **Where the head is**: the predicted head's expected depth (alpha-weighted camera ``z``) is rendered
   from the input camera; each landmark inside the head's silhouette and not hidden by the face itself
   (:func:`hidden_landmarks`) is lifted to the head's surface at its pixel (a control point).
2. **Where the landmark says it should be**: ``depth_scale · z / (pixels per metre at the face)`` plus
   one offset per head, the offset that matches the head's own mean depth over the landmarks (only the
   shape is taken from the mesh, not the distance). Landmarks more than ``max_gap`` off the median are
   dropped (their pixel shows the neck or the hair behind the jaw). Each control point moves ``weight`` of
   the way there (a blend of the two profiles), at most ``max_depth``.
3. **Spread**: each Gaussian's depth change is a normalised Gaussian-kernel average of the control
   points' changes (``sigma`` metres) times ``Σw / (Σw + floor)``, so it fades to zero away from the face
   (ears, hair, the back of the head); every Gaussian moves along its own ray from the camera centre,
   so the input view's picture stays where it was and only the other views change.

The deformation is fixed before the fit (:func:`perchead.fit.driver.fit_to_photo` with
``FitConfig.face.enabled``): the self-distillation prior then keeps the deformed face.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from perchead.fit.config import FitConfig
from perchead.geometry.cameras import Cameras
from perchead.geometry.gaussians import Gaussians

N_LANDMARKS = 468  # MediaPipe face-mesh topology


@dataclass
class FaceShapeInfo:
    """What :func:`deform_face` did (for notes, tests and the benchmark).

    Attributes:
        used: landmarks inside the head's silhouette that became control points.
        points: the control points on the predicted surface, world coordinates. ``[L, 3]``
        change: each control point's camera-depth change, metres (+ = away from the camera). ``[L]``
        moved: each Gaussian's camera-depth change, metres. ``[N]``
    """

    used: int
    points: Tensor  # [L, 3]
    change: Tensor  # [L]
    moved: Tensor  # [N]


def mesh_landmarks(image: Tensor, hint: np.ndarray | None = None, analyzer=None) -> np.ndarray | None:
    """The 468 face-mesh landmarks (x, y, relative depth z) of the face in a model input.

    Args:
        image: the model input over white. ``[1, 3, S, S]`` or ``[3, S, S]`` in [0, 1]
        hint: landmarks already found on this image (x, y in its pixels, e.g. ``Preprocessed.landmarks``):
            the mesh then starts from them instead of a face detection. ``[468, 2+]``
        analyzer: a :class:`perchead.photo.faces.FaceAnalyzer` (default: the shared one).

    Returns:
        ``[468, 3]`` float32 in the image's pixels (z in pixels, smaller = nearer), or None when the face
        networks are unavailable or find no face.
    """
    from perchead.photo.faces import LEFT_EYE_OUTER, RIGHT_EYE_OUTER, NOSE_TIP, Face, load_analyzer

    analyzer = analyzer or load_analyzer()
    if analyzer is None:
        return None
    if image.dim() == 4:
        image = image[0]
    rgb = np.ascontiguousarray((image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
                               .astype(np.uint8))  # [S, S, 3]
    if hint is not None:
        pts = np.asarray(hint, np.float32)[:, :2]  # [468, 2]
        lo, hi = pts.min(0), pts.max(0)
        keypoints = np.zeros((6, 2), np.float32)
        keypoints[0], keypoints[1], keypoints[2] = pts[RIGHT_EYE_OUTER], pts[LEFT_EYE_OUTER], pts[NOSE_TIP]
        face = Face((float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])), 1.0, keypoints)
    else:
        found = analyzer.detect(rgb)
        if not found:
            return None
        face = found[0]
    face = analyzer.landmarks(rgb, face, passes=2)
    if face.landmarks is None or not np.all(np.isfinite(face.landmarks)):
        return None
    return face.landmarks.astype(np.float32)  # [468, 3]


@torch.no_grad()
def expected_depth(gaussians: Gaussians, camera: Cameras) -> tuple[Tensor, Tensor]:
    """The head's expected camera depth and alpha from one camera, at the camera's size.

    Returns:
        (depth ``[H, W]`` metres (0 where alpha is 0), alpha ``[H, W]``).
    """
    from perchead.render import render

    out = render(gaussians.detach().float(), camera.viewmats[:1], camera.Ks[:1], camera.width, camera.height,
                 return_depth=True)
    alpha = out.alpha[0, 0, 0]  # [H, W]
    depth = out.depth[0, 0, 0] / alpha.clamp_min(1e-6)  # [H, W]
    return torch.where(alpha > 1e-3, depth, torch.zeros_like(depth)), alpha


def hidden_landmarks(landmarks: Tensor, radius: float = 0.06, gap: float = 0.15) -> Tensor:
    """Landmarks the face itself hides (the far cheek of a turned head): another landmark lies within
    ``radius`` in the image and more than ``gap`` nearer the camera, both as fractions of the 3D distance
    between the outer eye corners (about 9 cm). ``[468, 3]`` → ``[468]`` bool"""
    from perchead.photo.faces import LEFT_EYE_OUTER, RIGHT_EYE_OUTER

    unit = (landmarks[LEFT_EYE_OUTER] - landmarks[RIGHT_EYE_OUTER]).norm().clamp_min(1e-6)
    close = torch.cdist(landmarks[:, :2], landmarks[:, :2]) < radius * unit  # [468, 468]
    nearer = landmarks[None, :, 2] < landmarks[:, None, 2] - gap * unit  # [i, j]: j nearer than i
    return (close & nearer).any(-1)


@torch.no_grad()
def deform_face(gaussians: Gaussians, landmarks: np.ndarray | Tensor, camera: Cameras, weight: float = 1.0,
                depth_scale: float = 1.0, sigma: float = 0.01, floor: float = 1.0, max_depth: float = 0.01,
                min_alpha: float = 0.95, max_gap: float = 0.025) -> tuple[Gaussians, FaceShapeInfo]:
    """Moves the head's face along the input camera's rays toward the face mesh's depth profile.

    Args:
        gaussians: one head. ``[N, …]``
        landmarks: face-mesh landmarks in the camera's pixels, (x, y, z) with z in pixels. ``[468, 3]``
        camera: the input camera (one view; its size is the landmarks' pixel grid).
        weight: how far toward the mesh's profile (0 = the prediction's, 1 = the mesh's).
        depth_scale: metres of depth per metre of the mesh's z (z's scale relative to x and y).
        sigma: the spreading kernel's width, metres.
        floor: the kernel weight sum below which the change fades out (one landmark at distance 0 = 1).
        max_depth: bound on each control point's depth change, metres.
        min_alpha: landmarks where the head's alpha is lower (its outline) are not used.
        max_gap: landmarks whose depth differs from the head's by more than this from the median
            difference, metres, are not used (their pixel shows another part of the head).

    Returns:
        (the deformed head ``[N, …]``, :class:`FaceShapeInfo`).

    Raises:
        ValueError: landmarks that are not ``[468, 3]`` or not finite, a batch of heads, a camera with
            several views or settings out of range.
    """
    lm = torch.as_tensor(np.asarray(landmarks, np.float32) if not isinstance(landmarks, Tensor) else landmarks)
    if lm.shape != (N_LANDMARKS, 3):
        raise ValueError(f"landmarks must be [{N_LANDMARKS}, 3] (x, y, z), got {tuple(lm.shape)}")
    if not bool(torch.isfinite(lm).all()):
        raise ValueError("landmarks must be finite")
    if gaussians.is_batched:
        raise ValueError("deform_face deforms one head [N, …]")
    if len(camera) != 1:
        raise ValueError(f"camera must hold one view, got {len(camera)}")
    if not (sigma > 0 and floor >= 0 and max_depth >= 0 and depth_scale >= 0 and 0 <= weight <= 1):
        raise ValueError("sigma must be > 0; floor, max_depth and depth_scale >= 0; weight in [0, 1]")
    g = gaussians.detach().float()
    device = g.means.device
    lm = lm.to(device, torch.float32)
    viewmat = camera.viewmats[0].to(device, torch.float32)  # [4, 4]
    K = camera.Ks[0].to(device, torch.float32)  # [3, 3]
    depth, alpha = expected_depth(g, Cameras(viewmat[None], K[None], camera.width, camera.height))  # [H, W]
    H, W = depth.shape
    # bilinear samples at the landmarks (pixel i covers [i, i + 1)); the depth weighted by alpha
    grid = torch.stack([lm[:, 0] / W * 2 - 1, lm[:, 1] / H * 2 - 1], -1)[None, None]  # [1, 1, 468, 2]
    maps = torch.stack([depth * alpha, alpha])[None]  # [1, 2, H, W]
    at = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, :, 0]  # [2, 468]
    inside = (lm[:, 0] >= 0) & (lm[:, 0] < W) & (lm[:, 1] >= 0) & (lm[:, 1] < H)
    ok = inside & (at[1] >= min_alpha) & ~hidden_landmarks(lm)  # [468]
    empty = FaceShapeInfo(0, torch.zeros(0, 3), torch.zeros(0), torch.zeros(g.num_gaussians))
    if int(ok.sum()) < 20:  # too little of the face on the head to trust an offset
        return g, empty
    d_head = at[0, ok] / at[1, ok]  # [L] the head's camera depth at each landmark
    # the mesh's z in metres at the face: weak perspective, one scale for the whole face
    pixels_per_metre = K[0, 0] / d_head.mean()
    d_mesh = depth_scale * lm[ok, 2] / pixels_per_metre  # [L]
    gap = d_mesh - d_head  # [L] up to one offset per head
    # a landmark whose pixel shows something else of the head (neck, collar, hair behind the jaw) is far off
    on_face = (gap - gap.median()).abs() <= max_gap  # [L]
    if int(on_face.sum()) < 20:
        return g, empty
    keep = ok.nonzero()[:, 0][on_face]
    ok = torch.zeros_like(ok)
    ok[keep] = True
    d_head, gap = d_head[on_face], gap[on_face]
    change = (weight * (gap - gap.mean())).clamp(-max_depth, max_depth)  # [L] shape only: same mean depth
    # control points on the head's surface (camera coordinates → world)
    rays = torch.stack([(lm[ok, 0] - K[0, 2]) / K[0, 0], (lm[ok, 1] - K[1, 2]) / K[1, 1],
                        torch.ones_like(d_head)], -1)  # [L, 3]
    cam_points = rays * d_head[:, None]  # [L, 3]
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    cam_means = g.means @ R.T + t  # [N, 3] camera coordinates
    # only Gaussians within 4 σ of the control points' box can move more than ~3e-4 of a change
    lo, hi = cam_points.min(0).values - 4 * sigma, cam_points.max(0).values + 4 * sigma
    near = ((cam_means >= lo) & (cam_means <= hi)).all(-1).nonzero()[:, 0]  # [n]
    w = torch.exp(-torch.cdist(cam_means[near], cam_points).square() / (2 * sigma * sigma))  # [n, L]
    moved = torch.zeros(g.num_gaussians, device=device)  # [N]
    moved[near] = (w @ change) / (w.sum(-1) + floor)  # kernel average × Σw / (Σw + floor)
    z = cam_means[near, 2:3].clamp_min(1e-6)  # [n, 1]
    new_cam = cam_means[near] * ((z + moved[near, None]) / z)  # [n, 3] along each Gaussian's own ray
    means = g.means.clone()  # [N, 3]
    means[near] = (new_cam - t) @ R  # back to the world
    points = (cam_points - t) @ R  # [L, 3]
    return replace(g, means=means), FaceShapeInfo(int(ok.sum()), points.cpu(), change.cpu(), moved.cpu())


def apply_face_shape(g0: Gaussians, landmarks, camera: Cameras, scale: float, config: FitConfig) -> tuple[Gaussians, str]:
    """The face-shape step (:func:`perchead.fit.face_shape.deform_face`) with landmarks given at
    ``1 / scale`` of the fit's image size. Returns (the head, a note)."""
    lm = torch.as_tensor(landmarks, dtype=torch.float32) * scale  # [468, 3] x, y, z in the fit's pixels
    g, info = deform_face(g0, lm, camera, weight=config.face.weight, depth_scale=config.face.depth_scale,
                          sigma=config.face.sigma, max_depth=config.face.max_depth)
    if not info.used:
        return g0, "photo-fit: face shape skipped (too few landmarks on the head)"
    return g, "photo-fit: face shape from {} landmarks (depth change up to {:.1f} mm)".format(
        info.used, 1000 * float(info.change.abs().max()))
