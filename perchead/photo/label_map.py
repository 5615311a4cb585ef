"""The 19-class CelebAMask-HQ label map of a photo's model input, drawn from its face-mesh landmarks and its
matte (the editing tab's map of a photo): :func:`photo_label_map` and the landmark contours it fills."""

from __future__ import annotations

import math

import numpy as np

from perchead.photo.faces import CHIN, FOREHEAD, NOSE_TIP


# ------------------------------------------------------------------------------- 19-class label map
# Face-mesh contours (MediaPipe's topology). "left" is the subject's own left (+X, image right when frontal),
# as CelebAMask-HQ's l_eye / l_brow and the synthetic heads' labels.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)


LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)


RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)


LEFT_BROW = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)


RIGHT_BROW = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)


NOSE = (168, 193, 245, 188, 174, 217, 126, 142, 129, 98, 97, 2, 326, 327, 358, 371, 355, 437, 399, 412, 465, 417)


UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191, 78)


LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95, 78)


MOUTH = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)


LEFT_EAR_ANCHOR, RIGHT_EAR_ANCHOR = 454, 234  # face-oval points at the tragion height


def photo_label_map(rgb: np.ndarray, matte: np.ndarray, landmarks: np.ndarray, parsed: np.ndarray | None = None) -> np.ndarray:
    """A 19-class CelebAMask-HQ map of a real photo from its face-mesh landmarks and person matte.

    Eyes, brows, nose, lips and mouth are the landmark polygons and the face oval is skin. Outside the
    oval, without ``parsed``, every matte pixel is skin, hair or cloth by its colour (nearest in Lab to the
    cheeks, to the top of the head and to the bottom of the crop); skin below the chin is the neck, and
    skin in an ellipse beside the oval at the tragion height is an ear. With ``parsed`` (a face parser's
    map of the same crop) the parser decides outside the oval instead, and the landmarks decide inside.

    Args:
        rgb: the model input crop. ``[S, S, 3]`` uint8
        matte: person matte in the crop. ``[S, S]`` float in [0, 1]
        landmarks: face-mesh landmarks in crop pixels. ``[468, 2+]``
        parsed: optional face parser labels of the crop. ``[S, S]`` int in 0..18

    Returns:
        class ids 0..18. ``[S, S]`` uint8
    """
    import cv2

    size = rgb.shape[0]
    pts = np.asarray(landmarks, np.float64)[:, :2]  # [468, 2]
    fg = matte >= 0.5  # [S, S]

    def poly(index) -> np.ndarray:
        canvas = np.zeros((size, size), np.uint8)
        cv2.fillPoly(canvas, [np.round(pts[list(index)] * 4).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=2)
        return canvas.astype(bool)

    oval = poly(FACE_OVAL)
    face_width = float(np.linalg.norm(pts[LEFT_EAR_ANCHOR] - pts[RIGHT_EAR_ANCHOR]))
    chin, top = pts[CHIN], pts[FOREHEAD]
    face_height = max(1e-6, float(np.linalg.norm(top - chin)))
    up = (top - chin) / face_height  # the face's up direction in the crop
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    above_chin = (xx - chin[0]) * up[0] + (yy - chin[1]) * up[1]  # [S, S] pixels along "up"
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)  # [S, S, 3]
    if parsed is not None:
        labels = np.where(fg, np.asarray(parsed), 0).astype(np.uint8)
        fringe = np.isin(labels, (13, 14)) & (above_chin > 0.7 * face_height)  # hair or a hat over the forehead
        labels[oval & fg & ~fringe & (labels != 3)] = 1  # the rest of the face is skin (glasses stay)
    else:
        labels = np.zeros((size, size), np.uint8)
        references = {}
        cheeks = np.zeros((size, size), np.uint8)
        for index in (50, 280, 205, 425, 151):
            cv2.circle(cheeks, tuple(int(v) for v in pts[index].round()), max(1, round(0.04 * face_width)), 1, -1)
        if (cheeks.astype(bool) & fg).any():
            references[1] = np.median(lab[cheeks.astype(bool) & fg], 0)
        crown = fg & ~oval & (above_chin > 1.15 * face_height)
        if crown.sum() > 0.002 * size * size:
            references[13] = np.median(lab[crown], 0)
        rows = np.nonzero(fg.any(1))[0]
        if len(rows):
            low = fg & (yy > rows.max() - 0.08 * size) & (above_chin < -0.3 * face_width)
            if low.sum() > 0.002 * size * size:
                references[18] = np.median(lab[low], 0)
        if references:
            keys = list(references)
            dist = np.stack([np.linalg.norm(lab - references[k], axis=-1) for k in keys])  # [K, S, S]
            nearest = np.asarray(keys, np.uint8)[dist.argmin(0)]  # [S, S]
        else:
            nearest = np.ones((size, size), np.uint8)
        outside = fg & ~oval
        labels[outside] = nearest[outside]
        labels[outside & (labels == 18) & (above_chin > 0)] = 13 if 13 in references else 1  # no cloth above the chin
        labels[outside & (labels == 1) & (above_chin <= 0.05 * face_height)] = 17  # skin below the chin: neck
        labels[oval & fg] = 1
        if 13 in references and 1 in references:  # a fringe over the forehead
            labels[oval & fg & (nearest == 13) & (above_chin > 0.7 * face_height)] = 13
        for anchor, cls in ((LEFT_EAR_ANCHOR, 8), (RIGHT_EAR_ANCHOR, 9)):
            side = pts[anchor] - pts[NOSE_TIP]
            side /= max(1e-6, float(np.linalg.norm(side)))
            centre = pts[anchor] + side * 0.04 * face_width + up * 0.05 * face_height
            ear = np.zeros((size, size), np.uint8)
            angle = math.degrees(math.atan2(up[1], up[0]))
            cv2.ellipse(ear, (tuple(float(v) for v in centre), (0.3 * face_height, 0.12 * face_width), angle), 1, -1)
            labels[ear.astype(bool) & outside & (labels == 1)] = cls
    for index, cls in ((NOSE, 2), (LEFT_BROW, 6), (RIGHT_BROW, 7), (LEFT_EYE, 4), (RIGHT_EYE, 5),
                       (UPPER_LIP, 11), (LOWER_LIP, 12), (MOUTH, 10)):
        labels[poly(index) & fg & (labels != 3)] = cls  # glasses stay over the eyes
    return labels
