"""Tests for perchead.photo.framing: the silhouette correction of the landmark pose's crop.

The feature extraction and the regressor are tested on made-up mattes (mirror symmetry, refusals,
clipping); the whole refinement on synthetic renders with known cameras and on a real portrait (skipped
with the reason when the face models or the portraits are absent).
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from PIL import Image

from perchead.data import portraits
from perchead.photo import framing
from perchead.photo.preprocess import preprocess


S = framing.SIZE


def _made_up_view(shift: float = 0.0):
    """An elliptical head silhouette with a neck, landmarks (with depth) spread over its face and key
    points. Returns (matte ``[S, S]``, landmarks ``[468, 3]``, key points ``[6, 2]``, valid ``[S, S]``)."""
    matte = np.zeros((S, S), np.float32)
    cx = S / 2 + shift
    cv2.ellipse(matte, (int(cx), S // 2 - 10), (50, 64), 0, 0, 360, 1.0, -1)  # head
    cv2.rectangle(matte, (int(cx) - 25, S // 2 + 40), (int(cx) + 25, S - 1), 1.0, -1)  # neck
    rng = np.random.default_rng(0)
    marks = np.stack([cx + 8 + rng.normal(0, 14, 468), S / 2 + rng.normal(0, 16, 468), rng.normal(0, 10, 468)], 1)  # [468, 3]
    marks[152, :2] = (cx + 8, S / 2 + 45)  # chin
    points = np.array([[cx - 12, S / 2 - 8], [cx + 24, S / 2 - 8], [cx + 12, S / 2 + 10], [cx + 10, S / 2 + 25],
                       [cx - 45, S / 2], [cx + 48, S / 2]])  # [6, 2]
    return matte, marks, points, np.ones((S, S), bool)


def _mirror(matte, marks, points, valid):
    """The view of the mirrored photo, as the face networks report it: the subject's sides swap (the mesh's
    left and right points of :data:`framing.PAIRS`, the ear key points)."""
    marks, points = marks.copy(), points.copy()
    marks[:, 0], points[:, 0] = S - marks[:, 0], S - points[:, 0]
    points[[4, 5]] = points[[5, 4]]
    right, left = np.array(framing.PAIRS).T
    marks[np.r_[right, left]] = marks[np.r_[left, right]]
    return np.ascontiguousarray(matte[:, ::-1]), marks, points, np.ascontiguousarray(valid[:, ::-1])


def test_features_are_mirror_symmetric_and_so_is_the_correction():
    view = _made_up_view(shift=6.0)
    a, mirrored_a = framing.features(*view, yaw_deg=25.0, pitch_deg=5.0, reprojection_px=2.0)
    b, mirrored_b = framing.features(*_mirror(*view), yaw_deg=-25.0, pitch_deg=5.0, reprojection_px=2.0)
    assert not mirrored_a and mirrored_b
    assert a.shape == (framing.FEATURES,)
    assert np.allclose(a, b, atol=1.5 / (S / framing.ENLARGE))  # the same view, up to a pixel of rounding
    model = framing.load_model()
    assert model is not None, "perchead/photo/framing_model.json is missing"
    p, q = framing.predict(model, a, False), framing.predict(model, a, True)
    assert (p.dx, p.dyaw_deg) == (-q.dx, -q.dyaw_deg) and (p.dy, p.log_scale) == (q.dy, q.log_scale)


def test_depth_and_height_features_follow_the_face_mesh():
    matte, marks, points, valid = _made_up_view()
    flat, _ = framing.features(matte, marks[:, :2], points, valid, 20.0, 0.0, 1.0)  # no depth given: taken as 0
    zero = marks.copy()
    zero[:, 2] = 0.0
    assert np.array_equal(flat, framing.features(matte, zero, points, valid, 20.0, 0.0, 1.0)[0])
    deep, _ = framing.features(matte, marks, points, valid, 20.0, 0.0, 1.0)
    changed = np.nonzero(deep != flat)[0]
    assert len(changed) > 0 and len(changed) <= len(framing.DEPTHS)  # only the depth block reads the third column
    raised = marks.copy()
    raised[13, 1] -= 6.0  # the upper lip 6 px higher: its height below the eyes and the brows shrinks
    moved = framing.features(matte, raised, points, valid, 20.0, 0.0, 1.0)[0]
    assert 0 < np.count_nonzero(moved != deep) <= 2


def test_features_refuse_cut_or_missing_silhouettes_and_bad_shapes():
    matte, marks, points, valid = _made_up_view()
    cut = valid.copy()
    cut[:60] = False  # the photo ends above the head: its top is cut
    assert framing.features(matte * cut, marks, points, cut, 10.0, 0.0, 1.0) is None
    low = valid.copy()
    low[-20:] = False  # the photo ends below the chin: fine
    assert framing.features(matte * low, marks, points, low, 10.0, 0.0, 1.0) is not None
    assert framing.features(np.zeros_like(matte), marks, points, valid, 10.0, 0.0, 1.0) is None  # no matte at the face
    with pytest.raises(ValueError):
        framing.features(matte[:100], marks, points, valid, 10.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        framing.features(matte, marks[:68], points, valid, 10.0, 0.0, 1.0)


def test_corrections_are_clipped_and_small_yaw_is_left_to_the_landmarks():
    model = framing.load_model()
    assert model["w1"].shape == (framing.FEATURES, len(model["b1"]))
    for scale in (-50.0, 50.0):  # absurd inputs stay inside the fitted range
        feats = np.asarray(model["mean"]) + scale * np.asarray(model["std"])
        feats[0] = abs(feats[0])
        c = framing.predict(model, feats, False)
        out = np.array([c.dx, c.dy, c.log_scale, c.dyaw_deg])
        assert np.all(out >= model["low"] - 1e-9) and np.all(out <= model["high"] + 1e-9)
    frontal = np.asarray(model["mean"]).copy()
    frontal[0] = math.radians(framing.YAW_RAMP_DEG[0] - 1)
    assert framing.predict(model, frontal, False).dyaw_deg == 0.0


def _render(seed_index: int, yaw: float, pitch: float, radius: float, size: int = 320):
    from perchead.data.synthetic import make_head, render_head, split_seeds
    from perchead.geometry.cameras import orbit_cameras

    out = render_head(make_head(int(split_seeds("test")[seed_index])), orbit_cameras([yaw], [pitch], radius=radius, size=size))
    rgb, alpha = out["rgb"][0].permute(1, 2, 0).numpy(), out["alpha"][0, 0].numpy()  # [S, S, 3], [S, S]
    grey = rgb * alpha[..., None] + 0.45 * (1 - alpha[..., None])  # over grey, as a photo's background
    return (np.clip(grey, 0, 1) * 255).round().astype(np.uint8)


def _framing_errors(result, size: int, radius: float, yaw: float) -> tuple[float, float, float]:
    x0, y0, x1, y1 = result.crop_box
    side = size * 0.7 / radius  # the training frame at this distance, centred on the image centre
    return (math.hypot((x0 + x1) / 2 - size / 2, (y0 + y1) / 2 - size / 2) / side, abs((x1 - x0) / side - 1),
            abs(result.pose.yaw_deg - yaw))


def test_refined_framing_of_turned_synthetic_heads(analyzer):
    cases = [(3, 50.0, 8.0, 1.0), (5, -45.0, -10.0, 1.2), (7, 55.0, 0.0, 1.1), (9, 20.0, 12.0, 0.9)]
    before, after = [], []
    for index, yaw, pitch, radius in cases:
        image = _render(index, yaw, pitch, radius)
        before.append(_framing_errors(preprocess(image, size=64, refine_framing=False), 320, radius, yaw))
        after.append(_framing_errors(preprocess(image, size=64), 320, radius, yaw))
    before, after = np.array(before), np.array(after)  # [4, 3] centre, scale, yaw errors
    assert np.all(after[:, 0] < 0.05) and np.all(after[:, 1] < 0.08) and np.all(after[:, 2] < 10)
    assert after[:, 0].mean() < before[:, 0].mean()


def test_real_portrait_framing_barely_moves(analyzer):
    path = portraits.path("astronaut.png")
    if path is None:
        pytest.skip("test portrait astronaut.png not fetched (python -m perchead.data.portraits)")
    image = np.asarray(Image.open(path).convert("RGB"))
    old, new = preprocess(image, size=64, refine_framing=False), preprocess(image, size=64)
    side = old.crop_box[2] - old.crop_box[0]
    assert max(abs(a - b) for a, b in zip(old.crop_box, new.crop_box)) < 0.06 * side
    assert abs(new.pose.yaw_deg - old.pose.yaw_deg) < 1.0  # a frontal face: the landmarks' yaw stands
    assert new.detector == "mediapipe" and new.mask_source == "network"


def test_the_regressor_is_fitted_as_the_package_reads_it(tmp_path):
    from perchead.training.framing import fit_framing, main

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, framing.FEATURES))
    Y = np.stack([0.1 * X[:, 0], -0.05 * X[:, 1], 0.02 * X[:, 2] + 0.01, 3.0 * np.tanh(X[:, 3])], 1)  # [N, 4]
    (tmp_path / "framing_model.json").write_text(json.dumps(fit_framing(X, Y, hidden=16, steps=400)))
    model = framing.load_model(str(tmp_path / "framing_model.json"))
    error = np.abs(framing.network(model, X) - Y).mean(0) / Y.std(0)  # [4] relative to the targets' spread
    assert error.max() < 0.25, error
    with pytest.raises(SystemExit):
        main(["--heads", "0", "--output", str(tmp_path)])
