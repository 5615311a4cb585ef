"""Tests for perchead.export.turntable: turntable cameras, batched rendering, and a valid H.264 mp4 on disk."""

from __future__ import annotations

import imageio
import numpy as np
import pytest
import torch

from perchead.geometry.cameras import camera_centers
from perchead.export.turntable import TurntableConfig, make_turntable, render_frames, turntable_cameras, write_mp4


@pytest.fixture(scope="module")
def head():
    from perchead.data.synthetic import make_head, split_seeds

    return make_head(split_seeds("test")[0], density=0.3).gaussians


def renderer(gaussians, cameras):
    from perchead.render import render

    return render(gaussians, cameras.viewmats, cameras.Ks, cameras.width, cameras.height, background=1.0).rgb


def test_turntable_cameras_orbit_once():
    config = TurntableConfig(n_frames=12, size=33, elevation_deg=8.0, elevation_wobble_deg=4.0)
    cameras = turntable_cameras(config)
    assert len(cameras) == 12 and cameras.width == cameras.height == 34  # even for yuv420p
    centres = camera_centers(cameras.viewmats)  # [12, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((12,), config.radius), atol=1e-5)
    azimuths = torch.rad2deg(torch.atan2(centres[:, 0], centres[:, 2])) % 360  # [12]
    assert torch.allclose(azimuths, torch.arange(12.0) * 30, atol=1e-3)  # 0 → 330, no duplicate of 0
    elevations = torch.rad2deg(torch.asin(centres[:, 1] / config.radius))
    assert elevations.min() > 3.9 and elevations.max() < 12.1


def test_render_frames_in_batches_reports_progress(head):
    cameras = turntable_cameras(TurntableConfig(n_frames=5, size=32))
    calls = []
    frames = list(render_frames(renderer, head, cameras, batch_size=2, progress=lambda done, total: calls.append((done, total))))
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert len(frames) == 5 and frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
    # the batched frames equal one-by-one renders
    single = next(render_frames(renderer, head, cameras[3:4], batch_size=1))
    assert np.abs(frames[3].astype(int) - single.astype(int)).max() <= 1


def test_make_turntable_writes_a_valid_h264_mp4(head, tmp_path):
    path = tmp_path / "turntable.mp4"
    calls = []
    config = TurntableConfig(n_frames=10, size=47, fps=10, batch_size=4)
    stats = make_turntable(renderer, head, path, config, progress=lambda done, total: calls.append(done))
    assert stats["frames"] == 10 and stats["bytes"] == path.stat().st_size > 0
    assert calls == [4, 8, 10]
    reader = imageio.get_reader(path)
    meta = reader.get_meta_data()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert meta["size"] == (48, 48) and meta["fps"] == 10
    frames = [frame for frame in reader]
    reader.close()
    assert len(frames) == 10
    # the head turns: the frames differ, and the background stays white
    assert np.abs(frames[0].astype(int) - frames[5].astype(int)).mean() > 2
    assert frames[0][0, 0].min() > 235


def test_make_turntable_uses_the_model_renderer(tmp_path):
    from perchead.models.config import PercHeadConfig
    from perchead.models.perchead import PercHead

    model = PercHead(PercHeadConfig.preset("tiny")).eval()
    with torch.no_grad():
        gaussians = model(torch.ones(1, 3, 64, 64), torch.ones(1, 1, 64, 64))[0]
    path = tmp_path / "model.mp4"
    stats = make_turntable(model, gaussians, path, TurntableConfig(n_frames=4, size=32))
    assert stats["frames"] == 4
    reader = imageio.get_reader(path)
    assert sum(1 for _ in reader) == 4
    reader.close()


def test_write_mp4_rejects_bad_frames(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_mp4([np.zeros((33, 32, 3), np.uint8)], tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match="no frames"):
        write_mp4([], tmp_path / "empty.mp4")
    with pytest.raises(ValueError, match="one size"):
        write_mp4([np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)], tmp_path / "mixed.mp4")
    with pytest.raises(ValueError, match="n_frames"):
        TurntableConfig(n_frames=0)
