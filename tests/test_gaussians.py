"""Gaussians dataclass: validation, batching helpers and file I/O (.ply 3DGS layout, .splat)."""

import numpy as np
import pytest
import torch
from plyfile import PlyData

from perchead.geometry.gaussians import (
    PLY_PROPERTIES,
    SH_C0,
    Gaussians,
    load_ply,
    load_splat,
    random_gaussians,
    save_ply,
    save_splat,
)

FIELDS = ("means", "quats", "scales", "opacities", "colors")


def _fields(g):
    return {f: getattr(g, f) for f in FIELDS}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("means", torch.zeros(5, 2), "means has shape"),
        ("quats", torch.zeros(5, 3), "quats has shape"),
        ("colors", torch.zeros(4, 3), "colors has shape"),
        ("scales", torch.ones(5, 3, dtype=torch.long), "floating-point"),
    ],
)
def test_shape_and_dtype_errors_name_the_field(field, value, message):
    kwargs = _fields(random_gaussians(5))
    kwargs[field] = value
    with pytest.raises(ValueError, match=message):
        Gaussians(**kwargs)


@pytest.mark.parametrize(
    "field, corrupt, message",
    [
        ("means", lambda t: t.index_fill(0, torch.tensor([2]), float("nan")), "means contains 3 NaN"),
        ("colors", lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "colors contains"),
        ("quats", lambda t: t * 2, "unit quaternions"),
        ("scales", lambda t: -t, "scales must be positive"),
        ("opacities", lambda t: t + 1, r"opacities must lie in \(0, 1\)"),
        ("colors", lambda t: t - 2, r"colors must lie in \[0, 1\]"),
    ],
)
def test_validate_names_the_bad_field(field, corrupt, message):
    kwargs = _fields(random_gaussians(5))
    kwargs[field] = corrupt(kwargs[field])
    with pytest.raises(ValueError, match=message):
        Gaussians(**kwargs).validate()


def test_batching_slicing_and_concatenation():
    a, b = random_gaussians(7, seed=1), random_gaussians(5, seed=2)
    joined = Gaussians.cat([a, b])
    assert joined.num_gaussians == 12 and not joined.is_batched
    torch.testing.assert_close(joined[7:].means, b.means)
    batch = Gaussians.stack([a, random_gaussians(7, seed=3)])
    assert batch.is_batched and batch.batch_size == 2 and batch.num_gaussians == 7
    torch.testing.assert_close(batch[0].colors, a.colors)
    assert Gaussians.cat([batch, batch]).means.shape == (2, 14, 3)
    assert a.batched().means.shape == (1, 7, 3)
    assert a.to(torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="mix batched and unbatched"):
        Gaussians.cat([a, batch])


def test_ply_round_trip_and_independent_reader(tmp_path):
    g = random_gaussians(500, seed=4)
    path = tmp_path / "head.ply"
    save_ply(g, path)
    loaded = load_ply(path)
    for name in FIELDS:
        torch.testing.assert_close(getattr(loaded, name), getattr(g, name), atol=1e-6, rtol=1e-5)

    vertex = PlyData.read(str(path))["vertex"]
    assert tuple(p.name for p in vertex.properties) == PLY_PROPERTIES
    assert all(p.val_dtype in ("f4", "float32", "<f4") for p in vertex.properties)
    np.testing.assert_allclose(vertex["x"], g.means[:, 0].numpy(), atol=0)
    np.testing.assert_allclose(vertex["f_dc_1"], (g.colors[:, 1].numpy() - 0.5) / SH_C0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(vertex["scale_2"], np.log(g.scales[:, 2].numpy()), rtol=1e-6, atol=1e-6)
    opacity = g.opacities.double().numpy()
    np.testing.assert_allclose(vertex["opacity"], np.log(opacity / (1 - opacity)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vertex["rot_0"], g.quats[:, 0].numpy(), atol=1e-6)


def test_ply_reader_accepts_other_layouts(tmp_path):
    """A third-party file: extra SH properties, reordered columns, ASCII."""
    g = random_gaussians(3, seed=5)
    names = ["x", "y", "z", "opacity", "f_dc_0", "f_dc_1", "f_dc_2", "f_rest_0"] + [f"scale_{i}" for i in range(3)]
    names += [f"rot_{i}" for i in range(4)]
    rows = []
    for i in range(3):
        logit = np.log(g.opacities[i].item() / (1 - g.opacities[i].item()))
        dc = ((g.colors[i] - 0.5) / SH_C0).tolist()
        rows.append(g.means[i].tolist() + [logit] + dc + [0.3] + g.scales[i].log().tolist() + g.quats[i].tolist())
    header = ["ply", "format ascii 1.0", "comment made by hand", "element vertex 3"]
    header += [f"property float {n}" for n in names] + ["end_header"]
    path = tmp_path / "ascii.ply"
    path.write_text("\n".join(header + [" ".join(f"{v:.9g}" for v in r) for r in rows]) + "\n")
    loaded = load_ply(path)
    torch.testing.assert_close(loaded.means, g.means, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loaded.colors, g.colors, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a PLY"),
        (b"hello world\n", "not a PLY"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\nproperty float x\n", "no 'end_header'"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n", "lacks the 3DGS"),
        (b"ply\nformat binary_big_endian 1.0\nelement vertex 1\n"
         + b"".join(f"property float {p}\n".encode() for p in PLY_PROPERTIES) + b"end_header\n", "unsupported PLY format"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n"
         + b"".join(f"property float {p}\n".encode() for p in PLY_PROPERTIES) + b"end_header\n" + b"\0" * 40, "truncated"),
    ],
)
def test_malformed_ply_raises_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_ply(path)


def test_splat_records_sorted_and_quantised(tmp_path):
    g = random_gaussians(200, seed=6)
    path = tmp_path / "head.splat"
    save_splat(g, path)
    assert path.stat().st_size == 32 * 200
    loaded = load_splat(path)
    importance = loaded.scales.prod(-1) * loaded.opacities
    assert (importance[:-1] >= importance[1:] - 2 / 255 * importance.max()).all()
    order = torch.argsort(-(g.scales.prod(-1) * g.opacities), stable=True)
    torch.testing.assert_close(loaded.means, g.means[order])
    torch.testing.assert_close(loaded.colors, g.colors[order], atol=1 / 255, rtol=0)
    assert ((loaded.quats - g.quats[order]).abs().max() < 0.02) or ((loaded.quats + g.quats[order]).abs().max() < 0.02)
    (tmp_path / "bad.splat").write_bytes(b"\0" * 33)
    with pytest.raises(ValueError, match="32-byte records"):
        load_splat(tmp_path / "bad.splat")


def test_writers_refuse_batches(tmp_path):
    with pytest.raises(ValueError, match="batch of 2"):
        save_ply(random_gaussians(4, batch=2), tmp_path / "x.ply")
    save_ply(random_gaussians(4, batch=1), tmp_path / "one.ply")
    assert load_ply(tmp_path / "one.ply").num_gaussians == 4


def test_transformed_moves_means_orientations_and_sizes():
    import math

    from perchead.geometry.gaussians import matrix_to_quaternion

    def quat_matrix(q):  # wxyz → [.., 3, 3]
        w, x, y, z = q.unbind(-1)
        rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
        return torch.stack(rows, -1).reshape(*q.shape[:-1], 3, 3)

    g = random_gaussians(50, seed=3)
    c, s = math.cos(1.1), math.sin(1.1)
    rotation = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]) @ torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])  # a yaw after 180° about X
    torch.testing.assert_close(quat_matrix(matrix_to_quaternion(rotation)), rotation, atol=1e-6, rtol=0)
    h = g.transformed(rotation, 2.5, translation=torch.tensor([0.0, 1.0, 0.0])).validate()
    torch.testing.assert_close(h.means, 2.5 * g.means @ rotation.T + torch.tensor([0.0, 1.0, 0.0]))
    cov = quat_matrix(g.quats) @ torch.diag_embed(g.scales**2) @ quat_matrix(g.quats).transpose(-1, -2)
    cov_h = quat_matrix(h.quats) @ torch.diag_embed(h.scales**2) @ quat_matrix(h.quats).transpose(-1, -2)
    torch.testing.assert_close(cov_h, 2.5**2 * rotation @ cov @ rotation.T, atol=1e-6, rtol=1e-4)
    assert torch.equal(h.colors, g.colors) and torch.equal(h.opacities, g.opacities)
    with pytest.raises(ValueError, match="proper"):
        g.transformed(torch.diag(torch.tensor([1.0, 1.0, -1.0])))  # a mirror
    with pytest.raises(ValueError, match="positive"):
        g.transformed(torch.eye(3), 0.0)
