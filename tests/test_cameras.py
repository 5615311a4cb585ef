"""Camera conventions: OpenCV axes, orbit handedness (which side azimuth +90 shows), elevation sign."""

import math

import pytest
import torch

from perchead.geometry.cameras import camera_centers, intrinsics, look_at, orbit_cameras, project_points

ORIGIN = torch.zeros(1, 3)


def test_origin_projects_to_image_centre_from_every_orbit_view():
    cams = orbit_cameras([0, 45, 90, 180, -90, 30], [0, 10, -20, 30, 89.9, -90], radius=0.7, size=(320, 240))
    uv, depth = project_points(ORIGIN, cams.viewmats, cams.Ks)
    torch.testing.assert_close(uv[:, 0], torch.tensor([[160.0, 120.0]]).expand(6, 2), atol=1e-4, rtol=0)
    torch.testing.assert_close(depth[:, 0], torch.full((6,), 0.7), atol=1e-5, rtol=0)


def test_azimuth_zero_looks_at_the_face():
    cams = orbit_cameras([0.0])
    assert cams.centers[0, 2] == pytest.approx(0.7, abs=1e-6)  # camera on +Z, in front of the face
    # The nose (+Z) is nearer than the back of the head (-Z).
    _, depth = project_points(torch.tensor([[0, 0, 0.1], [0, 0, -0.1]]), cams.viewmats, cams.Ks)
    assert depth[0, 0] < depth[0, 1]


def test_azimuth_plus_90_shows_the_heads_own_left_side():
    # A head facing +Z with +Y up has its own left hand toward +X (right-handed frame).
    left_ear, right_ear, nose = [0.08, 0, 0], [-0.08, 0, 0], [0, 0, 0.1]
    cams = orbit_cameras([90.0])
    uv, depth = project_points(torch.tensor([left_ear, right_ear, nose]), cams.viewmats, cams.Ks)
    assert depth[0, 0] < depth[0, 1]  # the left ear faces the camera
    assert uv[0, 2, 0] < 128  # the face points to the image's left
    # Seen from the front, the head's own left appears on the image's right (as when facing a person).
    uv_front, _ = project_points(torch.tensor([left_ear]), orbit_cameras([0.0]).viewmats, orbit_cameras([0.0]).Ks)
    assert uv_front[0, 0, 0] > 128


def test_positive_elevation_looks_down_from_above():
    cams = orbit_cameras([0.0], [30.0])
    assert cams.centers[0, 1] == pytest.approx(0.35, abs=1e-5)
    uv, _ = project_points(torch.tensor([[0, 0.1, 0.0]]), cams.viewmats, cams.Ks)
    assert uv[0, 0, 1] < 128  # image y points down, the crown appears above the centre
    # Straight above: the face (+Z) appears at the image bottom, as the limit of small azimuth 0 tilts.
    top = orbit_cameras([0.0], [90.0])
    uv, _ = project_points(torch.tensor([[0, 0, 0.1]]), top.viewmats, top.Ks)
    assert uv[0, 0, 1] > 128


def test_viewmats_are_rigid_and_centres_recovered():
    eye = torch.tensor([[0.3, 0.2, 0.5], [-0.4, -0.1, 0.2]])
    viewmats = look_at(eye, torch.zeros(2, 3))
    R = viewmats[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0)
    assert torch.allclose(torch.linalg.det(R), torch.ones(2))
    torch.testing.assert_close(camera_centers(viewmats), eye)


def test_intrinsics_and_bad_arguments():
    K = intrinsics(90.0, 200, 100)
    assert K[0, 0].item() == pytest.approx(100.0) and K[0, 2] == 100 and K[1, 2] == 50
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics(180.0, 10)
    with pytest.raises(ValueError, match="elevations"):
        orbit_cameras([0.0], [95.0])
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0, 1.0, 0]), torch.zeros(3))
    cams = orbit_cameras([0, 90, 180])
    assert len(cams[1:]) == 2 and cams[0].viewmats.shape == (1, 4, 4)
    assert math.isclose(float(cams.Ks[0, 0, 0]), 128 / math.tan(math.radians(15)), rel_tol=1e-6)
