"""Differentiable Gaussian splatting: gsplat on CUDA, our own EWA splatter on CPU (paper §3.3, Fig. 2).

PercHead renders its 65,536 predicted Gaussians with a differentiable rasteriser before the refiner CNN
and the perceptual losses. :func:`render` is the one entry point. On CUDA it calls
``gsplat.rasterization`` (classic mode); gsplat has no CPU path, so the ``"torch"`` backend re-implements
that mode: (1) EWA projection with gsplat's FOV clamp, low-pass and opacity-aware radii, (2) depth sort
and 16 × 16 tile binning, (3) front-to-back compositing with gsplat's alpha and transmittance rules.
Steps 1-3 run in C kernels (``csrc/``, loaded by :mod:`perchead.render._native`) with hand-written
backwards; :mod:`perchead.render._torch_impl` is their pure-PyTorch twin (autograd), used without a
compiler or with ``backend="torch-pure"``, and its :func:`render_reference` is the dense twin the tests
hold both against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from perchead.geometry.gaussians import Gaussians
from perchead.render import _native, _torch_impl
from perchead.render._torch_impl import (ALPHA_MAX, ALPHA_MIN, EPS2D, EXTEND, FAR_PLANE, NEAR_PLANE, T_MIN, TILE_SIZE,
                                         Projected, project_gaussians, render_reference)

__all__ = [
    "ALPHA_MAX", "ALPHA_MIN", "BACKENDS", "EPS2D", "EXTEND", "FAR_PLANE", "NEAR_PLANE", "T_MIN", "TILE_SIZE",
    "Projected", "RenderOutput", "bin_tiles", "project_gaussians", "rasterize", "render", "render_reference",
]

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
    args = (proj.means2d, proj.conics, opacities, colors, background, offsets, ids, width, height)
    if not pure and colors.dtype in (torch.float32, torch.float64) and _native.library() is not None:
        return _native.RasterizeNative.apply(*args)
    return _torch_impl.rasterize(*args)


def bin_tiles(proj: Projected, width: int, height: int) -> tuple[Tensor, Tensor]:
    """Per 16 × 16 tile, the Gaussians that touch it, front to back (step 2): the C counting sort, or its
    twin :func:`perchead.render._torch_impl.bin_tiles` (same outputs, documented there)."""
    if _native.library() is not None:
        return _native.bin_tiles(proj, width, height)
    return _torch_impl.bin_tiles(proj, width, height)


def _project(means, quats, scales, opacities, viewmats, Ks, width, height, pure: bool) -> Projected:
    """Step 1 through the C kernel when possible, else :func:`project_gaussians` (also when cameras need grads)."""
    cameras_need_grads = viewmats.requires_grad or Ks.requires_grad
    native = not pure and means.dtype in (torch.float32, torch.float64) and not cameras_need_grads
    if native and _native.library() is not None:
        return _native.project(means, quats, scales, opacities, viewmats, Ks, width, height)
    return project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)


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
    f32 = torch.float32  # gsplat's kernels take float32 only, also under a bf16 autocast
    with torch.autocast("cuda", enabled=False):
        out, alpha, _ = rasterization(
            g.means.to(f32), g.quats.to(f32), g.scales.to(f32), g.opacities.to(f32), colors.to(f32),
            viewmats.to(f32), Ks.to(f32), width, height,
            near_plane=NEAR_PLANE, far_plane=FAR_PLANE, eps2d=EPS2D, packed=False, tile_size=TILE_SIZE,
            backgrounds=None if backgrounds is None else backgrounds.to(f32),
            render_mode="RGB+D" if return_depth else "RGB", rasterize_mode="classic",
        )  # [B, V, H, W, D], [B, V, H, W, 1]
    out = out.permute(0, 1, 4, 2, 3)  # [B, V, D, H, W]
    return RenderOutput(
        rgb=out[:, :, :3],
        alpha=alpha.permute(0, 1, 4, 2, 3),
        depth=out[:, :, D0 : D0 + 1] if return_depth else None,
        features=out[:, :, 3:D0] if features is not None else None,
    )

