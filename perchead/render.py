"""Differentiable Gaussian splatting: gsplat on CUDA, our own EWA splatter on CPU (paper §3.3, Fig. 2).

PercHead renders its 65,536 predicted Gaussians with a differentiable rasteriser before the refiner CNN
and the perceptual losses. On CUDA we call ``gsplat.rasterization`` (classic mode). gsplat has no CPU
path, so the ``"torch"`` backend re-implements its classic mode numerically:

1. project: 3D covariance from quaternion and scale, world → camera, the perspective Jacobian with
   gsplat's 1.3 × FOV clamp, a 0.3 px² low-pass (``eps2d``), conics, near/far culling, opacity-aware
   3.33-sigma radii, off-screen culling;
2. depth sort and bin into 16 × 16 tiles by each Gaussian's bounding box;
3. composite front to back per pixel (pixel centres at +0.5): ``alpha = min(0.999, o·exp(-sigma))``,
   skip ``alpha < 1/255``, stop before a Gaussian that would take transmittance to ``<= 1e-4``, add
   ``T_final · background``.

Steps 1 and 3 run in a small C kernel (forwards plus hand-written backwards mirroring gsplat's CUDA
ones), compiled with the system C compiler at first use (about 2 s), cached under
``~/.cache/perchead``, called through ``ctypes`` and parallelised with OpenMP on torch's own thread pool.
Their pure-PyTorch twins are :func:`project_gaussians` (autograd) and a padded per-tile compositor
(autograd), used where no compiler exists and selectable as ``backend="torch-pure"``.
:func:`render_reference` is the dense brute-force twin the tests hold both against.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from perchead.gaussians import Gaussians

TILE_SIZE = 16  # pixels per tile side, as gsplat
ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD: contributions below are skipped
ALPHA_MAX = 0.999  # gsplat 1.5's clamp on a single Gaussian's alpha
T_MIN = 1e-4  # compositing stops before transmittance would drop to this
EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal (px²)
NEAR_PLANE = 0.01  # metres, gsplat's default
FAR_PLANE = 1e10
EXTEND = 3.33  # bounding-box half-size in standard deviations (capped by opacity, as gsplat)
BACKENDS = ("auto", "gsplat", "torch", "torch-pure")


@dataclass
class RenderOutput:
    """Images rendered for B Gaussian sets × V views.

    Attributes:
        rgb: colours composited over the background. ``[B, V, 3, H, W]``
        alpha: accumulated opacity ``1 - T_final``. ``[B, V, 1, H, W]``
        depth: accumulated, alpha-weighted camera-z depth ``sum_i w_i z_i`` (divide by ``alpha`` for the
            expected depth), or None. ``[B, V, 1, H, W]``
        features: extra per-Gaussian channels composited over 0, or None. ``[B, V, C, H, W]``
    """

    rgb: Tensor  # [B, V, 3, H, W]
    alpha: Tensor  # [B, V, 1, H, W]
    depth: Tensor | None = None  # [B, V, 1, H, W]
    features: Tensor | None = None  # [B, V, C, H, W]


@dataclass
class Projected:
    """Gaussians projected into I = B·V images (step 1). Entries with ``radii == 0`` are culled.

    Attributes:
        means2d: pixel positions (centres at +0.5). ``[I, N, 2]``
        conics: inverse 2D covariance ``(a, b, c)``, sigma = ½(a dx² + c dy²) + b dx dy. ``[I, N, 3]``
        depths: camera z. ``[I, N]``
        radii: bounding-box half sizes in pixels, int32, 0 when culled. ``[I, N, 2]``
    """

    means2d: Tensor  # [I, N, 2]
    conics: Tensor  # [I, N, 3]
    depths: Tensor  # [I, N]
    radii: Tensor  # [I, N, 2]


# --------------------------------------------------------------------------------------- public API
def render(
    gaussians: Gaussians,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: float | Tensor | None = None,
    backend: str = "auto",
    features: Tensor | None = None,
    return_depth: bool = False,
) -> RenderOutput:
    """Renders Gaussians into every view, differentiably w.r.t. all Gaussian fields and features.

    Args:
        gaussians: ``[N]`` or ``[B, N]`` fields (unbatched → B = 1).
        viewmats: world-to-camera, OpenCV axes, shared by the batch ``[V, 4, 4]`` or per item ``[B, V, 4, 4]``.
        Ks: pixel intrinsics, ``[V, 3, 3]`` or ``[B, V, 3, 3]``.
        width: image width in pixels.
        height: image height in pixels.
        background: None (black), a float, a ``[3]`` colour or per-image ``[B, V, 3]`` colours.
        backend: ``"auto"`` (gsplat for CUDA tensors, else torch), ``"gsplat"``, ``"torch"`` (CPU kernel,
            pure-PyTorch fallback without a C compiler) or ``"torch-pure"`` (always pure PyTorch).
        features: extra channels per Gaussian, composited over 0. ``[(B,) N, C]``
        return_depth: also render accumulated camera-z depth.

    Returns:
        RenderOutput with ``[B, V, ...]`` images.

    Raises:
        ValueError: on bad shapes, sizes or backend names.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    width, height = int(width), int(height)
    g = gaussians.batched()
    B, N = g.batch_size, g.num_gaussians
    viewmats = _per_batch(viewmats, B, (4, 4), "viewmats")  # [B, V, 4, 4]
    Ks = _per_batch(Ks, B, (3, 3), "Ks")  # [B, V, 3, 3]
    V = viewmats.shape[1]
    if Ks.shape[1] != V:
        raise ValueError(f"viewmats has {V} views but Ks has {Ks.shape[1]}")
    dtype, device = g.means.dtype, g.means.device
    viewmats, Ks = viewmats.to(device=device, dtype=dtype), Ks.to(device=device, dtype=dtype)
    if features is not None:
        if features.dim() == 2:
            features = features.unsqueeze(0).expand(B, -1, -1)  # [B, N, C]
        if features.dim() != 3 or features.shape[:2] != (B, N):
            raise ValueError(f"features must be [N, C] or [B, N, C] with B={B}, N={N}; got {tuple(features.shape)}")
        features = features.to(device=device, dtype=dtype)
    bg = _background(background, B, V, dtype, device)  # [B, V, 3] or None

    if backend == "auto":
        backend = "gsplat" if device.type == "cuda" else "torch"
    if backend == "gsplat":
        return _render_gsplat(g, viewmats, Ks, width, height, bg, features, return_depth)
    if N == 0:
        return _empty_output(B, V, width, height, bg, features, return_depth, dtype, device)

    # 1. project into all B·V images at once (autograd)
    pure = backend == "torch-pure"
    proj = _project(g.means, g.quats, g.scales, g.opacities, viewmats, Ks, width, height, pure)
    I = B * V
    # 2.-3. colour channels: rgb, features, depth (per image)
    chans = [g.colors]
    if features is not None:
        chans.append(features)
    colors = torch.cat(chans, dim=-1) if len(chans) > 1 else chans[0]  # [B, N, D0]
    colors = colors[:, None].expand(B, V, N, colors.shape[-1]).reshape(I, N, -1)  # [I, N, D0]
    if return_depth:
        colors = torch.cat([colors, proj.depths[..., None]], dim=-1)  # [I, N, D]
    D = colors.shape[-1]
    bgI = None
    if bg is not None:
        bgI = torch.zeros(I, D, dtype=dtype, device=device)
        bgI = torch.cat([bg.reshape(I, 3), bgI[:, 3:]], dim=-1)  # [I, D]
    opac = g.opacities[:, None].expand(B, V, N).reshape(I, N)  # [I, N]
    out, alpha = rasterize(proj, opac, colors, bgI, width, height, pure=pure)  # [I, D, H, W], [I, 1, H, W]
    out = out.reshape(B, V, D, height, width)
    alpha = alpha.reshape(B, V, 1, height, width)
    C = 0 if features is None else features.shape[-1]
    return RenderOutput(
        rgb=out[:, :, :3],
        alpha=alpha,
        depth=out[:, :, 3 + C : 4 + C] if return_depth else None,
        features=out[:, :, 3 : 3 + C] if features is not None else None,
    )


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
) -> Projected:
    """EWA projection of 3D Gaussians into images, following gsplat's fused pinhole projection.

    Args:
        means: ``[B, N, 3]``
        quats: wxyz (normalised here). ``[B, N, 4]``
        scales: ``[B, N, 3]``
        opacities: ``[B, N]`` (only used for the opacity-aware radius and culling).
        viewmats: ``[B, V, 4, 4]``
        Ks: ``[B, V, 3, 3]``
        width: image width.
        height: image height.
        eps2d: low-pass added to the 2D covariance diagonal.
        near_plane: Gaussians with camera z below are culled.
        far_plane: Gaussians with camera z above are culled.

    Returns:
        Projected with I = B·V images.
    """
    B, N = means.shape[:2]
    V = viewmats.shape[1]
    # 3D covariance factor M = R(q) diag(s); Sigma = M M^T
    q = quats / quats.norm(dim=-1, keepdim=True)  # [B, N, 4]
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(B, 1, N, 3, 3)  # [B, 1, N, 3, 3]
    M = R * scales[:, None, :, None, :]  # [B, 1, N, 3, 3]
    # world → camera
    Rv = viewmats[:, :, None, :3, :3]  # [B, V, 1, 3, 3]
    tv = viewmats[:, :, None, :3, 3]  # [B, V, 1, 3]
    mc = (Rv * means[:, None, :, None, :]).sum(-1) + tv  # [B, V, N, 3]
    tz = mc[..., 2]  # [B, V, N]
    depth_ok = (tz > near_plane) & (tz < far_plane)
    tz_safe = torch.where(depth_ok, tz, torch.ones_like(tz))  # keeps culled entries finite (and their grads 0)
    fx, fy = Ks[:, :, None, 0, 0], Ks[:, :, None, 1, 1]  # [B, V, 1]
    cx, cy = Ks[:, :, None, 0, 2], Ks[:, :, None, 1, 2]
    ux, uy = mc[..., 0] / tz_safe, mc[..., 1] / tz_safe  # [B, V, N]
    means2d = torch.stack([fx * ux + cx, fy * uy + cy], dim=-1)  # [B, V, N, 2]
    # Jacobian with gsplat's clamp of x/z, y/z to 1.3 × the field of view
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    ux_c = torch.minimum(torch.maximum(ux, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
    uy_c = torch.minimum(torch.maximum(uy, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
    # rows of J·Rv: (f/z)(Rv_row - u·Rv_z)
    Rv0, Rv1, Rv2 = Rv[..., 0, :], Rv[..., 1, :], Rv[..., 2, :]  # [B, V, 1, 3]
    T0 = (fx / tz_safe)[..., None] * (Rv0 - ux_c[..., None] * Rv2)  # [B, V, N, 3]
    T1 = (fy / tz_safe)[..., None] * (Rv1 - uy_c[..., None] * Rv2)  # [B, V, N, 3]
    A0 = (T0[..., :, None] * M).sum(-2)  # [B, V, N, 3]  row 0 of J Rv M
    A1 = (T1[..., :, None] * M).sum(-2)  # [B, V, N, 3]
    c00 = (A0 * A0).sum(-1) + eps2d  # [B, V, N]
    c01 = (A0 * A1).sum(-1)
    c11 = (A1 * A1).sum(-1) + eps2d
    det = c00 * c11 - c01 * c01
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], dim=-1)  # [B, V, N, 3]

    with torch.no_grad():
        op = opacities.detach()[:, None].expand(B, V, N)  # [B, V, N]
        extend = torch.sqrt(2.0 * torch.log((op * 255.0).clamp(min=1.0))).clamp(max=EXTEND)
        rx = torch.ceil(extend * torch.sqrt(c00.detach().clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c11.detach().clamp(min=0)))
        m2 = means2d.detach()
        valid = (
            depth_ok
            & (det.detach() > 0)
            & (op >= ALPHA_MIN)
            & ((rx > 0) | (ry > 0))
            & (m2[..., 0] + rx > 0)
            & (m2[..., 0] - rx < width)
            & (m2[..., 1] + ry > 0)
            & (m2[..., 1] - ry < height)
        )
        radii = torch.stack([rx, ry], dim=-1) * valid[..., None]
        radii = radii.to(torch.int32)  # [B, V, N, 2]
    I = B * V
    return Projected(
        means2d=means2d.reshape(I, N, 2),
        conics=conics.reshape(I, N, 3),
        depths=tz.reshape(I, N),
        radii=radii.reshape(I, N, 2),
    )


def rasterize(
    proj: Projected,
    opacities: Tensor,
    colors: Tensor,
    background: Tensor | None,
    width: int,
    height: int,
    pure: bool = False,
) -> tuple[Tensor, Tensor]:
    """Depth-sorts, bins into tiles and composites projected Gaussians front to back (steps 2-3).

    Args:
        proj: projected Gaussians for I images.
        opacities: ``[I, N]``
        colors: any number of channels D. ``[I, N, D]``
        background: per-image colour added as ``T_final · background``, or None. ``[I, D]``
        width: image width.
        height: image height.
        pure: use the pure-PyTorch compositor even when the C kernel is available.

    Returns:
        (colours ``[I, D, H, W]``, alpha ``[I, 1, H, W]``).
    """
    offsets, ids = bin_tiles(proj, width, height)
    lib = None if pure else _native_lib()
    args = (proj.means2d, proj.conics, opacities, colors, background, offsets, ids, width, height)
    if lib is not None and colors.dtype in (torch.float32, torch.float64):
        return _RasterizeNative.apply(*args)
    return _rasterize_pure(*args)


@torch.no_grad()
def bin_tiles(proj: Projected, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Lists, per 16 × 16 tile, the Gaussians whose bounding box touches it, front to back.

    Args:
        proj: projected Gaussians for I images.
        width: image width.
        height: image height.

    Returns:
        (offsets ``[I·tiles + 1]`` int64 into ids, ids ``[n_isect]`` int32 Gaussian indices); tile ``t`` of
        image ``i`` owns ``ids[offsets[i·tiles + t] : offsets[i·tiles + t + 1]]``, sorted by depth.
    """
    I, N = proj.depths.shape
    tw, th = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    m2 = proj.means2d.detach()
    r = proj.radii.to(m2.dtype)
    x0 = torch.floor((m2[..., 0] - r[..., 0]) / TILE_SIZE).clamp(0, tw)
    x1 = torch.ceil((m2[..., 0] + r[..., 0]) / TILE_SIZE).clamp(0, tw)
    y0 = torch.floor((m2[..., 1] - r[..., 1]) / TILE_SIZE).clamp(0, th)
    y1 = torch.ceil((m2[..., 1] + r[..., 1]) / TILE_SIZE).clamp(0, th)
    valid = (proj.radii > 0).all(-1)  # [I, N]
    rects = torch.stack([x0, y0, x1, y1], dim=-1).to(torch.int32) * valid[..., None]  # [I, N, 4]
    depth = torch.where(valid, proj.depths.detach(), torch.full_like(m2[..., 0], math.inf))
    order = torch.argsort(depth, dim=-1, stable=True)  # [I, N]
    lib = _native_lib()
    if lib is not None:
        rects, order = rects.cpu().contiguous(), order.cpu().contiguous()
        area = ((rects[..., 2] - rects[..., 0]) * (rects[..., 3] - rects[..., 1])).to(torch.int64)
        total = int(area.sum())
        offsets = torch.empty(I * tw * th + 1, dtype=torch.int64)
        ids = torch.empty(total, dtype=torch.int32)
        lib.bin_tiles(I, N, tw, th, rects.data_ptr(), order.data_ptr(), offsets.data_ptr(), ids.data_ptr())
        return offsets.to(m2.device), ids.to(m2.device)
    # pure PyTorch: expand each Gaussian to its rectangle's tiles, sort by (image, tile, depth rank)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=order.device).expand(I, N))
    w_ = (rects[..., 2] - rects[..., 0]).clamp(min=0).reshape(-1).long()  # [I·N]
    h_ = (rects[..., 3] - rects[..., 1]).clamp(min=0).reshape(-1).long()
    cnt = w_ * h_
    src = torch.repeat_interleave(torch.arange(I * N, device=m2.device), cnt)  # [n_isect]
    start = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(src.numel(), device=m2.device) - start[src]  # position inside the rectangle
    flat = rects.reshape(-1, 4).long()
    tx = flat[src, 0] + k % w_[src].clamp(min=1)
    ty = flat[src, 1] + k // w_[src].clamp(min=1)
    img = src // N
    tile = img * (tw * th) + ty * tw + tx
    key = tile * N + rank.reshape(-1)[src]
    key, perm = torch.sort(key)
    ids = (src[perm] % N).to(torch.int32)
    counts = torch.bincount(tile, minlength=I * tw * th)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=m2.device), torch.cumsum(counts, 0)])
    return offsets, ids


def render_reference(
    gaussians: Gaussians,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    features: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Dense brute-force twin of the torch backend for one unbatched set and one view (tiny scenes only).

    Every pixel composites every visible Gaussian in depth order with gsplat's classic rules; no tiles,
    no bounding boxes. Memory is ``[H·W, N]``.

    Args:
        gaussians: unbatched ``[N]`` set.
        viewmat: ``[4, 4]``
        K: ``[3, 3]``
        width: image width.
        height: image height.
        background: ``[3]`` or None.
        features: ``[N, C]`` extra channels (composited over 0), or None.

    Returns:
        (colour ``[3 + C, H, W]``, alpha ``[1, H, W]``).
    """
    g = gaussians.batched()
    proj = project_gaussians(g.means, g.quats, g.scales, g.opacities, viewmat[None, None], K[None, None], width, height)
    colors = g.colors[0] if features is None else torch.cat([g.colors[0], features], -1)  # [N, D]
    D = colors.shape[-1]
    depth_ok = (proj.depths[0] > NEAR_PLANE) & (proj.depths[0] < FAR_PLANE)
    order = torch.argsort(torch.where(depth_ok, proj.depths[0], math.inf), stable=True)
    order = order[depth_ok[order]]
    m, c, o, col = proj.means2d[0][order], proj.conics[0][order], g.opacities[0][order], colors[order]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    px = torch.stack([xs, ys], -1).reshape(-1, 1, 2).to(m.dtype) + 0.5  # [P, 1, 2]
    d = m[None] - px  # [P, N, 2]
    sigma = 0.5 * (c[:, 0] * d[..., 0] ** 2 + c[:, 2] * d[..., 1] ** 2) + c[:, 1] * d[..., 0] * d[..., 1]  # [P, N]
    alpha = torch.clamp(o * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    P = px.shape[0]
    T = torch.ones(P, dtype=m.dtype)
    done = torch.zeros(P, dtype=torch.bool)
    out = torch.zeros(P, D, dtype=m.dtype)
    for i in range(alpha.shape[1]):  # front to back, one Gaussian at a time
        a = alpha[:, i]
        next_T = T * (1 - a)
        stop = (a > 0) & (next_T <= T_MIN)
        done = done | stop
        use = (~done) & (a > 0)
        out = out + torch.where(use[:, None], (a * T)[:, None] * col[i], torch.zeros_like(out))
        T = torch.where(use, next_T, T)
    if background is not None:
        out[:, :3] = out[:, :3] + T[:, None] * background.to(m.dtype)
    return out.T.reshape(D, height, width), (1 - T).reshape(1, height, width)


# ---------------------------------------------------------------------------------------- helpers
def _per_batch(x: Tensor, B: int, tail: tuple[int, int], name: str) -> Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 3 and tuple(x.shape[1:]) == tail:
        return x.unsqueeze(0).expand(B, *x.shape)
    if x.dim() == 4 and tuple(x.shape[2:]) == tail and x.shape[0] == B:
        return x
    raise ValueError(f"{name} must be [V, {tail[0]}, {tail[1]}] or [B={B}, V, {tail[0]}, {tail[1]}], got {tuple(x.shape)}")


def _background(background, B: int, V: int, dtype, device) -> Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.dim() == 0:
        bg = bg.expand(3)
    if bg.shape == (3,):
        return bg.expand(B, V, 3)
    if bg.shape == (B, V, 3):
        return bg
    raise ValueError(f"background must be None, a float, [3] or [B={B}, V={V}, 3], got {tuple(bg.shape)}")


def _empty_output(B, V, W, H, bg, features, return_depth, dtype, device) -> RenderOutput:
    zeros = lambda c: torch.zeros(B, V, c, H, W, dtype=dtype, device=device)  # noqa: E731
    rgb = zeros(3) if bg is None else bg[..., None, None].expand(B, V, 3, H, W).clone()
    return RenderOutput(
        rgb=rgb,
        alpha=zeros(1),
        depth=zeros(1) if return_depth else None,
        features=zeros(features.shape[-1]) if features is not None else None,
    )


def _render_gsplat(g: Gaussians, viewmats, Ks, width, height, bg, features, return_depth) -> RenderOutput:
    """gsplat classic-mode rasterisation of all B × V images in one call (CUDA)."""
    try:
        from gsplat import rasterization
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ValueError("backend='gsplat' needs the gsplat package") from e
    if g.means.device.type != "cuda":
        raise ValueError("backend='gsplat' needs CUDA tensors; use backend='torch' on CPU")
    B, N = g.batch_size, g.num_gaussians
    V = viewmats.shape[1]
    if N == 0:
        return _empty_output(B, V, width, height, bg, features, return_depth, g.dtype, g.device)
    colors = g.colors if features is None else torch.cat([g.colors, features], dim=-1)  # [B, N, D0]
    D0 = colors.shape[-1]
    backgrounds = None
    if bg is not None:
        backgrounds = torch.cat([bg, bg.new_zeros(B, V, D0 - 3)], dim=-1)  # [B, V, D0]
    out, alpha, _ = rasterization(
        g.means, g.quats, g.scales, g.opacities, colors, viewmats, Ks, width, height,
        near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D, packed=False, tile_size=TILE_SIZE,
        backgrounds=backgrounds, render_mode="RGB+D" if return_depth else "RGB", rasterize_mode="classic",
    )  # [B, V, H, W, D], [B, V, H, W, 1]
    out = out.permute(0, 1, 4, 2, 3)  # [B, V, D, H, W]
    C = D0 - 3
    return RenderOutput(
        rgb=out[:, :, :3],
        alpha=alpha.permute(0, 1, 4, 2, 3),
        depth=out[:, :, D0 : D0 + 1] if return_depth else None,
        features=out[:, :, 3:D0] if features is not None else None,
    )


# ------------------------------------------------------------------------- pure-PyTorch compositor
def _rasterize_pure(means2d, conics, opacities, colors, background, offsets, ids, width, height, chunk: int = 32):
    """Tile compositor in PyTorch ops: padded per-tile gathers, ``chunk`` Gaussians at a time.

    Only tiles that still have Gaussians left and pixels not yet saturated take part in a step; each step
    holds ``[tiles, 256, chunk]`` tensors. Backward is autograd.
    """
    I, N, D = colors.shape
    tw, th = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    nt = tw * th
    dev, dt = colors.device, colors.dtype
    counts = (offsets[1:] - offsets[:-1])  # [I·nt]
    L = int(counts.max()) if counts.numel() else 0
    # pixel centres of each tile (padding pixels outside the image are dropped at the end)
    ly, lx = torch.meshgrid(torch.arange(TILE_SIZE, device=dev), torch.arange(TILE_SIZE, device=dev), indexing="ij")
    ty, tx = torch.meshgrid(torch.arange(th, device=dev), torch.arange(tw, device=dev), indexing="ij")
    pxs = (tx.reshape(-1, 1) * TILE_SIZE + lx.reshape(1, -1)).to(dt) + 0.5  # [nt, 256]
    pys = (ty.reshape(-1, 1) * TILE_SIZE + ly.reshape(1, -1)).to(dt) + 0.5
    T = torch.ones(I * nt, TILE_SIZE * TILE_SIZE, dtype=dt, device=dev)  # [I·nt, 256]
    done = torch.zeros_like(T, dtype=torch.bool)
    acc = torch.zeros(I * nt, TILE_SIZE * TILE_SIZE, D, dtype=dt, device=dev)  # [I·nt, 256, D]
    flat_m, flat_c = means2d.reshape(I * N, 2), conics.reshape(I * N, 3)
    flat_o, flat_col = opacities.reshape(I * N), colors.reshape(I * N, D)
    img_of_tile = torch.arange(I * nt, device=dev) // nt
    for s in range(0, L, chunk):
        active = (counts > s) & ~done.all(-1)
        tiles = active.nonzero()[:, 0]  # [A]
        if tiles.numel() == 0:
            break
        k = torch.arange(s, s + chunk, device=dev)  # [K]
        pos = offsets[tiles, None] + k  # [A, K]
        inside = k[None] < counts[tiles, None]  # [A, K]
        g = ids.long()[pos.clamp(max=max(ids.numel() - 1, 0))] + img_of_tile[tiles, None] * N  # [A, K]
        m, c, o, col = flat_m[g], flat_c[g], flat_o[g], flat_col[g]  # [A, K, ...]
        loc = tiles % nt
        dx = m[:, None, :, 0] - pxs[loc][..., None]  # [A, 256, K]
        dy = m[:, None, :, 1] - pys[loc][..., None]
        sigma = 0.5 * (c[:, None, :, 0] * dx * dx + c[:, None, :, 2] * dy * dy) + c[:, None, :, 1] * dx * dy
        a = torch.clamp(o[:, None] * torch.exp(-sigma), max=ALPHA_MAX)
        a = torch.where((sigma >= 0) & (a >= ALPHA_MIN) & inside[:, None], a, torch.zeros_like(a))  # [A, 256, K]
        Tp = T[tiles]  # [A, 256]
        cum = torch.cumprod(1 - a, dim=-1)  # [A, 256, K]
        keep = (Tp[..., None] * cum > T_MIN) & ~done[tiles][..., None]  # a prefix along K
        a = a * keep
        excl = torch.cat([torch.ones_like(cum[..., :1]), torch.cumprod(1 - a, dim=-1)[..., :-1]], -1)
        w = a * excl * Tp[..., None]  # [A, 256, K]  alpha · T_before
        acc = acc.index_add(0, tiles, torch.einsum("apk,akd->apd", w, col))
        T = T.index_copy(0, tiles, Tp * torch.prod(1 - a, dim=-1))
        stopped = Tp * cum[..., -1] <= T_MIN  # the transmittance limit was hit inside this chunk
        done = done.index_copy(0, tiles, done[tiles] | stopped)
    if background is not None:
        acc = acc + T[..., None] * background[img_of_tile][:, None, :]
    # [I·nt, 256, D] → [I, D, H, W]
    img = acc.reshape(I, th, tw, TILE_SIZE, TILE_SIZE, D).permute(0, 5, 1, 3, 2, 4)
    img = img.reshape(I, D, th * TILE_SIZE, tw * TILE_SIZE)[:, :, :height, :width]
    alpha = (1 - T).reshape(I, th, tw, TILE_SIZE, TILE_SIZE).permute(0, 1, 3, 2, 4)
    alpha = alpha.reshape(I, 1, th * TILE_SIZE, tw * TILE_SIZE)[:, :, :height, :width]
    return img, alpha


# ------------------------------------------------------------------------------ native C kernel
_C_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define PARALLEL(n) _Pragma("omp parallel num_threads(nthreads)")  /* n must be `nthreads` */
#define THREAD_ID omp_get_thread_num()
#else
#define PARALLEL(n)
#define THREAD_ID 0
#endif

/* Counting sort of (image, tile) lists; Gaussians arrive in depth order so each list is sorted. */
void bin_tiles(int I, int N, int tw, int th, const int32_t *rects, const int64_t *order,
               int64_t *offsets, int32_t *ids) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt;
    memset(offsets, 0, (total + 1) * sizeof(int64_t));
    for (int64_t i = 0; i < (int64_t)I * N; ++i) {
        const int32_t *r = rects + 4 * i;
        int64_t base = (i / N) * nt;
        for (int y = r[1]; y < r[3]; ++y)
            for (int x = r[0]; x < r[2]; ++x) offsets[base + (int64_t)y * tw + x + 1]++;
    }
    for (int64_t t = 0; t < total; ++t) offsets[t + 1] += offsets[t];
    int64_t *cur = (int64_t *)malloc((total + 1) * sizeof(int64_t));
    memcpy(cur, offsets, (total + 1) * sizeof(int64_t));
    for (int img = 0; img < I; ++img) {
        for (int k = 0; k < N; ++k) {
            int64_t n = order[(int64_t)img * N + k];
            const int32_t *r = rects + 4 * ((int64_t)img * N + n);
            for (int y = r[1]; y < r[3]; ++y)
                for (int x = r[0]; x < r[2]; ++x) ids[cur[img * nt + (int64_t)y * tw + x]++] = (int32_t)n;
        }
    }
    free(cur);
}
"""

_C_KERNELS = r"""
#define NPACK 7
#define NPIX (TS * TS)
/* packs x, y, conic a, b, c, opacity and the sigma above which alpha < 1/255 (-1: never visible) */
static void SFX(pack)(REAL **buf, int64_t *cap, int64_t L, const int32_t *ids, int64_t base,
                      const REAL *m, const REAL *c, const REAL *o) {
    if (L > *cap) { free(*buf); *cap = L * 2; *buf = (REAL *)malloc(*cap * NPACK * sizeof(REAL)); }
    REAL *p = *buf;
    for (int64_t j = 0; j < L; ++j, p += NPACK) {
        int64_t g = base + ids[j];
        p[0] = m[2 * g]; p[1] = m[2 * g + 1];
        p[2] = c[3 * g]; p[3] = c[3 * g + 1]; p[4] = c[3 * g + 2];
        p[5] = o[g];
        p[6] = o[g] * 255.0 > 1.0 ? (REAL)(log((double)o[g] * 255.0) + 1e-3) : (REAL)-1.0;
    }
}

/* Rows [*r0, *r1] of the tile (local coordinates) that the ellipse sigma <= thr can touch. */
static int SFX(rows)(const REAL *p, int x0, int y0, int tw_, int th_, int *r0, int *r1) {
    double a = p[2], b = p[3], c = p[4], thr = p[6], det = a * c - b * b;
    if (thr < 0) return 0;
    if (!(a > 0) || !(det > 0)) { *r0 = 0; *r1 = th_ - 1; return 1; }
    double ext = sqrt(2.0 * thr * a / det);
    int lo = (int)ceil(p[1] - ext - 0.5) - 1 - y0, hi = (int)floor(p[1] + ext - 0.5) + 1 - y0;
    *r0 = lo < 0 ? 0 : lo;
    *r1 = hi > th_ - 1 ? th_ - 1 : hi;
    return *r0 <= *r1;
}

/* Columns [*c0, *c1] of local row `r` inside the ellipse (widened by one pixel against rounding). */
static int SFX(span)(const REAL *p, int x0, int y0, int tw_, int r, int *c0, int *c1) {
    double a = p[2], b = p[3], c = p[4], thr = p[6];
    if (!(a > 0) || !(a * c - b * b > 0)) { *c0 = 0; *c1 = tw_ - 1; return 1; }
    double dy = p[1] - (y0 + r + 0.5);
    double disc = b * b * dy * dy - a * c * dy * dy + 2.0 * a * thr;
    if (disc < 0) disc = 0;  /* the widened row range may graze the ellipse: keep a 1-pixel span */
    double s = sqrt(disc);
    /* dx = mean_x - px lies in [(-b dy - s) / a, (-b dy + s) / a]; px = centre - 0.5 */
    double pmin = p[0] - (-b * dy + s) / a - 0.5, pmax = p[0] - (-b * dy - s) / a - 0.5;
    int lo = (int)ceil(pmin) - 1 - x0, hi = (int)floor(pmax) + 1 - x0;
    *c0 = lo < 0 ? 0 : lo;
    *c1 = hi > tw_ - 1 ? tw_ - 1 : hi;
    return *c0 <= *c1;
}

static void SFX(rasterize_fwd_body)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        REAL *out, REAL *out_T, int32_t *last, int64_t *counter) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt, HW = (int64_t)H * W, cap = 0;
    REAL *buf = NULL, T[NPIX];
    int32_t lastj[NPIX];
    unsigned char done[NPIX];
    REAL *acc = (REAL *)malloc((size_t)NPIX * (D > 0 ? D : 1) * sizeof(REAL));
    for (;;) {
        int64_t gt = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (gt >= total) break;
        int64_t img = gt / nt, t = gt % nt;
        int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
        int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
        int64_t s = offsets[gt], L = offsets[gt + 1] - s;
        const int32_t *tid = ids + s;
        SFX(pack)(&buf, &cap, L, tid, img * N, means2d, conics, opac);
        for (int k = 0; k < NPIX; ++k) { T[k] = 1; lastj[k] = -1; done[k] = 0; }
        memset(acc, 0, (size_t)NPIX * D * sizeof(REAL));
        int remaining = tw_ * th_, row_left[TS];
        for (int r = 0; r < TS; ++r) row_left[r] = tw_;
        const REAL *p = buf;
        for (int64_t j = 0; j < L && remaining > 0; ++j, p += NPACK) {
            int r0, r1, c0, c1;
            if (!SFX(rows)(p, x0, y0, tw_, th_, &r0, &r1)) continue;
            const REAL *col = colors + (img * N + tid[j]) * D;
            for (int r = r0; r <= r1; ++r) {
                if (row_left[r] == 0 || !SFX(span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
                REAL dy = p[1] - ((REAL)(y0 + r) + (REAL)0.5);
                for (int cc = c0; cc <= c1; ++cc) {
                    int k = r * TS + cc;
                    if (done[k]) continue;
                    REAL dx = p[0] - ((REAL)(x0 + cc) + (REAL)0.5);
                    REAL sigma = (REAL)0.5 * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy;
                    if (sigma < 0 || sigma > p[6]) continue;
                    REAL alpha = p[5] * EXP(-sigma);
                    if (alpha > (REAL)0.999) alpha = (REAL)0.999;
                    if (alpha < (REAL)(1.0 / 255.0)) continue;
                    REAL next_T = T[k] * (1 - alpha);
                    if (next_T <= (REAL)1e-4) { done[k] = 1; --remaining; --row_left[r]; continue; }
                    REAL vis = alpha * T[k];
                    REAL *ak = acc + (int64_t)k * D;
                    for (int d = 0; d < D; ++d) ak[d] += col[d] * vis;
                    T[k] = next_T;
                    lastj[k] = (int32_t)j;
                }
            }
        }
        const REAL *bgi = bg ? bg + img * D : NULL;
        for (int r = 0; r < th_; ++r) {
            for (int cc = 0; cc < tw_; ++cc) {
                int k = r * TS + cc;
                int64_t pix = (int64_t)(y0 + r) * W + x0 + cc;
                for (int d = 0; d < D; ++d)
                    out[(img * D + d) * HW + pix] = acc[(int64_t)k * D + d] + (bgi ? T[k] * bgi[d] : 0);
                out_T[img * HW + pix] = T[k];
                last[img * HW + pix] = lastj[k];
            }
        }
    }
    free(acc);
    free(buf);
}

void SFX(rasterize_fwd)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        REAL *out, REAL *out_T, int32_t *last, int nthreads) {
    int64_t counter = 0;
    PARALLEL(nthreads)
    SFX(rasterize_fwd_body)(I, N, D, W, H, tw, th, offsets, ids, means2d, conics, opac, colors, bg, out, out_T,
                            last, &counter);
}

/* Back to front from each pixel's last contributor, as gsplat's CUDA backward, Gaussian by Gaussian over
   the tile. A work unit is `unit` consecutive tiles; gradients go to this thread's buffers (shared when
   units are whole images, which never share gradient slots). */
static void SFX(rasterize_bwd_body)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha,
        REAL *v_means2d, REAL *v_conics, REAL *v_opac, REAL *v_colors,
        int64_t *counter, int64_t unit) {
    int64_t nt = (int64_t)tw * th, total = (int64_t)I * nt, HW = (int64_t)H * W, cap = 0;
    REAL *buf = NULL, T[NPIX], Tf[NPIX], va[NPIX], bgdot[NPIX];
    int32_t lastj[NPIX];
    int Dm = D > 0 ? D : 1;
    REAL *buffer = (REAL *)malloc((size_t)NPIX * Dm * sizeof(REAL));
    REAL *vc = (REAL *)malloc((size_t)NPIX * Dm * sizeof(REAL));
    REAL *gcol = (REAL *)malloc((size_t)Dm * sizeof(REAL));
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u * unit >= total) break;
        for (int64_t gt = u * unit; gt < (u + 1) * unit && gt < total; ++gt) {
            int64_t img = gt / nt, t = gt % nt;
            int x0 = (int)(t % tw) * TS, y0 = (int)(t / tw) * TS;
            int tw_ = W - x0 < TS ? W - x0 : TS, th_ = H - y0 < TS ? H - y0 : TS;
            int64_t s = offsets[gt], L = offsets[gt + 1] - s;
            if (L == 0) continue;
            const int32_t *tid = ids + s;
            const REAL *bgi = bg ? bg + img * D : NULL;
            int32_t jmax = -1;
            for (int k = 0; k < NPIX; ++k) lastj[k] = -1;
            for (int r = 0; r < th_; ++r) {
                for (int cc = 0; cc < tw_; ++cc) {
                    int k = r * TS + cc;
                    int64_t pix = img * HW + (int64_t)(y0 + r) * W + x0 + cc;
                    lastj[k] = last[pix];
                    if (lastj[k] > jmax) jmax = lastj[k];
                    T[k] = Tf[k] = out_T[pix];
                    va[k] = v_alpha ? v_alpha[pix] : 0;
                    bgdot[k] = 0;
                    for (int d = 0; d < D; ++d) {
                        buffer[(int64_t)k * D + d] = 0;
                        vc[(int64_t)k * D + d] = v_out[(img * D + d) * HW + (pix - img * HW)];
                        if (bgi) bgdot[k] += bgi[d] * vc[(int64_t)k * D + d];
                    }
                }
            }
            if (jmax < 0) continue;
            SFX(pack)(&buf, &cap, jmax + 1, tid, img * N, means2d, conics, opac);
            const REAL *p = buf + (int64_t)jmax * NPACK;
            for (int64_t j = jmax; j >= 0; --j, p -= NPACK) {
                int r0, r1, c0, c1;
                if (!SFX(rows)(p, x0, y0, tw_, th_, &r0, &r1)) continue;
                int64_t g = img * N + tid[j];
                const REAL *col = colors + g * D;
                REAL gxy0 = 0, gxy1 = 0, gc0 = 0, gc1 = 0, gc2 = 0, gop = 0;
                int touched = 0;
                for (int d = 0; d < D; ++d) gcol[d] = 0;
                for (int r = r0; r <= r1; ++r) {
                    if (!SFX(span)(p, x0, y0, tw_, r, &c0, &c1)) continue;
                    REAL dy = p[1] - ((REAL)(y0 + r) + (REAL)0.5);
                    for (int cc = c0; cc <= c1; ++cc) {
                        int k = r * TS + cc;
                        if (lastj[k] < j) continue;
                        REAL dx = p[0] - ((REAL)(x0 + cc) + (REAL)0.5);
                        REAL sigma = (REAL)0.5 * (p[2] * dx * dx + p[4] * dy * dy) + p[3] * dx * dy;
                        if (sigma < 0 || sigma > p[6]) continue;
                        REAL vis = EXP(-sigma);
                        REAL alpha = p[5] * vis;
                        if (alpha > (REAL)0.999) alpha = (REAL)0.999;
                        if (alpha < (REAL)(1.0 / 255.0)) continue;
                        touched = 1;
                        REAL ra = 1 / (1 - alpha);
                        T[k] *= ra;
                        REAL fac = alpha * T[k], v_a = 0;
                        REAL *bk = buffer + (int64_t)k * D;
                        const REAL *vk = vc + (int64_t)k * D;
                        for (int d = 0; d < D; ++d) {
                            gcol[d] += fac * vk[d];
                            v_a += (col[d] * T[k] - bk[d] * ra) * vk[d];
                            bk[d] += col[d] * fac;
                        }
                        v_a += Tf[k] * ra * (va[k] - bgdot[k]);
                        if (p[5] * vis <= (REAL)0.999) {
                            REAL v_sigma = -p[5] * vis * v_a;
                            gc0 += (REAL)0.5 * v_sigma * dx * dx;
                            gc1 += v_sigma * dx * dy;
                            gc2 += (REAL)0.5 * v_sigma * dy * dy;
                            gxy0 += v_sigma * (p[2] * dx + p[3] * dy);
                            gxy1 += v_sigma * (p[3] * dx + p[4] * dy);
                            gop += vis * v_a;
                        }
                    }
                }
                if (!touched) continue;
                REAL *vcol = v_colors + g * D;
                for (int d = 0; d < D; ++d) vcol[d] += gcol[d];
                v_conics[3 * g] += gc0; v_conics[3 * g + 1] += gc1; v_conics[3 * g + 2] += gc2;
                v_means2d[2 * g] += gxy0; v_means2d[2 * g + 1] += gxy1;
                v_opac[g] += gop;
            }
        }
    }
    free(gcol); free(vc); free(buffer);
    free(buf);
}

/* per_thread: gradient buffers are [threads, I, N, k] and thread t writes slice t; else one shared slice
   (work units are whole images then, which never share gradient slots). */
void SFX(rasterize_bwd)(int I, int N, int D, int W, int H, int tw, int th,
        const int64_t *offsets, const int32_t *ids,
        const REAL *means2d, const REAL *conics, const REAL *opac, const REAL *colors, const REAL *bg,
        const REAL *out_T, const int32_t *last, const REAL *v_out, const REAL *v_alpha,
        REAL *v_means2d, REAL *v_conics, REAL *v_opac, REAL *v_colors, int per_thread, int nthreads) {
    int64_t counter = 0, unit = per_thread ? 1 : (int64_t)tw * th, IN = (int64_t)I * N;
    PARALLEL(nthreads)
    {
        int64_t k = per_thread ? THREAD_ID : 0;
        SFX(rasterize_bwd_body)(I, N, D, W, H, tw, th, offsets, ids, means2d, conics, opac, colors, bg, out_T,
                                last, v_out, v_alpha, v_means2d + k * IN * 2, v_conics + k * IN * 3,
                                v_opac + k * IN, v_colors + k * IN * D, &counter, unit);
    }
}
"""


_C_PROJECT = r"""
/* EWA projection of one Gaussian into one pinhole camera, as gsplat's fused projection. */
static void SFX(rotmat)(const REAL *q, REAL *qn, REAL *R) {
    REAL inv = 1 / SQRT(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
    REAL w = q[0] * inv, x = q[1] * inv, y = q[2] * inv, z = q[3] * inv;
    qn[0] = w; qn[1] = x; qn[2] = y; qn[3] = z;
    R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z); R[2] = 2 * (x * z + w * y);
    R[3] = 2 * (x * y + w * z); R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
    R[6] = 2 * (x * z - w * y); R[7] = 2 * (y * z + w * x); R[8] = 1 - 2 * (x * x + y * y);
}

typedef struct {
    REAL mc[3], ux, uy, uxc, uyc, inx, iny, T0[3], T1[3], A0[3], A1[3], c00, c01, c11, det;
} SFX(proj_t);

/* returns 1 if the depth is inside (near, far) */
static int SFX(project_one)(const REAL *m, const REAL *M, const REAL *vm, const REAL *K, int W, int H,
                            REAL eps2d, REAL near, REAL far, SFX(proj_t) *P) {
    for (int i = 0; i < 3; ++i) P->mc[i] = vm[4 * i] * m[0] + vm[4 * i + 1] * m[1] + vm[4 * i + 2] * m[2] + vm[4 * i + 3];
    REAL z = P->mc[2];
    if (!(z > near && z < far)) return 0;
    REAL fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    P->ux = P->mc[0] / z; P->uy = P->mc[1] / z;
    REAL tx = (REAL)0.5 * W / fx, ty = (REAL)0.5 * H / fy;
    REAL lxn = -(cx / fx + (REAL)0.3 * tx), lxp = (W - cx) / fx + (REAL)0.3 * tx;
    REAL lyn = -(cy / fy + (REAL)0.3 * ty), lyp = (H - cy) / fy + (REAL)0.3 * ty;
    P->uxc = P->ux < lxn ? lxn : (P->ux > lxp ? lxp : P->ux);
    P->uyc = P->uy < lyn ? lyn : (P->uy > lyp ? lyp : P->uy);
    P->inx = P->ux > lxn && P->ux < lxp; P->iny = P->uy > lyn && P->uy < lyp;
    for (int j = 0; j < 3; ++j) {
        P->T0[j] = fx / z * (vm[j] - P->uxc * vm[8 + j]);
        P->T1[j] = fy / z * (vm[4 + j] - P->uyc * vm[8 + j]);
    }
    for (int k = 0; k < 3; ++k) {
        P->A0[k] = P->T0[0] * M[k] + P->T0[1] * M[3 + k] + P->T0[2] * M[6 + k];
        P->A1[k] = P->T1[0] * M[k] + P->T1[1] * M[3 + k] + P->T1[2] * M[6 + k];
    }
    P->c00 = P->A0[0] * P->A0[0] + P->A0[1] * P->A0[1] + P->A0[2] * P->A0[2] + eps2d;
    P->c01 = P->A0[0] * P->A1[0] + P->A0[1] * P->A1[1] + P->A0[2] * P->A1[2];
    P->c11 = P->A1[0] * P->A1[0] + P->A1[1] * P->A1[1] + P->A1[2] * P->A1[2] + eps2d;
    P->det = P->c00 * P->c11 - P->c01 * P->c01;
    return 1;
}

/* Work units are (batch item, block of 1024 Gaussians); each loops over all V views. */
static void SFX(project_fwd_body)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *opac, const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        REAL *means2d, REAL *conics, REAL *depths, int32_t *radii, int64_t *counter) {
    int64_t nblk = (N + 1023) / 1024, total = (int64_t)B * nblk;
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u >= total) break;
        int64_t b = u / nblk, n0 = (u % nblk) * 1024, n1 = n0 + 1024 < N ? n0 + 1024 : N;
        for (int64_t n = n0; n < n1; ++n) {
            int64_t bn = b * N + n;
            REAL qn[4], R[9], M[9];
            SFX(rotmat)(quats + 4 * bn, qn, R);
            for (int i = 0; i < 9; ++i) M[i] = R[i] * scales[3 * bn + i % 3];
            REAL o = opac[bn];
            for (int v = 0; v < V; ++v) {
                int64_t bv = b * V + v, idx = bv * N + n;
                SFX(proj_t) P;
                int ok = SFX(project_one)(means + 3 * bn, M, viewmats + 16 * bv, Ks + 9 * bv, W, H, eps2d, near, far, &P);
                depths[idx] = P.mc[2];
                radii[2 * idx] = radii[2 * idx + 1] = 0;
                if (!ok) {
                    means2d[2 * idx] = means2d[2 * idx + 1] = 0;
                    conics[3 * idx] = conics[3 * idx + 1] = conics[3 * idx + 2] = 0;
                    continue;
                }
                const REAL *K = Ks + 9 * bv;
                REAL mx = K[0] * P.ux + K[2], my = K[4] * P.uy + K[5];
                means2d[2 * idx] = mx; means2d[2 * idx + 1] = my;
                REAL ds = P.det > (REAL)1e-10 ? P.det : (REAL)1e-10;
                conics[3 * idx] = P.c11 / ds; conics[3 * idx + 1] = -P.c01 / ds; conics[3 * idx + 2] = P.c00 / ds;
                if (!(P.det > 0) || o < (REAL)(1.0 / 255.0)) continue;
                double ext = sqrt(2.0 * log((double)o * 255.0));
                if (ext > 3.33) ext = 3.33;
                double rx = ceil(ext * sqrt((double)P.c00)), ry = ceil(ext * sqrt((double)P.c11));
                if (rx <= 0 && ry <= 0) continue;
                if (mx + rx <= 0 || mx - rx >= W || my + ry <= 0 || my - ry >= H) continue;
                radii[2 * idx] = (int32_t)rx; radii[2 * idx + 1] = (int32_t)ry;
            }
        }
    }
}

void SFX(project_fwd)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *opac, const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        REAL *means2d, REAL *conics, REAL *depths, int32_t *radii, int nthreads) {
    int64_t counter = 0;
    PARALLEL(nthreads)
    SFX(project_fwd_body)(B, V, N, means, quats, scales, opac, viewmats, Ks, W, H, eps2d, near, far, means2d,
                          conics, depths, radii, &counter);
}

static void SFX(project_bwd_body)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        const REAL *v_means2d, const REAL *v_conics, const REAL *v_depths,
        REAL *v_means, REAL *v_quats, REAL *v_scales, int64_t *counter) {
    int64_t nblk = (N + 1023) / 1024, total = (int64_t)B * nblk;
    for (;;) {
        int64_t u = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
        if (u >= total) break;
        int64_t b = u / nblk, n0 = (u % nblk) * 1024, n1 = n0 + 1024 < N ? n0 + 1024 : N;
        for (int64_t n = n0; n < n1; ++n) {
            int64_t bn = b * N + n;
            const REAL *q = quats + 4 * bn, *s = scales + 3 * bn;
            REAL qn[4], R[9], M[9], vM[9] = {0}, vm_[3] = {0};
            SFX(rotmat)(q, qn, R);
            for (int i = 0; i < 9; ++i) M[i] = R[i] * s[i % 3];
            for (int v = 0; v < V; ++v) {
                int64_t bv = b * V + v, idx = bv * N + n;
                const REAL *vm = viewmats + 16 * bv, *K = Ks + 9 * bv;
                SFX(proj_t) P;
                if (!SFX(project_one)(means + 3 * bn, M, vm, K, W, H, eps2d, near, far, &P)) continue;
                REAL z = P.mc[2], fx = K[0], fy = K[4];
                REAL vc0 = 0, vc01 = 0, vc1 = 0;  /* d/d c00, c01, c11 */
                const REAL *vq = v_conics + 3 * idx;
                if (P.det > (REAL)1e-10) {
                    REAL id = 1 / P.det;
                    REAL p00 = P.c11 * id, p01 = -P.c01 * id, p11 = P.c00 * id;
                    REAL g00 = vq[0], g01 = (REAL)0.5 * vq[1], g11 = vq[2];
                    /* -P G P (symmetric); c01 enters twice */
                    REAL h00 = p00 * g00 + p01 * g01, h01 = p00 * g01 + p01 * g11;
                    REAL h10 = p01 * g00 + p11 * g01, h11 = p01 * g01 + p11 * g11;
                    vc0 = -(h00 * p00 + h01 * p01);
                    vc01 = -2 * (h00 * p01 + h01 * p11);
                    vc1 = -(h10 * p01 + h11 * p11);
                } else {
                    vc0 = vq[2] * (REAL)1e10; vc01 = -vq[1] * (REAL)1e10; vc1 = vq[0] * (REAL)1e10;
                }
                REAL vA0[3], vA1[3], vT0[3] = {0}, vT1[3] = {0};
                for (int k = 0; k < 3; ++k) {
                    vA0[k] = 2 * vc0 * P.A0[k] + vc01 * P.A1[k];
                    vA1[k] = 2 * vc1 * P.A1[k] + vc01 * P.A0[k];
                }
                for (int j = 0; j < 3; ++j) {
                    for (int k = 0; k < 3; ++k) {
                        vT0[j] += M[3 * j + k] * vA0[k];
                        vT1[j] += M[3 * j + k] * vA1[k];
                        vM[3 * j + k] += P.T0[j] * vA0[k] + P.T1[j] * vA1[k];
                    }
                }
                REAL vz = v_depths ? v_depths[idx] : 0, vuxc = 0, vuyc = 0;
                for (int j = 0; j < 3; ++j) {
                    vz -= (P.T0[j] * vT0[j] + P.T1[j] * vT1[j]) / z;
                    vuxc -= fx / z * vm[8 + j] * vT0[j];
                    vuyc -= fy / z * vm[8 + j] * vT1[j];
                }
                REAL vux = fx * v_means2d[2 * idx] + (P.inx ? vuxc : 0);
                REAL vuy = fy * v_means2d[2 * idx + 1] + (P.iny ? vuyc : 0);
                REAL vx = vux / z, vy = vuy / z;
                vz -= (vux * P.ux + vuy * P.uy) / z;
                for (int i = 0; i < 3; ++i) vm_[i] += vm[i] * vx + vm[4 + i] * vy + vm[8 + i] * vz;
            }
            /* M = R diag(s) */
            REAL vR[9];
            for (int i = 0; i < 9; ++i) vR[i] = vM[i] * s[i % 3];
            for (int k = 0; k < 3; ++k) v_scales[3 * bn + k] += vM[k] * R[k] + vM[3 + k] * R[3 + k] + vM[6 + k] * R[6 + k];
            REAL w = qn[0], x = qn[1], y = qn[2], zq = qn[3], g[4];
            g[0] = 2 * (-zq * vR[1] + y * vR[2] + zq * vR[3] - x * vR[5] - y * vR[6] + x * vR[7]);
            g[1] = 2 * (y * vR[1] + zq * vR[2] + y * vR[3] - 2 * x * vR[4] - w * vR[5] + zq * vR[6] + w * vR[7] - 2 * x * vR[8]);
            g[2] = 2 * (-2 * y * vR[0] + x * vR[1] + w * vR[2] + x * vR[3] + zq * vR[5] - w * vR[6] + zq * vR[7] - 2 * y * vR[8]);
            g[3] = 2 * (-2 * zq * vR[0] - w * vR[1] + x * vR[2] + w * vR[3] - 2 * zq * vR[4] + y * vR[5] + x * vR[6] + y * vR[7]);
            REAL inv = 1 / SQRT(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
            REAL dot = g[0] * w + g[1] * x + g[2] * y + g[3] * zq;
            for (int i = 0; i < 4; ++i) v_quats[4 * bn + i] += (g[i] - qn[i] * dot) * inv;
            for (int i = 0; i < 3; ++i) v_means[3 * bn + i] += vm_[i];
        }
    }
}

void SFX(project_bwd)(int B, int V, int N, const REAL *means, const REAL *quats, const REAL *scales,
        const REAL *viewmats, const REAL *Ks, int W, int H, REAL eps2d, REAL near, REAL far,
        const REAL *v_means2d, const REAL *v_conics, const REAL *v_depths,
        REAL *v_means, REAL *v_quats, REAL *v_scales, int nthreads) {
    int64_t counter = 0;
    PARALLEL(nthreads)
    SFX(project_bwd_body)(B, V, N, means, quats, scales, viewmats, Ks, W, H, eps2d, near, far, v_means2d,
                          v_conics, v_depths, v_means, v_quats, v_scales, &counter);
}
"""


def _full_source() -> str:
    src = _C_SOURCE + f"\n#define TS {TILE_SIZE}\n"
    for real, sfx, exp, sqrt in (("float", "f32", "expf", "sqrtf"), ("double", "f64", "exp", "sqrt")):
        src += f"\n#define REAL {real}\n#define SFX(name) name##_{sfx}\n#define EXP {exp}\n#define SQRT {sqrt}\n"
        src += _C_KERNELS + _C_PROJECT
        src += "\n#undef REAL\n#undef SFX\n#undef EXP\n#undef SQRT\n#undef NPACK\n#undef NPIX\n"
    return src


_LIB: ctypes.CDLL | None = None
_LIB_TRIED = False
_LIB_LOCK = threading.Lock()


def _cache_dir() -> str:
    root = os.environ.get("PERCHEAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "perchead"
    )
    return os.path.join(root, "render_kernel")


def _compile(src: str, flags: list[str], path: str) -> None:
    """Compiles ``src`` into the shared library ``path``, with OpenMP when the compiler has it.

    With OpenMP the library binds to the ``libgomp.so.1`` that torch has already loaded, so the kernel
    shares torch's thread pool (``torch.set_num_threads``) instead of competing with it.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (cc/gcc/clang)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        c_file, so_file = os.path.join(tmp, "render.c"), os.path.join(tmp, "render.so")
        with open(c_file, "w") as f:
            f.write(src)
        try:
            subprocess.run([cc, *flags, "-fopenmp", c_file, "-o", so_file, "-lm"], check=True, capture_output=True,
                           timeout=300)
        except subprocess.CalledProcessError:  # no OpenMP: single-threaded kernel
            subprocess.run([cc, *flags, c_file, "-o", so_file, "-lm"], check=True, capture_output=True, timeout=300)
        os.replace(so_file, path)  # atomic: concurrent builders are harmless


def _native_lib() -> ctypes.CDLL | None:
    """Builds (once, cached on disk by source hash) and loads the C compositor; None if unavailable.

    Set ``PERCHEAD_RENDER_NATIVE=0`` to force the pure-PyTorch compositor.
    """
    global _LIB, _LIB_TRIED
    if _LIB_TRIED:
        return _LIB
    with _LIB_LOCK:
        if _LIB_TRIED:
            return _LIB
        _LIB_TRIED = True
        if os.environ.get("PERCHEAD_RENDER_NATIVE", "1") == "0":
            return None
        src = _full_source()
        # -std=c99 keeps floating-point contraction off, so forward and backward make identical decisions.
        flags = ["-O3", "-shared", "-fPIC", "-std=c99", "-fno-math-errno"]
        tag = hashlib.sha256((src + " ".join(flags)).encode()).hexdigest()[:16]
        path = os.path.join(_cache_dir(), f"perchead_render_{tag}.so")
        try:
            if not os.path.exists(path):
                _compile(src, flags, path)
            lib = ctypes.CDLL(path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            msg = e.stderr.decode(errors="replace")[-2000:] if isinstance(e, subprocess.CalledProcessError) else str(e)
            warnings.warn(f"perchead.render: C kernel unavailable, using the slower pure-PyTorch compositor ({msg})")
            return None
        P, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
        lib.bin_tiles.argtypes = [i32, i32, i32, i32, P, P, P, P]
        for sfx, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            getattr(lib, f"rasterize_fwd_{sfx}").argtypes = [i32] * 7 + [P] * 10 + [i32]
            getattr(lib, f"rasterize_bwd_{sfx}").argtypes = [i32] * 7 + [P] * 15 + [i32, i32]
            getattr(lib, f"project_fwd_{sfx}").argtypes = [i32] * 3 + [P] * 6 + [i32] * 2 + [real] * 3 + [P] * 4 + [i32]
            getattr(lib, f"project_bwd_{sfx}").argtypes = [i32] * 3 + [P] * 5 + [i32] * 2 + [real] * 3 + [P] * 6 + [i32]
        _LIB = lib
        return _LIB


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _RasterizeNative(torch.autograd.Function):
    """C compositor (forward) with the matching hand-written backward."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, background, offsets, ids, width, height):
        lib = _native_lib()
        dt = colors.dtype
        sfx = "f32" if dt == torch.float32 else "f64"
        dev = colors.device
        m, c = means2d.detach().to("cpu", dt).contiguous(), conics.detach().to("cpu", dt).contiguous()
        o, col = opacities.detach().to("cpu", dt).contiguous(), colors.detach().to("cpu", dt).contiguous()
        bg = None if background is None else background.detach().to("cpu", dt).contiguous()
        offsets, ids = offsets.cpu().contiguous(), ids.cpu().contiguous()
        I, N, D = col.shape
        tw, th = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
        out = torch.empty(I, D, height, width, dtype=dt)
        out_T = torch.empty(I, height, width, dtype=dt)
        last = torch.empty(I, height, width, dtype=torch.int32)
        n_threads = max(1, min(torch.get_num_threads(), I * tw * th))
        getattr(lib, f"rasterize_fwd_{sfx}")(
            I, N, D, width, height, tw, th, offsets.data_ptr(), ids.data_ptr(), m.data_ptr(), c.data_ptr(),
            o.data_ptr(), col.data_ptr(), _ptr(bg), out.data_ptr(), out_T.data_ptr(), last.data_ptr(), n_threads,
        )
        ctx.save_for_backward(m, c, o, col, bg, offsets, ids, out_T, last)
        ctx.size = (width, height)
        ctx.dev = dev
        ctx.has_bg = background is not None
        alpha = (1 - out_T).unsqueeze(1)  # [I, 1, H, W]
        return out.to(dev), alpha.to(dev)

    @staticmethod
    def backward(ctx, v_out, v_alpha):
        lib = _native_lib()
        m, c, o, col, bg, offsets, ids, out_T, last = ctx.saved_tensors
        width, height = ctx.size
        dt = col.dtype
        sfx = "f32" if dt == torch.float32 else "f64"
        I, N, D = col.shape
        tw, th = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
        nt = I * tw * th
        v_out = (torch.zeros(I, D, height, width, dtype=dt) if v_out is None else v_out.to("cpu", dt)).contiguous()
        v_alpha = None if v_alpha is None else v_alpha.to("cpu", dt).reshape(I, height, width).contiguous()
        n_threads = max(1, min(torch.get_num_threads(), nt))
        per_image = I >= n_threads  # images never share Gaussians' gradient slots → one shared buffer
        n_buf = 1 if per_image else n_threads
        vm = torch.zeros(n_buf, I, N, 2, dtype=dt)
        vcn = torch.zeros(n_buf, I, N, 3, dtype=dt)
        vo = torch.zeros(n_buf, I, N, dtype=dt)
        vcol = torch.zeros(n_buf, I, N, D, dtype=dt)
        getattr(lib, f"rasterize_bwd_{sfx}")(
            I, N, D, width, height, tw, th, offsets.data_ptr(), ids.data_ptr(), m.data_ptr(), c.data_ptr(),
            o.data_ptr(), col.data_ptr(), _ptr(bg), out_T.data_ptr(), last.data_ptr(), v_out.data_ptr(),
            _ptr(v_alpha), vm.data_ptr(), vcn.data_ptr(), vo.data_ptr(), vcol.data_ptr(), int(not per_image), n_threads,
        )
        dev = ctx.dev
        v_bg = None
        if ctx.has_bg and ctx.needs_input_grad[4]:
            v_bg = (v_out * out_T[:, None]).sum((-1, -2)).to(dev)  # [I, D]
        return (vm.sum(0).to(dev), vcn.sum(0).to(dev), vo.sum(0).to(dev), vcol.sum(0).to(dev), v_bg,
                None, None, None, None)


class _ProjectNative(torch.autograd.Function):
    """C twin of :func:`project_gaussians` (forward and hand-written backward, Gaussian fields only)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height):
        lib = _native_lib()
        dt, dev = means.dtype, means.device
        sfx = "f32" if dt == torch.float32 else "f64"
        B, N = opacities.shape
        V = viewmats.shape[1]
        cpu = lambda t: t.detach().to("cpu", dt).contiguous()  # noqa: E731
        m, q, s, o, vm, K = (cpu(t) for t in (means, quats, scales, opacities, viewmats, Ks))
        means2d = torch.empty(B, V, N, 2, dtype=dt)
        conics = torch.empty(B, V, N, 3, dtype=dt)
        depths = torch.empty(B, V, N, dtype=dt)
        radii = torch.empty(B, V, N, 2, dtype=torch.int32)
        getattr(lib, f"project_fwd_{sfx}")(
            B, V, N, m.data_ptr(), q.data_ptr(), s.data_ptr(), o.data_ptr(), vm.data_ptr(), K.data_ptr(),
            width, height, EPS2D, NEAR_PLANE, FAR_PLANE, means2d.data_ptr(), conics.data_ptr(),
            depths.data_ptr(), radii.data_ptr(), max(1, min(torch.get_num_threads(), B * ((N + 1023) // 1024))),
        )
        ctx.save_for_backward(m, q, s, vm, K)
        ctx.size = (width, height)
        ctx.dev = dev
        ctx.mark_non_differentiable(radii)
        return means2d.to(dev), conics.to(dev), depths.to(dev), radii.to(dev)

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, v_radii):
        lib = _native_lib()
        m, q, s, vm, K = ctx.saved_tensors
        width, height = ctx.size
        dt = m.dtype
        sfx = "f32" if dt == torch.float32 else "f64"
        B, N = m.shape[:2]
        V = vm.shape[1]
        grad = lambda t, shape: (torch.zeros(shape, dtype=dt) if t is None else t.to("cpu", dt)).contiguous()  # noqa: E731
        vm2, vc = grad(v_means2d, (B, V, N, 2)), grad(v_conics, (B, V, N, 3))
        vd = None if v_depths is None else v_depths.to("cpu", dt).contiguous()
        gm, gq, gs = torch.zeros_like(m), torch.zeros_like(q), torch.zeros_like(s)
        getattr(lib, f"project_bwd_{sfx}")(
            B, V, N, m.data_ptr(), q.data_ptr(), s.data_ptr(), vm.data_ptr(), K.data_ptr(), width, height,
            EPS2D, NEAR_PLANE, FAR_PLANE, vm2.data_ptr(), vc.data_ptr(), _ptr(vd), gm.data_ptr(),
            gq.data_ptr(), gs.data_ptr(), max(1, min(torch.get_num_threads(), B * ((N + 1023) // 1024))),
        )
        dev = ctx.dev
        return gm.to(dev), gq.to(dev), gs.to(dev), None, None, None, None, None


def _project(means, quats, scales, opacities, viewmats, Ks, width, height, pure: bool) -> Projected:
    """Step 1 through the C kernel when possible, else :func:`project_gaussians` (also when cameras need grads)."""
    lib = None if pure else _native_lib()
    if lib is None or means.dtype not in (torch.float32, torch.float64) or viewmats.requires_grad or Ks.requires_grad:
        return project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    m2, con, dep, radii = _ProjectNative.apply(means, quats, scales, opacities, viewmats, Ks, width, height)
    I, N = m2.shape[0] * m2.shape[1], m2.shape[2]
    return Projected(m2.reshape(I, N, 2), con.reshape(I, N, 3), dep.reshape(I, N), radii.reshape(I, N, 2))
