"""Tests for perchead.export.outputs: one writer for every head, and the copy for web splat viewers."""

from __future__ import annotations

import math

import pytest
import torch

from perchead.geometry.gaussians import Gaussians, load_ply, load_splat
from perchead.models.config import PercHeadConfig
from perchead.models.perchead import PercHead
from perchead.export.files import VIEWER_AZIMUTH_RAD, VIEWER_ELEVATION_RAD, VIEWER_SCALE, to_web_viewer
from perchead.export.outputs import write_outputs


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PercHead(PercHeadConfig.preset("tiny")).eval()


def test_web_viewer_copy_is_upright_faces_the_start_camera_at_eye_level_and_is_enlarged():
    # three marker Gaussians: the crown (+Y), the nose tip (+Z) and the head's left (+X), canonical frame
    points = torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 0.1], [0.1, 0.0, 0.0]])
    g = Gaussians(means=points, quats=torch.tensor([[1.0, 0, 0, 0]] * 3), scales=torch.full((3, 3), 0.01),
                  opacities=torch.full((3,), 0.5), colors=torch.full((3, 3), 0.5))
    crown, nose, left = to_web_viewer(g).means
    assert crown[1] < 0 and crown.norm() == pytest.approx(0.1 * VIEWER_SCALE)  # up is −Y in gsplat.js
    # gsplat.js's orbit camera starts at (sin α cos β, −sin β, −cos α cos β)·r: the nose points straight at it
    # (the face seen at eye level, not from above), and the crown is square to the view (upright on screen)
    a, b = VIEWER_AZIMUTH_RAD, VIEWER_ELEVATION_RAD
    camera = torch.tensor([math.sin(a) * math.cos(b), -math.sin(b), -math.cos(a) * math.cos(b)])
    torch.testing.assert_close(nose / nose.norm(), camera)
    assert float(crown @ camera) == pytest.approx(0.0, abs=1e-6)
    assert torch.cross(camera, left / left.norm(), dim=0)[1] < 0  # no mirror: the left stays on the viewer's right


def test_write_outputs_files_viewer_copy_and_early_results(model, tmp_path):
    gaussians = model(torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 64))
    early = []
    out = write_outputs(model, gaussians, tmp_path, turntable_frames=4, turntable_size=64, view_size=32,
                        timings={"encode": 0.5, "total": 9.0}, notes=["from the pipeline"], before_turntable=early.append)
    n = model.config.template.n_gaussians
    assert sorted(out.files) == ["glb", "ply", "splat"] and load_ply(out.files["ply"]).num_gaussians == n
    assert out.viewer.name == "head_viewer.splat" and out.viewer.stat().st_size == 32 * n
    written, expected = load_splat(out.viewer).means, to_web_viewer(load_ply(out.files["ply"])).means
    by_x = lambda m: m[torch.argsort(m[:, 0])]  # noqa: E731 - .splat records are sorted by size
    torch.testing.assert_close(by_x(written), by_x(expected), atol=1e-5, rtol=0)
    assert len(early) == 1 and early[0].video is None and early[0].files == out.files and len(early[0].views) == 7
    assert out.video is not None and out.video.stat().st_size > 0
    assert out.timings["total"] == pytest.approx(sum(v for k, v in out.timings.items() if k != "total"))
    assert out.timings["encode"] == 0.5 and out.notes[0] == "from the pipeline"


def test_write_outputs_refuses_a_batch(model, tmp_path):
    gaussians = model(torch.rand(2, 3, 64, 64), torch.ones(2, 1, 64, 64))
    with pytest.raises(ValueError, match="one head"):
        write_outputs(model, gaussians, tmp_path, turntable_frames=0, view_size=0)
