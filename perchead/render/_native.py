"""Native loader: compiles ``csrc/render.c`` once, loads it through ``ctypes`` and wraps its kernels.

The C sources ship as package data and are found through :mod:`importlib.resources`, so editable and
wheel installs compile the same files; the library is cached under ``~/.cache/perchead`` (or
``$PERCHEAD_CACHE``) by a hash of the sources and flags, and parallelised with OpenMP on torch's own
thread pool. Each kernel is a ``torch.autograd.Function`` with the hand-written backward from ``csrc/``.
The float compositor runs on eight-pixel AVX2 lanes where the CPU has them, else four
(``PERCHEAD_RENDER_LANES=4`` forces four; the images are the same).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import math
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

from perchead.render import _torch_impl
from perchead.render._torch_impl import EPS2D, FAR_PLANE, NEAR_PLANE, TILE_SIZE, Projected

MAIN_SOURCE = "render.c"  # the one translation unit; it includes the other files of csrc/
REC_SIZE = 16  # values per Gaussian in the compositor's records (NREC in csrc/rasterize.h)

_LIB: ctypes.CDLL | None = None
_LIB_TRIED = False
_LIB_LOCK = threading.Lock()


def _cache_dir() -> str:
    root = os.environ.get("PERCHEAD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "perchead"
    )
    return os.path.join(root, "render_kernel")


def csrc_dir() -> Path:
    """The folder of the C sources shipped in the package (``perchead/render/csrc``)."""
    root = importlib.resources.files("perchead.render") / "csrc"
    if not isinstance(root, Path):  # pragma: no cover - zipped installs
        raise RuntimeError(f"perchead.render C sources are not on the file system ({root})")
    return root


def _compile(flags: list[str], path: str) -> None:
    """Compiles ``csrc/render.c`` into the shared library ``path``, with OpenMP when the compiler has it.

    The compiler reads the package's own files, so its messages name ``csrc/*.c`` / ``*.h`` lines. With
    OpenMP the library binds to the ``libgomp.so.1`` that torch has already loaded, so the kernel shares
    torch's thread pool (``torch.set_num_threads``) instead of competing with it.
    """
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (cc/gcc/clang)")
    src = csrc_dir()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        so_file = os.path.join(tmp, "render.so")
        cmd = [cc, *flags, f"-I{src}", str(src / MAIN_SOURCE), "-o", so_file, "-lm"]
        try:
            subprocess.run(cmd[:1] + ["-fopenmp"] + cmd[1:], check=True, capture_output=True, timeout=300)
        except subprocess.CalledProcessError:  # no OpenMP: single-threaded kernel
            subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        os.replace(so_file, path)  # atomic: concurrent builders are harmless


def library() -> ctypes.CDLL | None:
    """Builds (once, cached on disk by source hash) and loads the C kernels; None if unavailable.

    Set ``PERCHEAD_RENDER_NATIVE=0`` to force the pure-PyTorch twin.
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
        # -std=c99 keeps floating-point contraction off, so forward and backward make identical decisions.
        flags = ["-O3", "-shared", "-fPIC", "-std=c99", "-fno-math-errno", f"-DTS={TILE_SIZE}"]
        try:
            digest = hashlib.sha256(" ".join(flags).encode())
            for f in sorted(csrc_dir().iterdir()):
                if f.suffix in (".c", ".h"):
                    digest.update(f.name.encode() + f.read_bytes())
            path = os.path.join(_cache_dir(), f"perchead_render_{digest.hexdigest()[:16]}.so")
            if not os.path.exists(path):
                _compile(flags, path)
            lib = ctypes.CDLL(path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            msg = e.stderr.decode(errors="replace")[-2000:] if isinstance(e, subprocess.CalledProcessError) else str(e)
            warnings.warn(f"perchead.render: C kernel unavailable, using the slower pure-PyTorch compositor ({msg})")
            return None
        P, i32 = ctypes.c_void_p, ctypes.c_int
        lib.bin_fill.argtypes = [i32] * 4 + [P] * 5 + [i32]
        for sfx, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            getattr(lib, f"bin_count_{sfx}").argtypes = [i32] * 4 + [P] * 7 + [i32]
            getattr(lib, f"rasterize_fwd_{sfx}").argtypes = [i32] * 7 + [P] * 11 + [i32, i32]
            getattr(lib, f"rasterize_bwd_{sfx}").argtypes = [i32] * 7 + [P] * 10 + [i32] + [P] * 4 + [i32] * 3
            getattr(lib, f"project_fwd_{sfx}").argtypes = [i32] * 3 + [P] * 6 + [i32] * 2 + [real] * 3 + [P] * 4 + [i32]
            getattr(lib, f"project_bwd_{sfx}").argtypes = [i32] * 3 + [P] * 5 + [i32] * 2 + [real] * 3 + [P] * 6 + [i32]
        _LIB = lib
        return _LIB


@torch.no_grad()
def bin_tiles(proj: Projected, width: int, height: int) -> tuple[Tensor, Tensor]:
    """C twin of :func:`perchead.render._torch_impl.bin_tiles`: tile rectangles, a stable radix sort by depth
    and a counting sort into tiles (same outputs)."""
    dt = proj.means2d.dtype
    if dt not in (torch.float32, torch.float64):
        return _torch_impl.bin_tiles(proj, width, height)
    lib = library()
    sfx = "f32" if dt == torch.float32 else "f64"
    I, N = proj.depths.shape
    tw, th = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    device = proj.means2d.device
    m2 = proj.means2d.detach().cpu().contiguous()  # [I, N, 2]
    radii = proj.radii.cpu().to(torch.int32).contiguous()  # [I, N, 2]
    depths = proj.depths.detach().cpu().to(dt).contiguous()  # [I, N]
    rects = torch.empty(I, N, 4, dtype=torch.int32)
    order = torch.empty(I, N, dtype=torch.int32)
    nvalid = torch.empty(I, dtype=torch.int32)
    offsets = torch.empty(I * tw * th + 1, dtype=torch.int64)
    n_threads = max(1, min(torch.get_num_threads(), I))
    getattr(lib, f"bin_count_{sfx}")(I, N, tw, th, m2.data_ptr(), radii.data_ptr(), depths.data_ptr(), rects.data_ptr(),
                                     order.data_ptr(), nvalid.data_ptr(), offsets.data_ptr(), n_threads)
    ids = torch.empty(int(offsets[-1]), dtype=torch.int32)
    lib.bin_fill(I, N, tw, th, rects.data_ptr(), order.data_ptr(), nvalid.data_ptr(), offsets.data_ptr(),
                 ids.data_ptr(), n_threads)
    return offsets.to(device), ids.to(device)


def _lanes() -> int:
    """Pixels per vector lane group of the float compositor: 8 (AVX2 where the CPU has it, else 4) unless
    ``PERCHEAD_RENDER_LANES=4``; both give the same images."""
    return 4 if os.environ.get("PERCHEAD_RENDER_LANES") == "4" else 8


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class RasterizeNative(torch.autograd.Function):
    """C compositor (forward) with the matching hand-written backward."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, background, offsets, ids, width, height):
        lib = library()
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
        rec = torch.empty(I, N, REC_SIZE, dtype=dt)  # per-Gaussian constants of the compositor, for the backward
        n_threads = max(1, min(torch.get_num_threads(), I * tw * th))
        getattr(lib, f"rasterize_fwd_{sfx}")(
            I, N, D, width, height, tw, th, offsets.data_ptr(), ids.data_ptr(), m.data_ptr(), c.data_ptr(),
            o.data_ptr(), col.data_ptr(), _ptr(bg), out.data_ptr(), out_T.data_ptr(), last.data_ptr(),
            rec.data_ptr(), _lanes(), n_threads,
        )
        ctx.save_for_backward(rec, col, bg, offsets, ids, out_T, last)
        ctx.size = (width, height)
        ctx.dev = dev
        ctx.has_bg = background is not None
        alpha = (1 - out_T).unsqueeze(1)  # [I, 1, H, W]
        return out.to(dev), alpha.to(dev)

    @staticmethod
    def backward(ctx, v_out, v_alpha):
        lib = library()
        rec, col, bg, offsets, ids, out_T, last = ctx.saved_tensors
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
        gs = 16 if D <= 10 else 6 + D  # gradient record: one 64-byte line per Gaussian for up to 10 channels
        grad = torch.empty(n_buf, I, N, gs, dtype=dt)  # scratch, zeroed by the kernel
        vm = torch.empty(I, N, 2, dtype=dt)
        vcn = torch.empty(I, N, 3, dtype=dt)
        vo = torch.empty(I, N, dtype=dt)
        vcol = torch.empty(I, N, D, dtype=dt)
        getattr(lib, f"rasterize_bwd_{sfx}")(
            I, N, D, width, height, tw, th, offsets.data_ptr(), ids.data_ptr(), rec.data_ptr(), col.data_ptr(),
            _ptr(bg), out_T.data_ptr(), last.data_ptr(), v_out.data_ptr(), _ptr(v_alpha), grad.data_ptr(), gs,
            vm.data_ptr(), vcn.data_ptr(), vo.data_ptr(), vcol.data_ptr(), int(not per_image), _lanes(), n_threads,
        )
        dev = ctx.dev
        v_bg = None
        if ctx.has_bg and ctx.needs_input_grad[4]:
            v_bg = (v_out * out_T[:, None]).sum((-1, -2)).to(dev)  # [I, D]
        return vm.to(dev), vcn.to(dev), vo.to(dev), vcol.to(dev), v_bg, None, None, None, None


class ProjectNative(torch.autograd.Function):
    """C twin of :func:`perchead.render._torch_impl.project_gaussians` (forward and hand-written backward,
    gradients for the Gaussian fields only)."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height):
        lib = library()
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
        lib = library()
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


def project(means, quats, scales, opacities, viewmats, Ks, width, height) -> Projected:
    """C twin of :func:`perchead.render._torch_impl.project_gaussians` with gsplat's default planes."""
    m2, con, dep, radii = ProjectNative.apply(means, quats, scales, opacities, viewmats, Ks, width, height)
    I, N = m2.shape[0] * m2.shape[1], m2.shape[2]  # [B, V, N, ...] → [I, N, ...]
    return Projected(m2.reshape(I, N, 2), con.reshape(I, N, 3), dep.reshape(I, N), radii.reshape(I, N, 2))
