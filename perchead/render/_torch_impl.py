"""Pure-PyTorch twin of the CPU renderer: projection, tile binning, compositing and a dense reference.

Every function here follows gsplat's classic mode and is differentiable through autograd. The C kernels
in ``csrc/`` (loaded by :mod:`perchead.render._native`) compute the same numbers faster; the tests hold
them together, and :func:`render_reference` (dense, no tiles) holds both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from perchead.geometry.gaussians import Gaussians, quaternion_to_matrix

TILE_SIZE = 16  # pixels per tile side, as gsplat
ALPHA_MIN = 1.0 / 255.0  # gsplat ALPHA_THRESHOLD: contributions below are skipped
ALPHA_MAX = 0.999  # gsplat 1.5's clamp on a single Gaussian's alpha
T_MIN = 1e-4  # compositing stops before transmittance would drop to this
EPS2D = 0.3  # low-pass filter added to the 2D covariance diagonal (px²)
NEAR_PLANE = 0.01  # metres, gsplat's default
FAR_PLANE = 1e10
EXTEND = 3.33  # bounding-box half-size in standard deviations (capped by opacity, as gsplat)


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
    R = quaternion_to_matrix(quats)[:, None]  # [B, 1, N, 3, 3]
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


@torch.no_grad()
def tile_rects(proj: Projected, width: int, height: int) -> tuple[Tensor, Tensor, int, int]:
    """Tile rectangle of every projected Gaussian and the front-to-back order (input of tile binning).

    Args:
        proj: projected Gaussians for I images.
        width: image width.
        height: image height.

    Returns:
        (rects ``[I, N, 4]`` int32 tile bounds x0, y0, x1, y1 (empty when culled), order ``[I, N]`` int64
        Gaussian indices by depth, tiles across, tiles down).
    """
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
    return rects, order, tw, th


@torch.no_grad()
def bin_tiles(proj: Projected, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Lists, per tile, the Gaussians whose bounding box touches it, front to back (PyTorch ops).

    Each Gaussian is expanded to its rectangle's tiles, then sorted by (image, tile, depth rank).

    Args:
        proj: projected Gaussians for I images.
        width: image width.
        height: image height.

    Returns:
        (offsets ``[I·tiles + 1]`` int64 into ids, ids ``[n_isect]`` int32 Gaussian indices); tile ``t`` of
        image ``i`` owns ``ids[offsets[i·tiles + t] : offsets[i·tiles + t + 1]]``, sorted by depth.
    """
    rects, order, tw, th = tile_rects(proj, width, height)
    I, N = order.shape
    device = order.device
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=order.device).expand(I, N))
    w_ = (rects[..., 2] - rects[..., 0]).clamp(min=0).reshape(-1).long()  # [I·N]
    h_ = (rects[..., 3] - rects[..., 1]).clamp(min=0).reshape(-1).long()
    cnt = w_ * h_
    src = torch.repeat_interleave(torch.arange(I * N, device=device), cnt)  # [n_isect]
    start = torch.cumsum(cnt, 0) - cnt
    k = torch.arange(src.numel(), device=device) - start[src]  # position inside the rectangle
    flat = rects.reshape(-1, 4).long()
    tx = flat[src, 0] + k % w_[src].clamp(min=1)
    ty = flat[src, 1] + k // w_[src].clamp(min=1)
    img = src // N
    tile = img * (tw * th) + ty * tw + tx
    key = tile * N + rank.reshape(-1)[src]
    key, perm = torch.sort(key)
    ids = (src[perm] % N).to(torch.int32)
    counts = torch.bincount(tile, minlength=I * tw * th)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(counts, 0)])
    return offsets, ids


def rasterize(means2d, conics, opacities, colors, background, offsets, ids, width, height, chunk: int = 32):
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
