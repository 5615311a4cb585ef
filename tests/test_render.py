"""Tests for perchead.render: the CPU splatter against a dense brute-force twin, gradients, edge cases, shapes."""

import os

import pytest
import torch

from perchead import render as R
from perchead.geometry.cameras import orbit_cameras
from perchead.geometry.gaussians import Gaussians

CPU_BACKENDS = ["torch", "torch-pure"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only add barrier waits on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_scene(n: int, seed: int = 0, dtype=torch.float64, spread: float = 0.12, size: float = 0.02) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) - 0.5) * spread
    quats = torch.randn(n, 4, generator=gen)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    scales = torch.rand(n, 3, generator=gen) * size + 0.003
    opacities = torch.rand(n, generator=gen) * 0.97 + 0.02
    colors = torch.rand(n, 3, generator=gen)
    return Gaussians(means, quats, scales, opacities, colors).to(dtype)


def one_gaussian(mean=(0.0, 0.0, 0.0), scale=0.01, opacity=0.9, dtype=torch.float64) -> Gaussians:
    return Gaussians(
        torch.tensor([mean], dtype=dtype),
        torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=dtype),
        torch.full((1, 3), scale, dtype=dtype),
        torch.tensor([opacity], dtype=dtype),
        torch.tensor([[0.2, 0.6, 1.0]], dtype=dtype),
    )


CAMS = orbit_cameras([0.0, 70.0, 200.0], [10.0, -25.0, 40.0], radius=0.7, fov_deg=30.0, size=(40, 28))


# ------------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_matches_dense_reference(backend, dtype, tol):
    g = random_scene(80, dtype=dtype, size=0.03)  # dense: many pixels hit the transmittance limit
    feats = torch.rand(80, 2, dtype=dtype)
    bg = torch.tensor([1.0, 0.5, 0.25], dtype=dtype)
    out = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=bg, backend=backend, features=feats)
    saturated = 0
    for v in range(len(CAMS)):
        ref, ref_alpha = R.render_reference(g, CAMS.viewmats[v].to(dtype), CAMS.Ks[v].to(dtype), 40, 28, bg, feats)
        torch.testing.assert_close(out.rgb[0, v], ref[:3], atol=tol, rtol=0)
        torch.testing.assert_close(out.features[0, v], ref[3:], atol=tol, rtol=0)
        torch.testing.assert_close(out.alpha[0, v], ref_alpha, atol=tol, rtol=0)
        saturated += int((ref_alpha > 0.99).sum())
    assert saturated > 100, "scene should be dense enough to exercise early termination (T <= 1e-4)"


def test_pure_and_native_binning_agree(monkeypatch):
    g = random_scene(50, seed=3).batched()
    vm, K = CAMS.viewmats[None].double(), CAMS.Ks[None].double()
    proj = R.project_gaussians(g.means, g.quats, g.scales, g.opacities, vm, K, 40, 28)
    if R._native.library() is None:
        pytest.skip("C compiler unavailable: only the pure-PyTorch path exists")
    off_c, ids_c = R.bin_tiles(proj, 40, 28)
    monkeypatch.setattr(R._native, "library", lambda: None)
    off_p, ids_p = R.bin_tiles(proj, 40, 28)
    assert torch.equal(off_c, off_p) and torch.equal(ids_c, ids_p)
    assert ids_c.numel() > 50


def test_native_projection_matches_pytorch_twin():
    """The C projection equals project_gaussians (values, radii, gradients), culled entries included."""
    if R._native.library() is None:
        pytest.skip("C compiler unavailable")
    g = Gaussians.stack([random_scene(50, seed=s) for s in (1, 2)])
    g.quats = g.quats * 1.3  # unnormalised quaternions are normalised by both
    g.means[0, :3] = torch.tensor([[0.0, 0.0, 0.71], [0.5, 0.0, 0.0], [0.05, 0.02, 0.3]], dtype=torch.float64)
    vm = CAMS.viewmats[None].expand(2, 3, 4, 4).double()
    K = CAMS.Ks[None].expand(2, 3, 3, 3).double()
    results = []
    for pure in (True, False):
        ins = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales)]
        p = R._project(*ins, g.opacities, vm, K, 40, 28, pure=pure)
        valid = (p.radii > 0).all(-1)
        gen = torch.Generator().manual_seed(0)
        w = [torch.randn(p.means2d.shape, generator=gen, dtype=torch.float64),
             torch.randn(p.conics.shape, generator=gen, dtype=torch.float64),
             torch.randn(p.depths.shape, generator=gen, dtype=torch.float64)]
        loss = (p.means2d * w[0])[valid].sum() + (p.conics * w[1])[valid].sum() + (p.depths * w[2])[valid].sum()
        results.append((p, valid, torch.autograd.grad(loss, ins)))
    (pt, vt, gt), (pc, vc, gc) = results
    assert torch.equal(pt.radii, pc.radii) and 0 < int(vt.sum()) < vt.numel()
    for name in ("means2d", "conics", "depths"):
        torch.testing.assert_close(getattr(pc, name)[vt], getattr(pt, name)[vt], atol=1e-10, rtol=1e-10)
    for a, b in zip(gc, gt):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_fallbacks_without_compiler_and_with_camera_gradients(monkeypatch):
    g = random_scene(40, dtype=torch.float32)
    native = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=1.0)
    vm = CAMS.viewmats.clone().requires_grad_()  # camera gradients: the PyTorch projection takes over
    out = R.render(g, vm, CAMS.Ks, 40, 28, background=1.0)
    out.rgb.sum().backward()
    assert vm.grad is not None and vm.grad.abs().sum() > 0
    torch.testing.assert_close(out.rgb, native.rgb, atol=1e-5, rtol=0)
    monkeypatch.setattr(R._native, "library", lambda: None)  # no C compiler on this machine
    fallback = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=1.0)
    torch.testing.assert_close(fallback.rgb, native.rgb, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ gradients
def _loss_fn(backend, cams, size, weights):
    def f(means, quats, scales, opacities, colors, features, background):
        g = Gaussians(means, quats, scales, opacities, colors)
        out = R.render(g, cams.viewmats, cams.Ks, *size, background=background, backend=backend,
                       features=features, return_depth=True)
        full = torch.cat([out.rgb, out.features, out.depth, out.alpha], dim=2)
        return (full * weights).sum()

    return f


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_finite_difference_gradients(backend):
    g = random_scene(10, seed=1, spread=0.08, size=0.02)
    cams = orbit_cameras([0.0, 30.0], [0.0, 15.0], radius=0.7, size=(20, 16))
    feats = torch.rand(10, 2, dtype=torch.float64)
    bg = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    weights = torch.rand(1, 2, 3 + 2 + 1 + 1, 16, 20, dtype=torch.float64)
    inputs = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.colors, feats, bg)]
    f = _loss_fn(backend, cams, (20, 16), weights)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_native_backward_matches_autograd():
    """The C kernel's hand-written backward equals autograd through the pure-PyTorch compositor,
    for one image (per-thread gradient buffers) and for B × V images (per-image work units)."""
    if R._native.library() is None:
        pytest.skip("C compiler unavailable")
    g = Gaussians.stack([random_scene(60, seed=s, size=0.03) for s in (4, 5)])
    feats = torch.rand(2, 60, 3, dtype=torch.float64)
    bg = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for cams, B in ((CAMS[0], 1), (CAMS, 2)):
            gg = g[:B] if B > 1 else g[0]
            grads = {}
            for backend in CPU_BACKENDS:
                inputs = [t.clone().requires_grad_() for t in (gg.means, gg.quats, gg.scales, gg.opacities, gg.colors)]
                f = feats[:B].clone().requires_grad_() if B > 1 else feats[0].clone().requires_grad_()
                out = R.render(Gaussians(*inputs), cams.viewmats, cams.Ks, 40, 28, background=bg, backend=backend,
                               features=f, return_depth=True)
                w = torch.linspace(-1, 1, out.rgb.numel(), dtype=torch.float64).reshape(out.rgb.shape)
                loss = (out.rgb * w).sum() + out.alpha.sum() + out.features.square().sum() + out.depth.sum()
                grads[backend] = torch.autograd.grad(loss, inputs + [f])
            for a, b in zip(grads["torch"], grads["torch-pure"]):
                torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
                assert b.abs().sum() > 0
    finally:
        torch.set_num_threads(threads)


def _float_render_grads(g, cams, size, feats=None):
    inputs = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.colors)]
    out = R.render(Gaussians(*inputs), cams.viewmats, cams.Ks, *size, background=1.0, features=feats,
                   return_depth=True)
    w = torch.linspace(-1, 1, out.rgb.numel()).reshape(out.rgb.shape)
    loss = (out.rgb * w).sum() + out.alpha.sum() + out.depth.sum()
    return out, torch.autograd.grad(loss, inputs)


def test_float_kernel_matches_pytorch_twin_on_a_dense_scene():
    """float32: the C compositor (vector lanes, polynomial exp, early termination, tight spans) against
    autograd through the pure-PyTorch twin on a scene dense enough that most pixels saturate."""
    if R._native.library() is None:
        pytest.skip("C compiler unavailable")
    g = random_scene(400, seed=11, dtype=torch.float32, size=0.03)
    cams = orbit_cameras([15.0, 200.0], [5.0, -20.0], radius=0.7, fov_deg=30.0, size=(72, 56))
    torch.set_num_threads(2)  # per-thread gradient slices, summed by the kernel
    results = {}
    for backend in CPU_BACKENDS:
        inputs = [t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.colors)]
        out = R.render(Gaussians(*inputs), cams.viewmats, cams.Ks, 72, 56, background=1.0, backend=backend)
        w = torch.linspace(-1, 1, out.rgb.numel()).reshape(out.rgb.shape)
        results[backend] = (out, torch.autograd.grad((out.rgb * w).sum() + out.alpha.sum(), inputs))
    (out_c, grads_c), (out_p, grads_p) = results["torch"], results["torch-pure"]
    assert (out_p.alpha > 0.999).float().mean() > 0.15, "many pixels should come near the transmittance limit"
    torch.testing.assert_close(out_c.rgb, out_p.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_c.alpha, out_p.alpha, atol=1e-5, rtol=0)
    for a, b in zip(grads_c, grads_p):
        assert (a - b).abs().max() <= 1e-3 * b.abs().max(), float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("batch", [1, 3])
def test_float_lane_widths_agree(monkeypatch, batch):
    """Four-pixel lanes (PERCHEAD_RENDER_LANES=4) and the default eight (AVX2 where the CPU has it) run the
    same per-pixel arithmetic: identical images, gradients equal up to the order of their sums."""
    if R._native.library() is None:
        pytest.skip("C compiler unavailable")
    g = Gaussians.stack([random_scene(300, seed=s, dtype=torch.float32, size=0.03) for s in range(batch)])
    cams = orbit_cameras([0.0, 70.0], [10.0, -25.0], radius=0.7, fov_deg=30.0, size=(60, 44))
    feats = torch.rand(batch, 300, 2)
    torch.set_num_threads(2)
    runs = []
    for lanes in ("4", "8"):
        monkeypatch.setenv("PERCHEAD_RENDER_LANES", lanes)
        runs.append(_float_render_grads(g, cams, (60, 44), feats))
    (out4, grads4), (out8, grads8) = runs
    assert torch.equal(out4.rgb, out8.rgb) and torch.equal(out4.alpha, out8.alpha)
    assert torch.equal(out4.features, out8.features) and torch.equal(out4.depth, out8.depth)
    for a, b in zip(grads4, grads8):
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=0)


def test_native_binning_float32_keeps_equal_depths_in_index_order(monkeypatch):
    """The C binning's radix sort is stable, as torch.argsort(stable=True): Gaussians at equal depths stay
    in index order (float32 depths; duplicated Gaussians give exact ties)."""
    if R._native.library() is None:
        pytest.skip("C compiler unavailable")
    g = random_scene(40, seed=9, dtype=torch.float32)
    g = Gaussians(*(torch.cat([t, t]) for t in (g.means, g.quats, g.scales, g.opacities, g.colors))).batched()
    vm, K = CAMS.viewmats[None], CAMS.Ks[None]
    proj = R.project_gaussians(g.means, g.quats, g.scales, g.opacities, vm, K, 40, 28)
    off_c, ids_c = R.bin_tiles(proj, 40, 28)
    monkeypatch.setattr(R._native, "library", lambda: None)
    off_p, ids_p = R.bin_tiles(proj, 40, 28)
    assert torch.equal(off_c, off_p) and torch.equal(ids_c, ids_p)
    assert ids_c.numel() > 80


# ---------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_behind_camera_and_off_screen_are_culled(backend):
    cams = orbit_cameras([0.0], 0.0, radius=0.7, size=32)  # camera at z = +0.7 looking toward -z
    visible = one_gaussian((0.0, 0.0, 0.0))
    behind = one_gaussian((0.0, 0.0, 1.4))  # 0.7 m behind the camera, on the optical axis
    at_eye = one_gaussian((0.0, 0.0, 0.695))  # closer than the near plane
    off_screen = one_gaussian((0.5, 0.0, 0.0))  # far outside the 30° field of view
    ref = R.render(visible, cams.viewmats, cams.Ks, 32, 32, backend=backend)
    scene = Gaussians.cat([visible, behind, at_eye, off_screen])
    params = [t.clone().requires_grad_() for t in (scene.means, scene.quats, scene.scales, scene.opacities, scene.colors)]
    out = R.render(Gaussians(*params), cams.viewmats, cams.Ks, 32, 32, backend=backend, return_depth=True)
    torch.testing.assert_close(out.rgb, ref.rgb)
    torch.testing.assert_close(out.alpha, ref.alpha)
    (out.rgb.sum() + out.depth.sum()).backward()
    for p in params:
        assert torch.isfinite(p.grad).all()
        assert p.grad[1:].abs().max() == 0  # culled Gaussians get exactly zero gradient
    assert params[0].grad[0].abs().sum() > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_partly_off_screen_gaussian_matches_reference(backend):
    cams = orbit_cameras([0.0], 0.0, radius=0.7, size=32)
    g = one_gaussian((0.094, 0.03, 0.0), scale=0.01)  # centre just outside the right edge, tail inside
    out = R.render(g, cams.viewmats, cams.Ks, 32, 32, backend=backend)
    ref, ref_alpha = R.render_reference(g, cams.viewmats[0], cams.Ks[0].double(), 32, 32)
    assert ref_alpha.max() > 0.01
    torch.testing.assert_close(out.alpha[0, 0], ref_alpha, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.rgb[0, 0], ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_and_transparent_scenes(backend):
    empty = Gaussians(torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3))
    out = R.render(empty, CAMS.viewmats, CAMS.Ks, 40, 28, background=1.0, backend=backend,
                   features=torch.zeros(0, 5), return_depth=True)
    assert out.rgb.shape == (1, 3, 3, 28, 40) and out.features.shape == (1, 3, 5, 28, 40)
    assert torch.all(out.rgb == 1) and torch.all(out.alpha == 0) and torch.all(out.depth == 0)
    g = random_scene(30, dtype=torch.float32)
    g.opacities = torch.full_like(g.opacities, 1e-3)  # below 1/255 everywhere: invisible, as gsplat
    out = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=torch.tensor([0.1, 0.2, 0.3]), backend=backend)
    assert torch.all(out.alpha == 0)
    torch.testing.assert_close(out.rgb, torch.tensor([0.1, 0.2, 0.3])[:, None, None].expand(1, 3, 3, 28, 40))


# ----------------------------------------------------------------------------- shapes, channels
def test_batch_and_view_shapes():
    g = Gaussians.stack([random_scene(40, seed=s, dtype=torch.float32) for s in (0, 1)])  # B = 2
    shared = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28)
    assert shared.rgb.shape == (2, 3, 3, 28, 40) and shared.alpha.shape == (2, 3, 1, 28, 40)
    assert shared.depth is None and shared.features is None
    # per-item cameras [B, V, 4, 4]: item 1 gets the views in reverse order
    vm = torch.stack([CAMS.viewmats, CAMS.viewmats.flip(0)])
    Ks = torch.stack([CAMS.Ks, CAMS.Ks.flip(0)])
    per_item = R.render(g, vm, Ks, 40, 28, return_depth=True)
    torch.testing.assert_close(per_item.rgb[0], shared.rgb[0])
    torch.testing.assert_close(per_item.rgb[1], shared.rgb[1].flip(0))
    # each image equals the unbatched single-view render
    single = R.render(g[1], CAMS.viewmats[2:3], CAMS.Ks[2:3], 40, 28, return_depth=True)
    assert single.rgb.shape == (1, 1, 3, 28, 40)
    torch.testing.assert_close(per_item.rgb[1, 0], single.rgb[0, 0])
    torch.testing.assert_close(per_item.depth[1, 0], single.depth[0, 0])
    with pytest.raises(ValueError, match="viewmats"):
        R.render(g, CAMS.viewmats[:, :3], CAMS.Ks, 40, 28)
    with pytest.raises(ValueError, match="Ks"):
        R.render(g, CAMS.viewmats, CAMS.Ks[:2], 40, 28)
    with pytest.raises(ValueError, match="viewmats"):
        R.render(g, torch.stack([CAMS.viewmats] * 3), CAMS.Ks, 40, 28)  # B = 3 != 2
    with pytest.raises(ValueError, match="backend"):
        R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, backend="opengl")
    with pytest.raises(ValueError, match="features"):
        R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, features=torch.zeros(2, 39, 4))
    with pytest.raises(ValueError, match="CUDA"):
        R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, backend="gsplat")


def test_background_modes():
    g = random_scene(40, dtype=torch.float32)
    black = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28)
    white = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=1.0)
    torch.testing.assert_close(white.rgb, black.rgb + (1 - black.alpha))
    per_image = torch.rand(1, 3, 3)
    out = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=per_image)
    torch.testing.assert_close(out.rgb, black.rgb + (1 - black.alpha) * per_image[..., None, None])
    assert 0.05 < float(black.alpha.mean()) < 0.95
    with pytest.raises(ValueError, match="background"):
        R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=torch.ones(4))


def test_feature_channels_and_depth():
    g = random_scene(60, dtype=torch.float32)
    labels = torch.randint(0, 19, (60,))
    onehot = torch.nn.functional.one_hot(labels, 19).float()  # [N, 19] segmentation classes
    out = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, background=1.0, features=onehot, return_depth=True)
    assert out.features.shape == (1, 3, 19, 28, 40)
    torch.testing.assert_close(out.features.sum(2, keepdim=True), out.alpha)  # one-hot weights sum to alpha
    as_feat = R.render(g, CAMS.viewmats, CAMS.Ks, 40, 28, features=g.colors)
    torch.testing.assert_close(as_feat.features, as_feat.rgb)  # features composite like colours, over 0
    # depth of one Gaussian at the orbit centre: expected depth = camera radius
    one = one_gaussian(scale=0.005, opacity=0.99, dtype=torch.float32)
    cams = orbit_cameras([0.0, 123.0], [0.0, -33.0], radius=0.7, size=32)
    d = R.render(one, cams.viewmats, cams.Ks, 32, 32, return_depth=True)
    expected = d.depth / d.alpha.clamp(min=1e-10)
    covered = d.alpha > 0.01
    torch.testing.assert_close(expected[covered], torch.full_like(expected[covered], 0.7), atol=1e-4, rtol=0)


def test_origin_lands_at_image_centre():
    cams = orbit_cameras([0.0, 90.0, -45.0, 180.0], [0.0, 30.0, -20.0, 60.0], radius=0.7, fov_deg=30.0, size=(48, 32))
    one = one_gaussian(scale=0.004, opacity=0.95, dtype=torch.float32)
    out = R.render(one, cams.viewmats, cams.Ks, 48, 32)
    a = out.alpha[0, :, 0]  # [V, H, W]
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(48) + 0.5, indexing="ij")
    total = a.sum((-1, -2))
    cx = (a * xs).sum((-1, -2)) / total
    cy = (a * ys).sum((-1, -2)) / total
    torch.testing.assert_close(cx, torch.full_like(cx, 24.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(cy, torch.full_like(cy, 16.0), atol=1e-3, rtol=0)
    assert torch.all(a[:, 15:17, 23:25] > 0.5)


def test_large_scene_runs_in_bounded_memory():
    """A few thousand Gaussians at 128² go through forward and backward on both CPU compositors."""
    g = random_scene(3000, seed=7, dtype=torch.float32, spread=0.2, size=0.006)
    cams = orbit_cameras([10.0], 5.0, size=128)
    results = []
    for backend in CPU_BACKENDS:
        means = g.means.clone().requires_grad_()
        out = R.render(Gaussians(means, g.quats, g.scales, g.opacities, g.colors), cams.viewmats, cams.Ks, 128, 128,
                       background=1.0, backend=backend)
        out.rgb.mean().backward()
        results.append((out.rgb.detach(), means.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-3)


def test_backward_is_the_same_on_every_run():
    """One image on 2 threads (per-thread gradient buffers): the gradients are bit-identical run after run, as
    each thread takes a fixed share of the tiles rather than whichever comes free."""
    g = random_scene(3000, seed=5, dtype=torch.float32, spread=0.2, size=0.02)
    cams = orbit_cameras([20.0], [10.0], size=(128, 128))
    torch.set_num_threads(2)  # restored by the module's thread fixture
    grads = []
    for _ in range(4):
        means = g.means.clone().requires_grad_(True)
        colors = g.colors.clone().requires_grad_(True)
        out = R.render(Gaussians(means, g.quats, g.scales, g.opacities, colors), cams.viewmats, cams.Ks, 128, 128,
                       background=1.0, backend="torch")
        (out.rgb * torch.linspace(0, 1, 128)).sum().backward()
        grads.append((means.grad, colors.grad))
    assert grads[0][0].abs().sum() > 0
    for gm, gc in grads[1:]:
        assert torch.equal(gm, grads[0][0]) and torch.equal(gc, grads[0][1])


# -------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for gsplat")
def test_gsplat_parity():
    """torch backend vs gsplat: within 1e-3 mean absolute error per pixel (rgb, alpha, depth, features)."""
    g = random_scene(400, seed=11, dtype=torch.float32, spread=0.2, size=0.015)
    feats = torch.rand(400, 4)
    cams = orbit_cameras([0.0, 60.0, 150.0, 270.0], [0.0, 20.0, -15.0, 45.0], size=(96, 64))
    kw = dict(background=torch.tensor([1.0, 0.9, 0.8]), features=feats, return_depth=True)
    cpu = R.render(g, cams.viewmats, cams.Ks, 96, 64, backend="torch", **kw)
    gpu = R.render(g.to("cuda"), cams.viewmats.cuda(), cams.Ks.cuda(), 96, 64, backend="gsplat",
                   background=kw["background"].cuda(), features=feats.cuda(), return_depth=True)
    for name in ("rgb", "alpha", "features", "depth"):
        a, b = getattr(cpu, name), getattr(gpu, name).cpu()
        assert a.shape == b.shape, name
        err = (a - b).abs().mean().item()
        assert err < 1e-3, f"{name}: mean abs error {err}"
    assert float(cpu.alpha.mean()) > 0.05


def test_c_sources_are_package_data(tmp_path):
    """The kernels are real C files found through importlib.resources, and a wheel built from the repo ships them."""
    import importlib.resources
    import shutil
    import zipfile
    from pathlib import Path

    from setuptools import build_meta

    csrc = importlib.resources.files("perchead.render") / "csrc"
    names = sorted(f.name for f in csrc.iterdir() if f.suffix in (".c", ".h"))
    assert names == ["instantiate.h", "project.h", "raster_simd.h", "rasterize.h", "render.c", "simd.h"]
    assert R._native.csrc_dir() == Path(str(csrc))
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(repo / "perchead", src / "perchead", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(repo / name, src / name)
    cwd = os.getcwd()
    try:
        os.chdir(src)
        wheel = build_meta.build_wheel(str(tmp_path / "dist"))
    finally:
        os.chdir(cwd)
    shipped = zipfile.ZipFile(tmp_path / "dist" / wheel).namelist()
    assert {f"perchead/render/csrc/{n}" for n in names} <= set(shipped)


def test_compiler_errors_name_the_c_file_line(tmp_path, monkeypatch):
    import shutil
    import subprocess

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    shutil.copytree(R._native.csrc_dir(), tmp_path / "csrc")
    rasterize_h = tmp_path / "csrc" / "rasterize.h"
    lines = rasterize_h.read_text().splitlines()
    lines.insert(5, "this is not C;")
    rasterize_h.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(R._native, "csrc_dir", lambda: tmp_path / "csrc")
    with pytest.raises(subprocess.CalledProcessError) as err:
        R._native._compile(["-shared", "-fPIC", "-std=c99"], str(tmp_path / "out" / "render.so"))
    assert "rasterize.h:6:" in err.value.stderr.decode()
