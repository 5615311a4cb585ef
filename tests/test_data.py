"""Tests for perchead.data: synthetic heads, the multi-view format, image folders and mixing."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.geometry.cameras import orbit_cameras
from perchead.data import (CLASS_NAMES, SPLITS, ImageFolderDataset, MixedDataset, MultiViewDataset, SyntheticHeads,
                           export_synthetic, make_head, render_head, weighted_sampler)
from perchead.data.multiview import align_cameras, opengl_to_opencv, read_cameras
from perchead.data.synthetic import C, split_seeds

SAMPLE_KEYS = {"image", "mask", "input_viewmat", "input_K", "target_images", "target_masks", "target_viewmats",
               "target_Ks", "target_labels", "labels", "caption", "subject"}


@pytest.fixture(scope="module")
def heads():
    return {s: make_head(s) for s in range(12)}


def check_sample(s, V, S):
    assert set(s) == SAMPLE_KEYS
    assert s["image"].shape == (3, S, S) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (1, S, S)
    assert s["input_viewmat"].shape == (4, 4) and s["input_K"].shape == (3, 3)
    assert s["target_images"].shape == (V, 3, S, S) and s["target_masks"].shape == (V, 1, S, S)
    assert s["target_viewmats"].shape == (V, 4, 4) and s["target_Ks"].shape == (V, 3, 3)
    assert s["target_labels"].shape == (V, S, S) and s["target_labels"].dtype == torch.long
    assert s["labels"].shape == (S, S) and s["labels"].dtype == torch.long
    assert isinstance(s["caption"], str) and isinstance(s["subject"], str)
    for k in ("image", "mask", "target_images", "target_masks"):
        assert 0 <= s[k].min() and s[k].max() <= 1


# ------------------------------------------------------------------------------------------ synthetic
def test_make_head_deterministic():
    a, b = make_head(5), make_head(5)
    for f in ("means", "quats", "scales", "opacities", "colors"):
        torch.testing.assert_close(getattr(a.gaussians, f), getattr(b.gaussians, f), rtol=0, atol=0)
    assert torch.equal(a.labels, b.labels) and a.caption == b.caption and a.attributes == b.attributes


def test_different_seeds_differ(heads):
    assert heads[0].gaussians.num_gaussians != heads[1].gaussians.num_gaussians or not torch.equal(
        heads[0].gaussians.means, heads[1].gaussians.means)
    assert len({h.attributes["head_half_width"] for h in heads.values()}) == len(heads)


def test_splits_disjoint_and_large():
    sets = {k: set(v) for k, v in SPLITS.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert sum(len(v) for v in SPLITS.values()) >= 10_000
    with pytest.raises(ValueError, match="unknown split"):
        split_seeds("nope")


def test_gaussians_valid_labelled_and_in_budget(heads):
    for h in heads.values():
        g = h.gaussians.validate()
        assert not g.is_batched and 12_000 <= g.num_gaussians <= 45_000
        assert h.labels.shape == (g.num_gaussians,) and h.labels.dtype == torch.long
        assert ((h.labels >= 1) & (h.labels < len(CLASS_NAMES))).all()
        present = set(h.labels.tolist())
        for name in ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "u_lip", "l_lip", "neck", "cloth"):
            assert C[name] in present, (h.seed, name)
        assert g.means.norm(dim=-1).max() < 0.21  # fits orbit_cameras(radius=0.7, fov_deg=30)
        if h.attributes["hair_style"] != "bald":
            assert C["hair"] in present


def test_left_is_plus_x(heads):
    h = heads[2]
    for left, right in (("l_eye", "r_eye"), ("l_ear", "r_ear"), ("l_brow", "r_brow")):
        if (h.labels == C[left]).any():
            assert h.gaussians.means[h.labels == C[left], 0].mean() > 0.01
            assert h.gaussians.means[h.labels == C[right], 0].mean() < -0.01


def test_attributes_vary_and_captions_mention_them():
    attrs = [make_head(s, density=0.3) for s in range(40)]
    assert len({h.attributes["hair_style"] for h in attrs}) >= 5
    assert len({h.attributes["hair_color"] for h in attrs}) >= 5
    assert len({h.attributes["skin_tone"] for h in attrs}) >= 4
    assert any(h.attributes["glasses"] != "none" for h in attrs)
    for h in attrs:
        a = h.attributes
        assert f"{a['skin_tone']} skin" in h.caption
        if a["hair_style"] != "bald":
            assert a["hair_color"] in h.caption
        assert (a["glasses"] in h.caption) == (a["glasses"] != "none")


def test_render_head_labels_and_background(heads):
    h = heads[0]
    cams = orbit_cameras([0, 90, 180], [0, 0, 0], size=64)
    out = render_head(h, cams)
    assert out["rgb"].shape == (3, 3, 64, 64) and out["alpha"].shape == (3, 1, 64, 64)
    assert out["labels"].shape == (3, 64, 64) and out["labels"].dtype == torch.long
    assert torch.allclose(out["rgb"][:, :, 0, 0], torch.ones(3, 3), atol=1e-4)  # white corner
    assert (out["labels"][:, 0, 0] == 0).all()
    front, side = out["labels"][0], out["labels"][1]
    assert (front == C["skin"]).sum() > 50 and (front == C["nose"]).any()
    assert (side == C["l_ear"]).any() or (side == C["hair"]).sum() > 100  # camera at +X sees the left ear
    assert not (side == C["r_ear"]).any()
    alpha = out["alpha"][:, 0]
    assert ((alpha > 0.5) == (out["labels"] > 0)).all()
    assert (alpha > 0.99).float().mean() > 0.15  # a solid head, not a cloud


def test_synthetic_dataset_sample():
    ds = SyntheticHeads("val", image_size=48, n_targets=3, view_seed=0)
    assert len(ds) == len(SPLITS["val"])
    s = ds[0]
    check_sample(s, 3, 48)
    assert s["subject"] == f"synthetic-{SPLITS['val'][0]}"
    s2 = ds[0]
    torch.testing.assert_close(s["target_images"], s2["target_images"])
    # the input is an orbit camera at 0.7 m and the first target mirrors it (an extreme view)
    from perchead.geometry.cameras import camera_centers
    c_in = camera_centers(s["input_viewmat"][None])[0]
    assert abs(c_in.norm().item() - 0.7) < 1e-4
    with pytest.raises(ValueError, match="n_targets"):
        SyntheticHeads("train", 32, 0)


# ------------------------------------------------------------------------------------------ multi-view
def test_export_load_round_trip(tmp_path):
    summary = export_synthetic(str(tmp_path), [SPLITS["test"][0], SPLITS["test"][1]], views_per_subject=5, image_size=48)
    assert summary["subjects"] == 2 and summary["seconds_per_subject"] > 0
    ds = MultiViewDataset(str(tmp_path), n_targets=4, image_size=48, view_seed=1)
    assert len(ds) == 2
    s = ds[0]
    check_sample(s, 4, 48)
    head = make_head(SPLITS["test"][0])
    meta = read_cameras(ds.subjects[0])
    frames = torch.cat([s["input_viewmat"][None], s["target_viewmats"]])
    idx = [int(((meta["viewmats"] - vm).abs().amax((1, 2)) < 1e-6).nonzero()[0]) for vm in frames]
    from perchead.geometry.cameras import Cameras
    ref = render_head(head, Cameras(meta["viewmats"][idx], meta["Ks"][idx], 48, 48))
    torch.testing.assert_close(torch.cat([s["image"][None], s["target_images"]]), ref["rgb"], atol=1 / 255 + 1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([s["mask"][None], s["target_masks"]]), ref["alpha"], atol=1 / 255 + 1e-6, rtol=0)
    assert torch.equal(s["target_labels"], ref["labels"][1:])
    assert torch.equal(s["labels"], ref["labels"][0])
    assert s["caption"] == head.caption
    # the most opposite frame is the first target
    assert idx[1] != idx[0]
    # resizing keeps the projection consistent: K scales with the image
    small = MultiViewDataset(str(tmp_path), n_targets=2, image_size=24, view_seed=1)[0]
    torch.testing.assert_close(small["input_K"][:2], s["input_K"][:2] / 2)


def test_multiview_rgba_and_nonsquare(tmp_path):
    sub = tmp_path / "subj"
    (sub / "images").mkdir(parents=True)
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[10:30, 20:40, 3] = 255
    Image.fromarray(rgba, "RGBA").save(sub / "images" / "a.png")
    cam = orbit_cameras([0], [0], size=(60, 40))
    json.dump({"width": 60, "height": 40, "frames": [{"file": "images/a.png", "viewmat": cam.viewmats[0].tolist(),
                                                       "K": cam.Ks[0].tolist()}]}, open(sub / "cameras.json", "w"))
    s = MultiViewDataset(str(tmp_path), n_targets=2, image_size=20)[0]
    check_sample(s, 2, 20)
    assert s["mask"][0, 10, 10] == 1 and s["mask"][0, 0, 0] == 0
    assert torch.allclose(s["image"][:, 0, 0], torch.ones(3))  # transparent → white
    assert abs(s["image"][0, 10, 10].item() - 200 / 255) < 1e-3
    assert (s["target_labels"] == -1).all()
    torch.testing.assert_close(s["input_K"][0, 2], torch.tensor(10.0))  # (30 - 10 crop) / 2


def test_multiview_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        MultiViewDataset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no subject"):
        MultiViewDataset(str(tmp_path))
    sub = tmp_path / "s"
    (sub / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(sub / "images" / "0.png")
    good = {"file": "images/0.png", "viewmat": np.eye(4).tolist(), "K": [[8, 0, 4], [0, 8, 4], [0, 0, 1]]}
    cases = [
        ("{not json", "not valid JSON"),
        (json.dumps({"width": 8, "frames": [good]}), "missing key 'height'"),
        (json.dumps({"width": 8, "height": 8, "frames": []}), "non-empty"),
        (json.dumps({"width": 8, "height": 8, "frames": [dict(good, viewmat=[[1, 0], [0, 1]])]}), "viewmat must be 4x4"),
        (json.dumps({"width": 8, "height": 8, "frames": [dict(good, viewmat=(2 * np.eye(4)).tolist())]}), "not a rigid"),
        (json.dumps({"width": 8, "height": 8, "frames": [dict(good, K=[[1, 0], [0, 1]])]}), "K must be 3x3"),
        (json.dumps({"width": 8, "height": 8, "frames": [dict(good, file="images/x.png")]}), "does not exist"),
        (json.dumps({"width": 8, "height": 8, "frames": [{"file": "images/0.png"}]}), "missing 'viewmat'"),
    ]
    for text, message in cases:
        (sub / "cameras.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            MultiViewDataset(str(tmp_path))


def test_align_and_opengl_conversion():
    cams = orbit_cameras([30, -60], [10, -20])
    pts = torch.randn(20, 3) * 0.05
    R = torch.linalg.qr(torch.randn(3, 3))[0]
    R = R * torch.sign(torch.det(R))
    s, t = 0.001, torch.tensor([0.1, -0.2, 0.3])
    world = ((pts - t) @ R) / s  # canonical → capture world (millimetre-ish)
    M = torch.eye(4)
    M[:3, :3], M[:3, 3] = s * R, t
    vm_world = torch.diag(torch.tensor([1 / s, 1 / s, 1 / s, 1.0])) @ cams.viewmats @ M  # a capture-frame camera
    vm = align_cameras(vm_world, s, R, t)
    from perchead.geometry.cameras import project_points
    uv_c, _ = project_points(pts, vm, cams.Ks)
    uv_ref, _ = project_points(pts, cams.viewmats, cams.Ks)
    torch.testing.assert_close(uv_c, uv_ref, atol=1e-3, rtol=0)
    Rv = vm[:, :3, :3]
    torch.testing.assert_close(Rv @ Rv.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-4, rtol=0)
    assert world.abs().max() > 1  # the capture frame really was in other units
    c2w_gl = torch.linalg.inv(cams.viewmats) @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    torch.testing.assert_close(opengl_to_opencv(c2w_gl), cams.viewmats, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------ image folder
def test_image_folder_rgba_and_masks(tmp_path):
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[..., 1] = 100
    rgba[8:24, 16:32, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((16, 16, 3), 50, np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "masks").mkdir()
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "b.png")
    Image.fromarray(np.full((16, 16, 3), 80, np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "c.txt").write_text("short black hair\n")
    ds = ImageFolderDataset(str(tmp_path), image_size=16, n_targets=2)
    assert len(ds) == 3
    a, b, c = ds[0], ds[1], ds[2]
    for s in (a, b, c):
        check_sample(s, 2, 16)
        torch.testing.assert_close(s["target_images"][0], s["image"])
        assert (s["target_labels"] == -1).all()
    front = orbit_cameras([0], [0], size=16)
    torch.testing.assert_close(a["input_viewmat"], front.viewmats[0])
    torch.testing.assert_close(a["input_K"], front.Ks[0])
    assert a["mask"][0, 8, 8] == 1 and a["mask"][0, 0, 0] == 0  # 32x32 centre crop, halved
    assert torch.allclose(a["image"][:, 0, 0], torch.ones(3))
    assert b["mask"][0, 8, 8] == 1 and b["mask"][0, 0, 0] == 0 and torch.allclose(b["image"][:, 0, 0], torch.ones(3))
    assert c["mask"].min() == 1 and c["caption"] == "short black hair"
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "nonexistent"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        ImageFolderDataset(str(empty))


# ------------------------------------------------------------------------------------------ mixing
class _Const(torch.utils.data.Dataset):
    def __init__(self, tag, n):
        self.tag, self.n = tag, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"subject": f"{self.tag}{i}"}


def test_mixing_ratios():
    a, b = _Const("a", 10), _Const("b", 1000)
    mixed = MixedDataset([(a, 3.0), (b, 1.0)], length=4000, seed=0)
    share = np.mean([mixed.source_of(i)[0] == 0 for i in range(4000)])
    assert abs(share - 0.75) < 0.03
    assert mixed[0]["subject"][0] in "ab"
    mixed.set_epoch(1)
    assert [mixed.source_of(i) for i in range(50)] != [MixedDataset([(a, 3.0), (b, 1.0)], 4000).source_of(i) for i in range(50)]
    cat, sampler = weighted_sampler([(a, 1.0), (b, 1.0)], num_samples=4000, generator=torch.Generator().manual_seed(0))
    share = np.mean([i < len(a) for i in sampler])
    assert abs(share - 0.5) < 0.04
    with pytest.raises(ValueError, match="weight"):
        MixedDataset([(a, -1.0)])
    with pytest.raises(ValueError, match="at least one"):
        MixedDataset([])


def test_decoder_layers_figure(tmp_path):
    from pathlib import Path

    from perchead.data.figures import decoder_layers_figure, main
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead
    from perchead.pipelines.reconstruct import PercHeadPipeline

    photo = Path(__file__).resolve().parents[1] / "examples" / "head0_front.png"
    torch.manual_seed(0)
    pipe = PercHeadPipeline(PercHead(PercHeadConfig.preset("tiny")), device="cpu")
    L, S = pipe.model.config.decoder.depth, 40
    path = decoder_layers_figure(pipe, [str(photo), str(photo)], tmp_path / "layers.png", size=S)
    figure = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    header = figure.shape[0] - 4 * S  # two photos × (front, ¾) rows under one row of labels
    assert figure.shape == (header + 4 * S, (1 + L) * S, 3) and 0 < header < 30
    body = figure[header:]
    assert (body[S : 2 * S, :S] == 255).all() and (body[:S, :S] < 200).any()  # the input above a blank tile
    strip = pipe.decoder_layers(str(photo), size=S).strip()  # [2S, L·S, 3]
    assert np.abs(body[: 2 * S, S:] - strip).max() <= 1  # then exactly the pipeline's strip
    main(["--model", str(pipe.model.save_pretrained(tmp_path / "model")), "--output", str(tmp_path / "cli.png"),
          "--size", str(S), str(photo)])
    assert Image.open(tmp_path / "cli.png").size == ((1 + L) * S, header + 2 * S)
