"""Tests for the photo-fit (perchead.fit) and its place in the reconstruction pipeline."""

import math
from pathlib import Path

import pytest
import torch

from perchead.models.config import PercHeadConfig
from perchead.models.perchead import PercHead
from perchead.fit.config import MAX_FIT_STEPS, FitConfig
from perchead.fit.driver import fit_to_photo
from perchead.fit.gaussians import lr_factor, split_gaussians
from perchead.fit.head_transform import head_transform
from perchead.fit.pose import adjust_camera, search_pose
from perchead.fit.priors import mirror_index
from perchead.fit.projection import project_photo_colors
from perchead.pipelines.reconstruct import PercHeadPipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PercHead(PercHeadConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def photo(model):
    """A 'photo' the tiny model cannot predict: its own random head with other colours, seen from 10° yaw."""
    torch.manual_seed(1)
    S = model.config.render.image_size
    image = torch.rand(1, 3, S, S)
    mask = torch.ones(1, 1, S, S)
    with torch.no_grad():
        g = model(image, mask)[0]
        colors = torch.rand_like(g.colors)
        target = type(g)(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=colors)
        cam = model.default_cameras([10.0], [5.0], size=S)
        out = model.render_at(target, cam.viewmats, cam.Ks, S, S, refine=False)
    return out.rgb[0], out.alpha[0], g, cam, target  # [1, 3, S, S], [1, 1, S, S], head [N], camera, true head


def tiny(overrides=None):
    return FitConfig.preset("tiny", overrides)


def test_fit_lowers_the_input_view_loss(model, photo):
    image, mask, g, cam, _ = photo
    result = fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 12,
                                                                          "photo.through_refiner": False}))
    first, last = result.photo_loss
    assert last < 0.8 * first
    assert len(result.losses) == 12 and result.losses[-1] < result.losses[0]
    assert not result.gaussians.is_batched and not result.gaussians.means.requires_grad
    result.gaussians.validate()


def test_offsets_and_scales_stay_within_their_bounds(model, photo):
    image, mask, g, cam, _ = photo
    config = tiny({"gaussians.steps": 10, "gaussians.geometry_from": 0.0, "gaussians.lr_offset": 5.0,
                   "gaussians.lr_scale": 5.0, "gaussians.max_offset": 0.002, "head.enabled": False,
                   "camera.rotate_head": False})
    result = fit_to_photo(model, g, image, mask, camera=cam, config=config)
    moved = (result.gaussians.means - g.means).abs()
    assert moved.max() <= config.gaussians.max_offset + 1e-6 and moved.max() > 0.5 * config.gaussians.max_offset
    ratio = (result.gaussians.scales / g.scales).log().abs()
    assert ratio.max() <= config.gaussians.max_log_scale + 1e-5
    torch.testing.assert_close(result.gaussians.quats, g.quats)


def test_split_gaussians_keeps_each_parent_in_its_own_plane():
    from perchead.geometry.gaussians import matrix_to_quaternion, quaternion_to_matrix, random_gaussians

    rotation = quaternion_to_matrix(torch.tensor([0.8, 0.2, -0.4, 0.4]))  # [3, 3], normalised inside
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(quaternion_to_matrix(matrix_to_quaternion(rotation)), rotation, atol=1e-6, rtol=0)

    g = random_gaussians(40, seed=3)
    index = torch.tensor([2, 7, 11])
    split, parent = split_gaussians(g, index, spread=0.5, shrink=0.6)
    assert split.num_gaussians == 40 + 9 and parent.tolist() == list(range(40)) + index.tolist() * 3
    split.validate()
    untouched = torch.tensor([i for i in range(40) if i not in index.tolist()])
    torch.testing.assert_close(split.means[untouched], g.means[untouched])
    torch.testing.assert_close(split.colors, g.colors[parent])
    torch.testing.assert_close(split.opacities, g.opacities[parent])
    torch.testing.assert_close(split.quats, g.quats[parent])
    for i in index.tolist():
        family = (parent == i).nonzero()[:, 0]  # [4]
        assert len(family) == 4
        # the four children sit around the parent's centre, off it along its two largest axes only
        torch.testing.assert_close(split.means[family].mean(dim=0), g.means[i], atol=1e-6, rtol=0)
        smallest_axis = int(g.scales[i].argmin())
        R = quaternion_to_matrix(g.quats[i])  # [3, 3]
        offsets = split.means[family] - g.means[i]  # [4, 3]
        assert (offsets @ R[:, smallest_axis]).abs().max() < 1e-6
        assert offsets.norm(dim=-1).min() > 0.25 * g.scales[i].max()
        ratio = split.scales[family] / g.scales[i]  # [4, 3]
        torch.testing.assert_close(ratio[:, smallest_axis], torch.ones(4))
        assert torch.isclose(ratio, torch.tensor(0.6)).sum() == 8


def test_fit_splits_the_gaussians_that_face_the_camera(model, photo):
    from perchead.geometry.cameras import camera_centers

    image, mask, g, cam, _ = photo
    # positions held (no offsets, no head transform): the fitted centres are the split's own
    config = tiny({"gaussians.steps": 3, "gaussians.split_share": 0.25, "gaussians.geometry_from": 1.0,
                   "head.enabled": False, "camera.rotate_head": False})
    result = fit_to_photo(model, g, image, mask, camera=cam, config=config)
    T, k = g.num_gaussians, int(0.25 * g.num_gaussians)
    assert result.gaussians.num_gaussians == T + 3 * k
    result.gaussians.validate()
    normals = model.template.normals.float()  # [T, 3]
    facing = (normals * torch.nn.functional.normalize(camera_centers(cam.viewmats)[0] - g.means, dim=-1)).sum(-1)
    chosen = facing.topk(k).indices  # [k] the quarter facing the camera most squarely
    expected, _ = split_gaussians(g, chosen)
    torch.testing.assert_close(result.gaussians.means, expected.means)
    torch.testing.assert_close(result.gaussians.scales, expected.scales)
    again = fit_to_photo(model, g, image, mask, camera=cam, config=config)
    torch.testing.assert_close(again.gaussians.colors, result.gaussians.colors, rtol=0, atol=0)
    with pytest.raises(ValueError, match="gaussians.split_share"):
        tiny({"gaussians.split_share": 1.5})


def test_geometry_waits_for_its_steps(model, photo):
    image, mask, g, cam, _ = photo
    config = tiny({"gaussians.steps": 4, "gaussians.geometry_from": 1.0, "head.enabled": False,
                   "camera.rotate_head": False})
    result = fit_to_photo(model, g, image, mask, camera=cam, config=config)
    torch.testing.assert_close(result.gaussians.means, g.means)
    torch.testing.assert_close(result.gaussians.scales, g.scales)
    # the head transform moves the whole head from the first step, within its bounds
    result = fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 4,
                                                                          "gaussians.geometry_from": 1.0}))
    assert not torch.equal(result.gaussians.means, g.means)
    assert (result.gaussians.means - g.means).abs().max() < 0.05


def test_pixels_past_the_photo_edge_are_unknown_not_background(model, photo):
    # a crop that reaches past the photo's top edge: white padding, no matte, but the head goes on there
    image, mask, g, cam, _ = photo
    S = image.shape[-1]
    cut = S // 3
    image, mask = image.clone(), mask.clone()
    image[..., :cut, :] = 1.0
    mask[..., :cut, :] = 0.0
    inside = torch.ones_like(mask)
    inside[..., :cut, :] = 0.0
    config = tiny({"gaussians.steps": 12, "priors.w_distill": 0.0, "priors.w_anchor": 0.0, "gaussians.lr_opacity": 1.0})
    with torch.no_grad():
        before = model.render_at(g, cam.viewmats, cam.Ks, S, S, refine=False).alpha[0, 0, 0, :cut]  # [cut, S]

    def top_alpha(result):
        with torch.no_grad():
            return model.render_at(result.gaussians, cam.viewmats, cam.Ks, S, S, refine=False).alpha[0, 0, 0, :cut]

    head = before > 0.5  # [cut, S] the crown's pixels
    blind = top_alpha(fit_to_photo(model, g, image, mask, camera=cam, config=config))[head]
    told = top_alpha(fit_to_photo(model, g, image, mask, camera=cam, config=config, inside=inside))[head]
    assert head.sum() > 20
    assert blind.mean() < 0.6 * before[head].mean()  # without the map the padding erases the crown
    assert told.mean() > 0.9 * before[head].mean()  # with it the crown stays
    with pytest.raises(ValueError, match="inside"):
        fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 1}), inside=inside[..., :-1])
    # the pose search and the latent stage take the map too
    searched = fit_to_photo(model, g, image, mask, config=tiny({"gaussians.steps": 2, "latent.steps": 2}),
                            inside=inside)
    assert len(searched.losses) == 4 and all(math.isfinite(x) for x in searched.photo_loss)
    searched.gaussians.validate()


def test_the_background_does_not_paint_the_head(model, photo):
    # everything outside the matte: the fit must clear the head there, by coverage alone when asked
    image, _, g, cam, _ = photo
    white, empty = torch.ones_like(image), torch.zeros_like(image[:, :1])
    config = tiny({"gaussians.steps": 6, "priors.w_distill": 0.0, "head.enabled": False, "camera.rotate_head": False,
                   "camera.steps": 0})
    fits = {share: fit_to_photo(model, g, white, empty, camera=cam,
                                config=config.with_overrides({"photo.outside_matte_color": share}))
            .gaussians for share in (1.0, 0.3, 0.0)}
    assert (fits[1.0].colors - g.colors).mean() > 0.02  # the colours turn toward the background's white
    assert 0 < (fits[0.3].colors - g.colors).mean() < (fits[1.0].colors - g.colors).mean()  # less so (the default)
    torch.testing.assert_close(fits[0.0].colors, g.colors)  # only coverage changes
    assert fits[0.0].opacities.mean() < g.opacities.mean() - 0.02
    with pytest.raises(ValueError, match="photo.outside_matte_color"):
        FitConfig().with_overrides({"photo.outside_matte_color": 1.5})


@pytest.mark.parametrize("latent_steps", [0, 2])
def test_fit_is_deterministic_with_a_seed(model, photo, latent_steps):
    """Same seed, same thread count: the same head, bit for bit, with and without the latent stage (whose first
    Adam step moves every token by ± its step size, so gradient sums that depended on the threads' timing once
    changed the colours by up to 0.04 between runs)."""
    image, mask, g, _, _ = photo
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = (fit_to_photo(model, g, image, mask, config=tiny({"priors.seed": 3, "latent.steps": latent_steps}))
                for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a.gaussians.colors, b.gaussians.colors) and torch.equal(a.gaussians.means, b.gaussians.means)
    assert a.losses == b.losses


def test_progress_per_step_and_cancel(model, photo):
    image, mask, g, cam, _ = photo
    seen = []
    fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 5}),
                 progress=lambda f, s: seen.append((f, s)))
    steps = [s for _, s in seen if s.startswith("fitting to the photo")]
    assert steps == [f"fitting to the photo {i}/5" for i in range(1, 6)]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.1 <= fractions[0] and fractions[-1] <= 0.3

    class Cancelled(Exception):
        pass

    calls = []

    def cancel_at_third(fraction, stage):
        calls.append(stage)
        if len(calls) == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 50}), progress=cancel_at_third)
    assert len(calls) == 3
    # the latent stage reports its own steps first and stops on cancel too
    seen.clear()
    fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 3, "latent.steps": 2}),
                 progress=lambda f, s: seen.append((f, s)))
    assert [s for _, s in seen if s.startswith("fitting")] == [
        "fitting the network's view of the photo 1/2", "fitting the network's view of the photo 2/2",
        "fitting to the photo 1/3", "fitting to the photo 2/3", "fitting to the photo 3/3"]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.1 <= fractions[0] and fractions[-1] <= 0.3
    calls.clear()
    with pytest.raises(Cancelled):
        fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 5, "latent.steps": 50}),
                     progress=cancel_at_third)
    assert calls[-1] == "fitting the network's view of the photo 3/50"


def test_latent_stage_carries_the_photo_to_the_hidden_side():
    # the bundled model on a held-out synthetic head: an offset to the 2D tokens, the network frozen
    from perchead.data.synthetic import make_head, split_seeds
    from perchead.evaluation.reconstruction import _ground_truth

    model = PercHead.from_pretrained(str(ROOT / "weights_card")).eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    head = make_head(split_seeds("test")[0])
    cam = model.default_cameras([10.0], [5.0], size=model.config.render.image_size)
    image, mask = _ground_truth(head, cam)  # [1, 3, S, S], [1, 1, S, S]
    with torch.no_grad():
        g = model(image, mask)[0]
    result = fit_to_photo(model, g, image, mask, camera=cam, config=FitConfig().with_overrides({"gaussians.steps": 0,
                                                                                                "latent.steps": 8}))
    first, last = result.photo_loss
    assert len(result.losses) == 8 and last < 0.7 * first
    # every Gaussian comes from the decoder again: the back of the head changes with the front
    back = model.default_cameras([180.0], size=64)
    with torch.no_grad():
        before, after = (model.render_at(h, back.viewmats, back.Ks, 64, 64, refine=False).rgb for h in (g, result.gaussians))
    assert (after - before).abs().mean() > 0.01
    # the network itself is untouched and its parameters keep their flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="fit steps"):
        FitConfig().with_overrides({"latent.steps": -1})
    with pytest.raises(ValueError, match="latent.lr"):
        FitConfig().with_overrides({"latent.lr": float("nan")})


def test_latent_silhouette_prior_holds_the_other_views(model, photo):
    # the latent stage alone, from the photo's camera: with the prior the decoded head's alpha seen from
    # the distillation views stays closer to the network's own prediction
    image, mask, g, cam, _ = photo
    mask = torch.roll(mask, shifts=(6, 6), dims=(-2, -1))  # an outline the prediction does not have
    config = tiny({"gaussians.steps": 0, "latent.steps": 6, "latent.lr": 0.5, "gaussians.split_share": 0.0})
    ring = model.default_cameras([70.0, 110.0, 180.0, -110.0, -70.0], size=32)

    def side_change(weight: float) -> float:
        result = fit_to_photo(model, g, image, mask, camera=cam,
                              config=config.with_overrides({"latent.w_alpha": weight}))
        with torch.no_grad():
            before, after = (model.render_at(h, ring.viewmats, ring.Ks, 32, 32, refine=False).alpha
                             for h in (g, result.gaussians))
        return float((after - before).abs().mean())

    free, held = side_change(0.0), side_change(50.0)
    assert free > 1e-6 and held < 0.7 * free
    with pytest.raises(ValueError, match="latent.w_alpha"):
        tiny({"latent.w_alpha": -1.0})


def test_real_photo_preset():
    from perchead.photo.faces import REAL_FACE_PITCH_DEG
    from perchead.fit.config import REAL_PHOTO

    real = FitConfig.preset("real")
    assert real.pose.landmark_pitch_offset_deg == REAL_FACE_PITCH_DEG and real.face.enabled
    assert real.photo.crop_size == 256
    assert all(getattr(getattr(real, name.split('.')[0]), name.split('.')[1]) == v for name, v in REAL_PHOTO.items())
    fast = FitConfig.preset("fast")
    # the default: synthetic heads
    assert fast.photo.crop_size is None and fast.latent.w_alpha == 0 and not fast.face.enabled
    assert FitConfig.preset("real", {"photo.crop_size": None}).photo.crop_size is None
    for bad in (4, 2048, 256.0, True, "256"):
        with pytest.raises(ValueError, match="photo.crop_size"):
            FitConfig().with_overrides({"photo.crop_size": bad})


def test_camera_refinement_is_bounded(model):
    cam = model.default_cameras([0.0], size=64)
    config = tiny({"camera.max_deg": 5.0, "camera.max_shift": 0.05, "camera.max_log_focal": 0.1})
    vm, K = adjust_camera(cam, torch.full((6,), 50.0), config)  # saturated
    R0, R1 = cam.viewmats[0, :3, :3], vm[0, :3, :3]
    angle = torch.rad2deg(torch.arccos(((R0.T @ R1).trace() - 1) / 2).clamp(-1, 1))
    assert angle <= 3 ** 0.5 * 5.0 + 0.5
    assert (K[0, :2, 2] - cam.Ks[0, :2, 2]).abs().max() <= config.camera.max_shift * 64 + 1e-4
    vm0, K0 = adjust_camera(cam, torch.zeros(6), config)  # zero = the given camera
    torch.testing.assert_close(vm0[0], cam.viewmats[0])
    torch.testing.assert_close(K0[0], cam.Ks[0])


def _head_frame(model, g, yaw=0.0):
    cam = model.default_cameras([yaw], size=32)
    axes = cam.viewmats[0, :3, :3]  # [3, 3]
    centre = g.means.mean(dim=0)
    heights = (g.means - centre) @ axes[1]
    return axes, centre, (heights.max() - heights.min()) / 2


def test_head_transform_starts_at_identity_and_is_bounded(model, photo):
    *_, g, _, _ = photo
    axes, centre, half = _head_frame(model, g, yaw=30.0)
    config = FitConfig()
    zero = torch.zeros(2)
    means, size = head_transform(g.means, axes, centre, half, zero, zero, zero, config)
    torch.testing.assert_close(means, g.means)
    assert float(size) == pytest.approx(1.0)
    big = torch.full((2,), 50.0)  # saturated
    means, size = head_transform(g.means, axes, centre, half, big, big, big, config)
    local0, local1 = (g.means - centre) @ axes.T, (means - centre) @ axes.T  # [N, 3] camera frame
    torch.testing.assert_close(local1[:, 2], local0[:, 2])  # the depth is kept
    ratio_v = (local1[:, 1] - config.head.max_shift) / local0[:, 1]
    assert ratio_v.max() <= math.exp(config.head.max_log_scale) + 1e-4
    far = local0[:, 0].abs() > 1e-3
    ratio_u = ((local1[:, 0] - config.head.max_shift) / local0[:, 0])[far]
    # scale × taper: at most three times the bound in log (ŷ ≤ 1 in size, ŷ² − 1/3 ≤ 2/3)
    assert ratio_u.max() <= math.exp(3 * config.head.max_log_scale) + 1e-4 and ratio_u.min() > 0
    assert float(size) <= math.exp(2 * config.head.max_log_scale / 3) + 1e-6


def _predicted_head(model, seed: int):
    """The model's head for a random input (seeded)."""
    torch.manual_seed(seed)
    S = model.config.render.image_size
    with torch.no_grad():
        return model(torch.rand(1, 3, S, S), torch.ones(1, 1, S, S))[0]


def _photo_and_view(model, truth, azimuth: float):
    """``truth`` photographed from the front: (front camera, rgb ``[3, S, S]``, alpha ``[1, S, S]``, a function
    rendering any head from ``azimuth`` as (rgb, alpha))."""
    S = model.config.render.image_size
    front = model.default_cameras([0.0], [0.0], size=S)
    other = model.default_cameras([azimuth], [0.0], size=S)

    def render(head, cams=other):
        with torch.no_grad():
            out = model.render_at(head, cams.viewmats, cams.Ks, S, S, refine=False)
        return out.rgb[0], out.alpha[0]

    image, mask = render(truth, front)
    return front, image, mask, render


def test_head_transform_corrects_the_hidden_side_too(model):
    """A head wider and shifted against the prediction, photographed from the front: the fit's head
    transform learns it from the photo, and the back view (which the photo does not show) improves."""
    g = _predicted_head(model, 2)
    stretch = torch.tensor([1.08, 1.0, 1.0])
    centre = g.means.mean(dim=0)
    truth = type(g)(means=centre + (g.means - centre) * stretch + torch.tensor([0.004, 0.0, 0.0]), quats=g.quats,
                    scales=g.scales, opacities=g.opacities, colors=g.colors)
    front, image, mask, from_back = _photo_and_view(model, truth, 180.0)
    back_truth = from_back(truth)[1]
    config = tiny({"gaussians.steps": 30, "camera.steps": 0, "head.lr": 0.05, "gaussians.geometry_from": 1.0})

    def back_error(head):
        return float((from_back(head)[1] - back_truth).abs().mean())  # alpha [1, S, S]

    fitted = fit_to_photo(model, g, image, mask, camera=front, config=config).gaussians
    local = fit_to_photo(model, g, image, mask, camera=front,
                         config=config.with_overrides({"head.enabled": False})).gaussians
    assert back_error(fitted) < 0.7 * back_error(g)
    assert back_error(fitted) < back_error(local)
    width = lambda head: float(head.means[:, 0].max() - head.means[:, 0].min())  # noqa: E731
    assert width(fitted) > width(g)


def test_pose_search_finds_the_rendered_yaw(model, photo):
    *_, g = photo  # the random-coloured head: its sides differ
    S = model.config.render.image_size
    cam = model.default_cameras([20.0], [0.0], size=S)
    with torch.no_grad():
        out = model.render_at(g, cam.viewmats, cam.Ks, S, S, refine=False)
    yaw, pitch = search_pose(model, g, out.rgb[0], out.alpha[0], tiny({"pose.size": 32}))
    assert (yaw, pitch) == (20.0, 0.0)


@pytest.mark.parametrize("true_yaw", [90.0, -150.0, 180.0])
def test_pose_search_finds_a_profile_or_the_back(model, photo, true_yaw):
    """The default grid is the whole circle: a side or back view is not taken for a front one."""
    *_, g = photo
    S = model.config.render.image_size
    cam = model.default_cameras([true_yaw], [10.0], size=S)
    with torch.no_grad():
        out = model.render_at(g, cam.viewmats, cam.Ks, S, S, refine=False)
    config = FitConfig().with_overrides({"pose.size": 32})
    yaw, pitch = search_pose(model, g, out.rgb[0], out.alpha[0], config)
    assert abs((yaw - true_yaw + 180.0) % 360.0 - 180.0) <= 5.0 and pitch == 10.0, (yaw, pitch)  # the fine step
    assert -180.0 < yaw <= 180.0


def test_mirror_index_pairs_left_and_right(model):
    v = model.template.vertices
    m = mirror_index(v)
    assert m.shape == (v.shape[0],)
    err = (v[m] * torch.tensor([-1.0, 1.0, 1.0]) - v).norm(dim=-1)
    assert err.median() < 0.01


@pytest.mark.parametrize("steps", [-1, MAX_FIT_STEPS + 1, 2.5, True, "10"])
def test_bad_step_counts_are_refused(steps):
    with pytest.raises(ValueError, match="fit steps"):
        FitConfig().with_overrides({"gaussians.steps": steps})


def test_bad_settings_are_refused(model, photo):
    with pytest.raises(ValueError, match="gaussians.lr_color"):
        FitConfig().with_overrides({"gaussians.lr_color": -1.0})
    with pytest.raises(ValueError, match="head.max_shift"):
        FitConfig().with_overrides({"head.max_shift": float("nan")})
    with pytest.raises(ValueError, match="preset"):
        FitConfig.preset("nope")
    image, mask, g, _, _ = photo
    with pytest.raises(ValueError, match="one head"):
        fit_to_photo(model, type(g).stack([g, g]), image, mask)
    with pytest.raises(ValueError, match="mask"):
        fit_to_photo(model, g, image, mask[..., :10])


# ------------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def pipe(model):
    return PercHeadPipeline(model, device="cpu")


def test_pipeline_fit_steps(pipe, photo):
    image, mask, _, _, _ = photo
    seen = []
    cams = pipe.model.default_cameras([0, 90], size=32)
    first = []
    rec = pipe(image, mask, cameras=cams, fit_steps=3, fit=tiny(), progress=lambda f, s: seen.append((f, s)),
               before_fit=first.append)
    plain = pipe(image, mask)
    assert len(first) == 1 and "fit" not in first[0].timings and first[0].views is None  # shown while fitting
    # the feed-forward head wearing the photo's colours where the frontal model framing sees it
    front = pipe.model.default_cameras([0.0], size=image.shape[-1])
    colored, _ = project_photo_colors(pipe.model, plain.gaussians, *pipe.prepare(image, mask), front)
    torch.testing.assert_close(first[0].gaussians.colors[0], colored.colors)
    torch.testing.assert_close(first[0].gaussians.means, plain.gaussians.means)
    assert not torch.equal(first[0].gaussians.colors, plain.gaussians.colors)
    assert "fit" in rec.timings and rec.timings["fit"] >= 0
    assert rec.gaussians.batch_size == 1 and rec.views.rgb.shape == (1, 2, 3, 32, 32)
    assert not torch.equal(rec.gaussians.colors, plain.gaussians.colors)  # the views come from the fitted head
    assert [s for _, s in seen if s.startswith("fitting")] == [f"fitting to the photo {i}/3" for i in (1, 2, 3)]
    assert all(0.1 <= f <= 0.3 for f, s in seen if s.startswith("fitting"))
    assert any("photo-fit" in n for n in rec.notes)
    assert "fit" not in plain.timings


def test_pipeline_latent_stage_starts_from_the_pipelines_tokens(pipe, photo):
    image, mask, _, _, _ = photo
    seen = []
    rec = pipe(image, mask, fit_steps=2, fit=tiny({"latent.steps": 3}), progress=lambda f, s: seen.append(s))
    assert [s for s in seen if s.startswith("fitting")] == [
        "fitting the network's view of the photo 1/3", "fitting the network's view of the photo 2/3",
        "fitting the network's view of the photo 3/3", "fitting to the photo 1/2", "fitting to the photo 2/2"]
    # without steps the latent stage returns the feed-forward head itself: the tokens it starts from are
    # the pipeline's own
    plain = pipe(image, mask)
    latent_only = pipe(image, mask, fit_steps=1, fit=tiny({"latent.steps": 1, "latent.lr": 0.0,
                                                           "gaussians.lr_color": 0.0, "gaussians.lr_opacity": 0.0,
                                                           "head.enabled": False, "camera.steps": 0,
                                                           "gaussians.geometry_from": 1.0}))
    torch.testing.assert_close(latent_only.gaussians.colors, plain.gaussians.colors)
    torch.testing.assert_close(latent_only.gaussians.means, plain.gaussians.means)
    assert rec.gaussians.batch_size == 1


def test_pipeline_refuses_bad_fit_settings(pipe, photo):
    image, mask, _, _, _ = photo
    for steps in (-3, 10**6, 1.5):
        with pytest.raises(ValueError, match="fit steps"):
            pipe(image, mask, fit_steps=steps)
    with pytest.raises(ValueError, match="FitConfig"):
        pipe(image, mask, fit_steps=2, fit={"steps": 2})


def test_evaluation_scores_the_fitted_head(model):
    from perchead.evaluation.reconstruction import EvalConfig, evaluate, markdown_table

    with pytest.raises(ValueError, match="fit steps"):
        EvalConfig(fit_steps=-1)
    results = evaluate(model, EvalConfig(subjects=1, novel_targets=2, eval_size=32, fit_steps=2), progress=False)
    assert set(results["novel"]) >= {"ours", "ours_fit"} and results["novel"]["ours_fit"]["psnr"] > 0
    assert "Ours + photo-fit" in markdown_table(results)


def test_pipeline_fits_a_photo_from_its_landmark_pose(pipe):
    from pathlib import Path

    photo = Path(__file__).resolve().parents[1] / "examples" / "head0_front.png"
    rec = pipe(str(photo), fit_steps=2, fit=tiny())
    assert rec.timings["fit"] >= 0 and rec.gaussians.batch_size == 1
    if rec.preprocessed[0].pose is None:  # no face mesh in this environment: the search stands in
        assert any("render-and-compare" in n for n in rec.notes)
    else:
        assert "photo-fit: head pose from the face landmarks" in rec.notes
        from perchead.photo.faces import REAL_FACE_PITCH_DEG

        rec = pipe(str(photo), fit_steps=2, fit=tiny({"pose.landmark_pitch_offset_deg": REAL_FACE_PITCH_DEG}))
        shifted = f"photo-fit: head pose from the face landmarks (pitch {REAL_FACE_PITCH_DEG:+.0f}° for a real face's proportions)"
        assert shifted in rec.notes
    with pytest.raises(ValueError, match="pose.landmark_pitch_offset_deg"):
        tiny({"pose.landmark_pitch_offset_deg": 60.0})


def test_pipeline_fits_the_photo_at_photo_size(pipe, monkeypatch):
    # the fit gets the crop at photo_size; the network still reads the model-size input
    import perchead.pipelines.reconstruct as reconstruct

    seen = []

    def spy(model, gaussians, image, mask, **kwargs):
        seen.append((image.shape[-1], mask.shape[-1], kwargs["inside"].shape[-1]))
        return fit_to_photo(model, gaussians, image, mask, **kwargs)

    monkeypatch.setattr(reconstruct, "fit_to_photo", spy)
    photo = ROOT / "examples" / "head0_front.png"
    S = pipe.image_size
    rec = pipe(str(photo), fit_steps=2, fit=tiny({"photo.crop_size": 2 * S}))
    plain = pipe(str(photo), fit_steps=2, fit=tiny())
    assert seen == [(2 * S, 2 * S, 2 * S), (S, S, S)]
    # the network's input is the same either way (the fine crop is a second cut of the same box)
    assert rec.preprocessed[0].image.shape[-1] == S and rec.preprocessed[0].crop_box == plain.preprocessed[0].crop_box
    torch.testing.assert_close(rec.preprocessed[0].image, plain.preprocessed[0].image)
    pipe(str(photo), fit=tiny({"photo.crop_size": 2 * S}))  # no fit: nothing is cut at photo_size
    assert len(seen) == 2


def test_large_inputs_are_fitted_at_fit_size(model, photo):
    image, mask, g, cam, _ = photo
    big = torch.nn.functional.interpolate(image, scale_factor=2, mode="bilinear")  # [1, 3, 2S, 2S]
    big_mask = torch.nn.functional.interpolate(mask, scale_factor=2, mode="bilinear")
    result = fit_to_photo(model, g, big, big_mask, camera=cam, config=tiny({"gaussians.steps": 2,
                                                                            "photo.fit_size": image.shape[-1]}))
    assert result.camera.width == image.shape[-1]
    with pytest.raises(ValueError, match="photo.fit_size"):
        tiny({"photo.fit_size": 2})


def test_the_model_is_left_unchanged(model, photo):
    image, mask, g, cam, _ = photo
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    fit_to_photo(model, g, image, mask, camera=cam, config=tiny({"gaussians.steps": 2, "photo.through_refiner": True}))
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_pipeline_fits_each_head_of_a_batch(pipe, photo):
    image, mask, _, _, _ = photo
    seen = []
    rec = pipe(torch.cat([image, image.flip(-1)]), torch.cat([mask, mask]), fit_steps=2, fit=tiny(),
               progress=lambda f, s: seen.append(f))
    assert rec.gaussians.batch_size == 2
    assert not torch.equal(rec.gaussians.colors[0], rec.gaussians.colors[1])
    assert seen == sorted(seen) and max(seen) <= 0.3


def test_rotate_head_turns_the_head_not_the_camera(model):
    """A head turned by 6° against the prediction, photographed from the front: with ``rotate_head`` the
    refined yaw turns the head (the side view improves) and the camera stays as given; without it the
    camera turns and the side view keeps the prediction's pose."""
    g = _predicted_head(model, 3)
    a = math.radians(6.0)
    turn = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    truth = g.transformed(turn)
    front, image, mask, from_side = _photo_and_view(model, truth, 90.0)
    side_truth = from_side(truth)[0]
    config = tiny({"gaussians.steps": 25, "camera.steps": 25, "camera.lr": 0.1, "gaussians.lr_color": 0.0,
                   "gaussians.lr_opacity": 0.0, "gaussians.geometry_from": 1.0, "head.enabled": False,
                   "priors.w_distill": 0.0, "gaussians.lr_final": 1.0})

    def side_error(head):
        return float((from_side(head)[0] - side_truth).abs().mean())

    turned = fit_to_photo(model, g, image, mask, camera=front,
                          config=config.with_overrides({"camera.rotate_head": True}))
    moved = fit_to_photo(model, g, image, mask, camera=front,
                         config=config.with_overrides({"camera.rotate_head": False}))
    torch.testing.assert_close(turned.camera.viewmats, front.viewmats)
    assert not torch.allclose(moved.camera.viewmats, front.viewmats)
    torch.testing.assert_close(moved.gaussians.means, g.means)  # the camera moved, the head did not
    assert side_error(turned.gaussians) < 0.8 * side_error(g)
    assert side_error(moved.gaussians) == pytest.approx(side_error(g), rel=1e-4)
    assert turned.photo_loss[1] < 0.8 * turned.photo_loss[0]
    assert any("head turned by yaw" in n for n in turned.notes)
    turned.gaussians.validate()


def test_vertical_taper_scales_crown_and_chin_apart(model, photo):
    *_, g, _, _ = photo
    axes, centre, half = _head_frame(model, g)
    zero = torch.zeros(2)
    means, _ = head_transform(g.means, axes, centre, half, zero, torch.zeros(3), zero, FitConfig())
    torch.testing.assert_close(means, g.means)  # zero = the identity
    taper = torch.tensor([0.0, 0.0, 50.0])  # saturated: taller crown, shorter chin
    means, _ = head_transform(g.means, axes, centre, half, zero, taper, zero, FitConfig())
    v0, v1 = (g.means - centre) @ axes[1], (means - centre) @ axes[1]  # [N] height along the camera's y
    top, bottom = v0 > 0.5 * half, v0 < -0.5 * half
    assert (v1[top] / v0[top]).min() > 1.0 and (v1[bottom] / v0[bottom]).max() < 1.0
    ratio = v1 / v0.where(v0.abs() > 1e-6, torch.ones_like(v0))  # [N]
    assert ratio.max() <= math.exp(2 * FitConfig().head.max_log_scale) + 1e-4  # scale × linear term at the top


@pytest.mark.parametrize("final", [0.0, 0.1, 1.0])
def test_step_size_decays_to_its_final_fraction(final):
    factors = [lr_factor(step, 20, final) for step in range(20)]
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(final)
    assert all(a >= b - 1e-12 for a, b in zip(factors, factors[1:]))  # never increases
    with pytest.raises(ValueError, match="gaussians.lr_final"):
        FitConfig().with_overrides({"gaussians.lr_final": 1.5})


def test_framed_like_the_photo_makes_the_crop_the_whole_image(model, photo):
    """A view cropped by ``framing`` (here a fixed box) renders as that crop of the uncropped view."""
    import torch.nn.functional as F

    from perchead.fit.pose import framed_like_the_photo

    *_, g = photo
    S = model.config.render.image_size
    cams = model.default_cameras([0.0, 90.0], [0.0, 10.0], size=S)
    box = (S / 8, S / 4, 5 * S / 8, 3 * S / 4)  # in the pixels of the framing renders (``size`` = S here)
    framed = framed_like_the_photo(model, g, cams, lambda alpha: box, size=S)
    assert torch.equal(framed.viewmats, cams.viewmats)
    with torch.no_grad():
        big = model.default_cameras([0.0, 90.0], [0.0, 10.0], size=2 * S)
        whole = model.render_at(g, big.viewmats, big.Ks, 2 * S, 2 * S, refine=False).rgb[0]  # [2, 3, 2S, 2S]
        crop = model.render_at(g, framed.viewmats, framed.Ks, S, S, refine=False).rgb[0]  # [2, 3, S, S]
    x0, y0, x1, y1 = (int(2 * c) for c in box)
    expected = F.interpolate(whole[:, :, y0:y1, x0:x1], size=(S, S), mode="area")
    assert (crop - expected).abs().mean() < 0.03


def test_pipeline_searches_the_pose_of_an_alpha_cropped_back_view():
    """The app's back-three-quarter example (a render at yaw 150°, pitch 10°, cropped by its alpha channel,
    no face landmarks): the bundled model's searched pose is the back, not the front as with a ±40° grid."""
    examples = ROOT / "examples"
    pipe = PercHeadPipeline.from_pretrained(str(ROOT / "weights_card"), device="cpu")
    rec = pipe(str(examples / "head3_back_three_quarter.png"), fit_steps=1,
               fit=FitConfig.preset("fast", {"latent.steps": 0}))
    note = next(n for n in rec.notes if "render-and-compare" in n)
    yaw = float(note.split("yaw ")[1].split("°")[0])
    assert abs(yaw - 150.0) <= 15.0, note


def test_settings_are_named_by_group_and_field():
    config = FitConfig.preset("tiny", {"latent.steps": 3, "face.enabled": True})
    assert config.latent.steps == 3 and config.face.enabled and config.gaussians.steps == 8  # the preset's own
    assert config.with_overrides({"gaussians.steps": 5}).gaussians.steps == 5 and config.gaussians.steps == 8
    names = FitConfig.field_names()
    assert len(names) == len(set(names)) == 50 and "photo.crop_size" in names and "priors.seed" in names
    for bad in ("steps", "latent", "latent.nope", "nope.steps", "latent.steps.x"):
        with pytest.raises(ValueError, match="unknown FitConfig field"):
            FitConfig().with_overrides({bad: 1})
    with pytest.raises(ValueError, match="FitConfig.latent"):
        FitConfig(latent=FitConfig().gaussians)  # a group of the wrong kind


# ------------------------------------------------------------------------------------------ the first look
def test_projection_takes_the_photos_colours_where_the_camera_sees(model, photo):
    """The photo's colours on the Gaussians the input camera sees squarely and in front: its render from that
    camera comes much closer to the photo; the back of the head and the shape keep the prediction's."""
    from perchead.fit.views import facing, render

    _, _, g, cam, _ = photo
    S = model.config.render.image_size
    lo, hi = g.means.min(0).values, g.means.max(0).values
    person = type(g)(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities,
                     colors=(g.means - lo) / (hi - lo))  # [N, 3] colours that vary smoothly over the head
    with torch.no_grad():
        seen = model.render_at(person, cam.viewmats, cam.Ks, S, S, refine=False)
    image, mask = seen.rgb[0], seen.alpha[0]  # [1, 3, S, S], [1, 1, S, S]
    colored, share = project_photo_colors(model, g, image, mask, cam)
    assert share.shape == (g.num_gaussians,) and 0 <= float(share.min()) and float(share.max()) <= 1
    torch.testing.assert_close(colored.means, g.means)
    away = facing(model.template.normals, g.means, cam.viewmats) < -0.1  # [N] facing away from the camera
    assert away.any() and float(share[away].abs().max()) == 0.0
    torch.testing.assert_close(colored.colors[away], g.colors[away])

    def photo_l1(head):
        rgb, _ = render(model, head, cam.viewmats, cam.Ks, S, refine=False)
        return float(((rgb - image).abs() * mask).mean())

    assert photo_l1(colored) < 0.6 * photo_l1(g)
    # a camera of another size is scaled to the image: the same colours
    big = type(cam)(cam.viewmats, cam.Ks * torch.tensor([[2.0], [2.0], [1.0]]), 2 * S, 2 * S)
    torch.testing.assert_close(project_photo_colors(model, g, image, mask, big)[0].colors, colored.colors)


def test_projection_refuses_what_it_cannot_colour(model, photo):
    image, mask, g, cam, _ = photo
    with pytest.raises(ValueError, match="one head"):
        project_photo_colors(model, type(g).stack([g, g]), image, mask, cam)
    with pytest.raises(ValueError, match="template"):
        project_photo_colors(model, g[: g.num_gaussians // 2], image, mask, cam)
    with pytest.raises(ValueError, match="mask"):
        project_photo_colors(model, g, image, mask[..., :5], cam)
    with pytest.raises(ValueError, match="one view"):
        project_photo_colors(model, g, image, mask, model.default_cameras([0.0, 90.0]))


def test_the_head_being_fitted_is_handed_out_every_few_steps(model, photo):
    """``on_head``: after the latent stage, then before every ``head_every``-th Gaussian step; each head is
    detached and closer to the photo than the one before; the returned head is what the steps reach."""
    image, mask, g, cam, _ = photo
    heads = []
    config = tiny({"gaussians.steps": 7, "latent.steps": 2, "photo.through_refiner": False})
    result = fit_to_photo(model, g, image, mask, camera=cam, config=config, on_head=heads.append, head_every=3)
    assert len(heads) == 3  # the latent stage's head, then before steps 4 and 7
    assert all(not h.means.requires_grad and not h.is_batched for h in heads)
    assert not torch.equal(heads[1].colors, heads[2].colors)
    plain = fit_to_photo(model, g, image, mask, camera=cam, config=config)
    torch.testing.assert_close(result.gaussians.colors, plain.gaussians.colors)  # watching changes nothing
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="head_every"):
            fit_to_photo(model, g, image, mask, camera=cam, config=config, on_head=heads.append, head_every=bad)


def test_pipeline_streams_the_head_while_fitting(pipe, photo):
    image, mask, _, _, _ = photo
    shown = []
    rec = pipe(image, mask, fit_steps=5, fit=tiny(), during_fit=shown.append, during_fit_every=2)
    assert len(shown) == 2 and all(part.gaussians.batch_size == 1 and part.views is None for part in shown)
    assert shown[-1].gaussians.num_gaussians == rec.gaussians.num_gaussians  # the fit's (split) head
