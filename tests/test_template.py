"""Tests for the canonical head template (perchead/geometry/template.py, paper §3.2)."""

import numpy as np
import pytest
import torch
import trimesh

from perchead.geometry.template import CROWN_Y, Template, _build_arrays, build_template, patch_radii, template_labels


@pytest.fixture(scope="module")
def paper() -> Template:
    return build_template(65536, 4096)


@pytest.fixture(scope="module")
def small() -> Template:
    return build_template(16384, 1024)


def _mesh(t: Template) -> trimesh.Trimesh:
    return trimesh.Trimesh(t.vertices.numpy(), t.faces.numpy(), process=False)


@pytest.mark.parametrize("n_gaussians,n_patches", [(65536, 4096), (16384, 1024), (1024, 64), (16000, 1000)])
def test_counts_faces_and_watertight(n_gaussians, n_patches):
    t = build_template(n_gaussians, n_patches)
    assert t.vertices.shape == (n_gaussians, 3) and t.vertices.dtype == torch.float32
    assert t.normals.shape == (n_gaussians, 3)
    assert t.faces.dtype == torch.int64 and t.faces.shape == (2 * n_gaussians - 4, 3)  # closed genus-0 surface
    assert t.faces.min() >= 0 and t.faces.max() < n_gaussians
    assert torch.unique(t.faces).numel() == n_gaussians  # every vertex is on the surface
    mesh = _mesh(t)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # faces wind outward
    assert t.patch_size == 16 and t.n_patches == n_patches


def test_deterministic_and_cached_copies():
    a = build_template(1024, 64)
    a.vertices.add_(1.0)  # callers may modify their tensors without corrupting the cache
    b = build_template(1024, 64)
    _build_arrays.cache_clear()
    c = build_template(1024, 64)
    assert torch.equal(b.vertices, c.vertices) and torch.equal(b.faces, c.faces) and torch.equal(b.normals, c.normals)
    assert not torch.equal(a.vertices, b.vertices)


def test_patches_are_exact_and_compact(paper, small):
    assert paper.patch_vertices().shape == (4096, 16, 3)
    assert torch.equal(paper.patch_vertices()[5], paper.vertices[80:96])
    r = patch_radii(paper)
    assert r.mean() < 0.006 and r.max() < 0.025  # metres; measured mean 4.3 mm, max 19.2 mm
    assert torch.quantile(r, 0.99) < 0.008  # measured 6.3 mm
    r_small = patch_radii(small)
    assert r_small.mean() < 0.011 and r_small.max() < 0.025  # measured 8.5 mm / 15.6 mm
    # far tighter than 16 vertices drawn at random from the head
    shuffled = paper.vertices[torch.randperm(65536)].reshape(4096, 16, 3)
    random_radius = (shuffled - shuffled.mean(1, keepdim=True)).norm(dim=-1).amax(1).mean()
    assert r.mean() < random_radius / 10


def test_normals_unit_and_outward(paper):
    assert torch.allclose(paper.normals.norm(dim=-1), torch.ones(65536), atol=1e-4)
    outward = (paper.normals * paper.vertices).sum(-1) > 0  # the surface is star-shaped around the origin
    assert outward.float().mean() > 0.99


def test_head_dimensions(paper):
    v, labels = paper.vertices, template_labels(paper)
    ears = (labels == 8) | (labels == 9)
    width_with_ears = v[:, 0].max() - v[:, 0].min()
    width = v[~ears, 0].max() - v[~ears, 0].min()
    assert 0.17 < width_with_ears < 0.2 and 0.14 < width < 0.16
    crown = v[:, 1].max()
    assert abs(crown - CROWN_Y) < 1e-3
    face = v[(v[:, 2] > 0.06) & (v[:, 0].abs() < 0.02)]
    chin = face[:, 1].min()
    assert 0.22 < crown - chin < 0.24
    depth = v[v[:, 1] > 0.03, 2].max() - v[:, 2].min()  # brow to the back of the skull, above the nose
    assert 0.18 < depth < 0.21
    neck_bottom = v[:, 1].min()
    assert 0.08 < chin - neck_bottom < 0.12
    assert v[:, 2].max() < 0.135 and v[:, 2].min() > -0.11


def test_face_looks_toward_plus_z_and_ears_at_plus_minus_x(paper):
    v, labels = paper.vertices, template_labels(paper)
    tip = v[v[:, 2].argmax()]
    assert abs(tip[0]) < 0.005 and -0.04 < tip[1] < 0.0  # the nose tip, on the midline below the eyes
    assert labels[v[:, 2].argmax()] == 2
    assert labels[v[:, 0].argmax()] == 8 and labels[v[:, 0].argmin()] == 9  # l_ear on the head's left (+x)
    assert (v[labels == 8, 0] > 0.06).all() and (v[labels == 9, 0] < -0.06).all()
    assert (v[labels == 4, 0] > 0).all() and (v[labels == 5, 0] < 0).all()  # l_eye on +x
    assert v[labels == 4, 1].mean() > v[labels == 2, 1].mean() > v[labels == 11, 1].mean() > v[labels == 12, 1].mean()
    assert v[labels == 17, 1].max() < v[labels == 12, 1].min()  # the neck is below the lips


def test_labels(small):
    labels = template_labels(small)
    assert labels.shape == (16384,) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {1, 2, 4, 5, 6, 7, 8, 9, 11, 12, 17}
    assert (labels == 1).float().mean() > 0.4  # mostly skin


@pytest.mark.parametrize(
    "args",
    [(1000, 64), (1024, 0), (0, 0), (64, 4), (1024.0, 64), (1024, 64.0), (True, 64)],
)
def test_invalid_arguments(args):
    with pytest.raises(ValueError):
        build_template(*args)


def test_invalid_flame_paths(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        build_template(1024, 64, flame_path=str(tmp_path / "missing.npz"))
    pkl = tmp_path / "generic_model.pkl"
    pkl.write_bytes(b"not opened")
    with pytest.raises(ValueError, match="pickle"):
        build_template(1024, 64, flame_path=str(pkl))
    np.savez(tmp_path / "bad.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="v_template"):
        build_template(1024, 64, flame_path=str(tmp_path / "bad.npz"))
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)
    np.savez(tmp_path / "mm.npz", v_template=sphere.vertices * 1000, f=sphere.faces)
    with pytest.raises(ValueError, match="metres"):
        build_template(1024, 64, flame_path=str(tmp_path / "mm.npz"))
    with pytest.raises(ValueError, match="more than n_gaussians"):
        build_template(128, 8, flame_path=_big(tmp_path))


def _big(tmp_path) -> str:
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.1)  # 162 vertices > 128
    path = tmp_path / "big.npz"
    np.savez(path, v_template=sphere.vertices, f=sphere.faces)
    return str(path)


@pytest.mark.parametrize("ext", ["obj", "npz"])
def test_flame_mesh_file(tmp_path, ext):
    # A small stand-in for a FLAME export: a 162-vertex head-sized ellipsoid, off-centre.
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.09)
    vertices = sphere.vertices * np.array([0.85, 1.2, 1.0]) + np.array([0.01, -0.03, 0.02])
    path = tmp_path / f"flame.{ext}"
    if ext == "npz":
        np.savez(path, v_template=vertices, f=sphere.faces)
    else:
        trimesh.Trimesh(vertices, sphere.faces, process=False).export(path)
    t = build_template(1024, 64, flame_path=str(path))
    assert t.vertices.shape == (1024, 3) and t.faces.max() < 1024
    assert torch.unique(t.faces).numel() == 1024
    mesh = _mesh(t)
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(t.vertices[:, 1].max() - CROWN_Y) < 1e-5  # crown aligned with the built-in head
    centre_xz = (t.vertices.amax(0) + t.vertices.amin(0))[[0, 2]] / 2
    assert centre_xz.abs().max() < 1e-5
    # Upsampling keeps the shape: every vertex stays near the ellipsoid (Loop smoothing shrinks it a little).
    q = (t.vertices.double() - t.vertices.double().mean(0)) / torch.tensor([0.0765, 0.108, 0.09])
    assert ((q.norm(dim=-1) - 1).abs() < 0.08).all()
    assert torch.allclose(t.normals.norm(dim=-1), torch.ones(1024), atol=1e-4)
    assert patch_radii(t).max() < 0.06
