"""Tests for PercHead (paper §3.1–3.3): configs, shapes, gradients, checkpoints, Hub errors, mesh, silhouette."""

import copy
import json
import time

import pytest
import torch

from perchead.models.config import PercHeadConfig
from perchead.models.gaussian_head import mean_vertex_spacing
from perchead.geometry.mesh import save_glb
from perchead.models.perchead import PercHead


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PercHead(PercHeadConfig.preset("tiny")).eval()


def head_mask(model, azimuth=0.0):
    """The untrained model's own silhouette as a head-shaped input mask."""
    S = model.config.render.image_size
    with torch.no_grad():
        g = model.to_gaussians(model.decode(torch.zeros(1, 1, model.config.decoder.width), cross_attn_until=-1))
        alpha = model.render_views(g, model.default_cameras([azimuth], size=S), refine=False).alpha[:, 0]
    return (alpha > 0.5).float()  # [1, 1, S, S]


def inputs(model, B=2, seed=0):
    S = model.config.render.image_size
    g = torch.Generator().manual_seed(seed)
    mask = head_mask(model).expand(B, -1, -1, -1).clone()
    image = torch.rand(B, 3, S, S, generator=g) * mask + (1 - mask)  # over white
    return image, mask


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", ["paper", "demo", "tiny"])
def test_config_json_round_trip(name):
    cfg = PercHeadConfig.preset(name)
    again = PercHeadConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert PercHeadConfig.from_json(cfg.to_json()) == cfg


def test_preset_values():
    paper, demo = PercHeadConfig.preset("paper"), PercHeadConfig.preset("demo")
    assert paper.encoder.dino.model_id == "facebook/dinov2-giant"
    assert paper.encoder.dino.layers == (9, 19, 29, 39) and paper.encoder.patch_size == 14
    assert (paper.template.n_gaussians, paper.template.n_patches) == (65536, 4096)
    assert paper.refiner.enabled
    assert demo.encoder.dino is None and demo.render.image_size == 128 and demo.encoder.patch_size == 8
    assert (demo.template.n_gaussians, demo.template.n_patches) == (16384, 1024)
    for cfg in (paper, demo):
        assert cfg.render.fov_deg == 30.0 and cfg.render.radius == 0.7


def test_config_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        PercHeadConfig.preset("huge")
    data = PercHeadConfig.preset("tiny").to_dict()
    data["decoder"]["depthh"] = 3
    with pytest.raises(ValueError, match="depthh"):
        PercHeadConfig.from_dict(data)
    data = PercHeadConfig.preset("tiny").to_dict()
    data["template"]["n_gaussians"] = 1000
    with pytest.raises(ValueError, match="16"):
        PercHeadConfig.from_dict(data)


def test_demo_checkpoint_is_small():
    m = PercHead(PercHeadConfig.preset("demo"))
    assert m.num_parameters(trainable=False) == 0
    assert 4 * m.num_parameters() <= 20e6  # float32 checkpoint ≤ 20 MB


# ------------------------------------------------------------------------------------------ forward
def test_forward_shapes_and_count(model):
    cfg = model.config
    image, mask = inputs(model)
    tokens2d = model.encode(image, mask)
    tokens3d = model.decode(tokens2d)
    assert tokens3d.shape == (2, cfg.template.n_patches, cfg.decoder.width)
    g = model.to_gaussians(tokens3d)
    assert g.is_batched and g.batch_size == 2
    assert g.num_gaussians == 16 * cfg.template.n_patches == cfg.template.n_gaussians
    g[0].validate()
    with pytest.raises(ValueError, match="image must be"):
        model(torch.rand(1, 3, 32, 32), torch.ones(1, 1, 32, 32))


def test_untrained_model_outputs_the_template(model):
    image, mask = inputs(model)
    with torch.no_grad():
        g = model(image, mask)
    torch.testing.assert_close(g.means, model.template.vertices.expand_as(g.means))
    assert (g.colors - 0.5).abs().max() < 0.02  # grey
    spacing = mean_vertex_spacing(model.template.patch_vertices())
    assert (g.scales.mean() / spacing - model.config.head.init_scale).abs() < 0.1  # about one vertex spacing
    assert g.opacities.min() > 0.8


def test_gradients_reach_every_trainable_parameter_and_not_dino():
    torch.manual_seed(1)
    model = PercHead(PercHeadConfig.preset("tiny")).train()
    with torch.no_grad():  # move zero-initialised layers (offset head, refiner output) off zero
        for p in model.parameters():
            if p.requires_grad and p.abs().max() == 0:
                p.normal_(0, 1e-2)
    image, mask = inputs(model)
    g = model(image, mask)
    out = model.render_views(g, model.default_cameras([0, 90], size=32), refine=True)
    loss = (out.rgb - 0.3).square().mean() + out.alpha.mean()
    loss.backward()
    dino = {id(p) for p in model.encoder.dino.model.parameters()}
    assert dino and all(not p.requires_grad and p.grad is None for p in model.encoder.dino.model.parameters())
    missing = [
        n for n, p in model.named_parameters()
        if id(p) not in dino and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)
    ]
    assert not missing, f"no gradient for {missing}"
    assert model.num_parameters(trainable=False) == sum(p.numel() for p in model.encoder.dino.model.parameters())


def test_untrained_silhouette_is_head_shaped(model):
    image, mask = inputs(model, B=1)
    with torch.no_grad():
        g = model(image, mask)
        out = model.render_views(g, model.default_cameras([0, 90, 180, -90], size=64))
    alpha = out.alpha[0, :, 0]  # [V, H, W]
    coverage = alpha.mean(dim=(-1, -2))
    assert ((coverage > 0.1) & (coverage < 0.6)).all(), coverage
    assert (alpha[:, 28:36, 28:36] > 0.95).all()  # solid at the centre: a closed surface
    assert (alpha[:, :2] < 0.05).all() and (alpha[:, :, :3] < 0.05).all()  # empty above and beside the head
    # profile views are wider than the frontal ones (head depth with nose > head width)
    width = (alpha > 0.5).any(dim=1).sum(dim=-1).float()  # [V]
    assert width[1] > width[0] and width[3] > width[2]
    # the refiner is the identity at initialisation
    with torch.no_grad():
        raw = model.render_views(g, model.default_cameras([0], size=64), refine=False)
    torch.testing.assert_close(raw.rgb, out.rgb[:, :1])


# ------------------------------------------------------------------------------------------ checkpoints
def test_save_load_identical(model, tmp_path):
    model = copy.deepcopy(model)
    image, mask = inputs(model)
    with torch.no_grad():
        model.head.color.weight.normal_(0, 0.1)  # a non-trivial output
        model.head.offset.weight.normal_(0, 0.1)
        before = model(image, mask)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = PercHead.from_pretrained(str(tmp_path / "ckpt"))
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        after = loaded(image, mask)
    for name in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), rtol=0, atol=0)


def test_dino_loaded_by_id_is_not_stored(model, tmp_path):
    """With a pretrained DINOv2 (loaded by id), our checkpoint leaves its weights out."""
    cfg = PercHeadConfig.from_dict(model.config.to_dict())
    cfg.encoder.dino.pretrained, cfg.encoder.dino.model_id = True, "facebook/dinov2-small"
    m = PercHead(cfg, dino=model.encoder.dino.model)  # stands in for from_pretrained(model_id)
    keys = m.checkpoint_state_dict().keys()
    assert not any(k.startswith("encoder.dino.") for k in keys)
    assert any(k.startswith("encoder.task_vit.") for k in keys)
    m2 = PercHead(cfg, dino=model.encoder.dino.model)
    m.save_pretrained(tmp_path / "c")
    m2.load_checkpoint(tmp_path / "c" / "model.safetensors")  # the missing DINOv2 keys are accepted


def test_hub_errors_offline(tmp_path):
    t = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="not in the local Hub cache and HF_HUB_OFFLINE is set"):
        PercHead.from_pretrained("perchead-test/this-repo-does-not-exist", cache_dir=tmp_path)
    assert time.perf_counter() - t < 10
    with pytest.raises(ValueError, match="neither a checkpoint folder nor a Hub repo id"):
        PercHead.from_pretrained("not a valid id!", cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PercHead.from_pretrained("./no/such/folder", cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        PercHead.from_pretrained(tmp_path / "empty")


# ------------------------------------------------------------------------------------------ mesh
def test_mesh_has_template_faces(model, tmp_path):
    import trimesh

    image, mask = inputs(model, B=1)
    with torch.no_grad():
        g = model(image, mask)[0]
    path = save_glb(g, model.template, tmp_path / "head.glb")
    mesh = trimesh.load(path, force="mesh", process=False)
    assert len(mesh.faces) == len(model.template.faces)
    assert len(mesh.vertices) == g.num_gaussians
    assert mesh.visual.vertex_colors.shape == (g.num_gaussians, 4)
    with pytest.raises(ValueError, match="one head"):
        save_glb(model(image.expand(2, -1, -1, -1), mask.expand(2, -1, -1, -1)), model.template, tmp_path / "x.glb")
