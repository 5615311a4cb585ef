"""Tests for perchead.photo.label_map: the 19-class map of a model input from its face-mesh landmarks and matte."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from perchead.photo import faces, label_map
from perchead.photo.preprocess import preprocess
from test_faces import SIZE, _project_template, portrait


def _frontal_landmarks(size: int = 128) -> np.ndarray:
    """The calibrated landmarks of a frontal view, filled in for every contour index by nearest neighbours
    of a template face drawn to scale (enough for the polygons to be well formed)."""
    marks = _project_template(0, 0, 0, size=size, radius=0.7)
    index = sorted(faces.FACE_POINTS_3D)
    known = marks[index, :2]
    centre = known.mean(0)
    rng = np.random.default_rng(0)
    for i in range(468):  # every other landmark: somewhere on the face, near the centre
        if i not in faces.FACE_POINTS_3D:
            marks[i, :2] = centre + rng.normal(0, 3, 2)
    for i, contour in enumerate(label_map.FACE_OVAL):  # a proper oval around the face
        angle = 2 * math.pi * i / len(label_map.FACE_OVAL) - math.pi / 2
        marks[contour, :2] = centre + np.array([0.3 * size * math.cos(angle), 0.38 * size * math.sin(angle)])
    return marks


def test_label_map_from_landmarks_on_a_tiny_input():
    size = 128
    marks = _frontal_landmarks(size)
    rgb = np.full((size, size, 3), 255, np.uint8)
    matte = np.zeros((size, size), np.float32)
    cv2.ellipse(matte, (64, 60), (44, 56), 0, 0, 360, 1.0, -1)
    cv2.rectangle(matte, (20, 110), (108, 127), 1.0, -1)
    rgb[matte > 0.5] = (200, 160, 140)
    rgb[:30][matte[:30] > 0.5] = (60, 40, 20)  # dark hair on top
    labels = label_map.photo_label_map(rgb, matte, marks)
    assert labels.shape == (size, size) and labels.dtype == np.uint8
    assert labels[matte < 0.5].max() == 0  # background stays background
    present = set(np.unique(labels).tolist())
    assert {1, 13}.issubset(present)
    parsed = np.full((size, size), 13, np.uint8)  # a parser that sees only hair: the landmarks decide inside the face
    refined = label_map.photo_label_map(rgb, matte, marks, parsed)
    centre = marks[faces.NOSE_TIP, :2].round().astype(int)
    assert refined[centre[1], centre[0]] != 13 and (refined[matte > 0.5] == 13).any()  # hair stays outside


def test_real_portrait_label_map_has_the_face_parts(analyzer):
    result = preprocess(portrait("astronaut.png"), size=SIZE)
    labels = result.label_map()
    assert labels.shape == (SIZE, SIZE) and labels.dtype == torch.int64
    present = set(torch.unique(labels).tolist())
    assert {0, 1, 2, 4, 5, 6, 7, 11, 12, 13}.issubset(present), present
    # the subject's left eye (class 4) is on the image's right in a frontal photo
    left_x = torch.nonzero(labels == 4)[:, 1].float().mean()
    right_x = torch.nonzero(labels == 5)[:, 1].float().mean()
    assert left_x > right_x
