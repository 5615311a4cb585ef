"""Tests of perchead.geometry.segmentation (palette, label map <-> colour image) and perchead.models.face_parser (SegFormer)."""

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from perchead.geometry.segmentation import (
    BACKGROUND, CLASSES, FLIP_PERMUTATION, NUM_CLASSES, PALETTE, PALETTE_HEX, color_to_labels, labels_to_color,
    legend, legend_html, legend_markdown, one_hot, resize_labels,
)


def _rgb(c: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in PALETTE[c])


def _naive_nearest(image: Image.Image) -> torch.Tensor:
    x = torch.from_numpy(np.array(image, dtype=np.float32)).reshape(-1, 3)
    return torch.cdist(x, torch.from_numpy(PALETTE.astype(np.float32))).argmin(1)


# ------------------------------------------------------------------------------------------------ palette
def test_classes_and_palette():
    assert CLASSES[0] == "background" and CLASSES[13] == "hair" and CLASSES[18] == "cloth" and NUM_CLASSES == 19
    assert PALETTE.shape == (19, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE.tolist()}) == 19
    d = np.linalg.norm(PALETTE[:, None].astype(float) - PALETTE[None].astype(float), axis=-1)
    assert d[~np.eye(19, dtype=bool)].min() > 90  # far apart: robust to noise and blends
    assert tuple(PALETTE[BACKGROUND]) == (255, 255, 255)  # white background, as everywhere in the project
    luma = PALETTE[1:].astype(float) @ [0.299, 0.587, 0.114]
    assert luma.min() >= 60 and luma.max() <= 220  # readable on a black and on a white canvas
    assert PALETTE_HEX[0] == "#ffffff" and all(len(h) == 7 and h.startswith("#") for h in PALETTE_HEX)
    assert [h for _, h in legend()] == list(PALETTE_HEX) and [n for n, _ in legend()] == list(CLASSES)
    html = legend_html()
    assert all(n in html for n in CLASSES) and all(h in html for h in PALETTE_HEX)
    assert legend_markdown().count("\n") == 20  # header, rule, 19 rows


def test_flip_permutation_swaps_left_and_right():
    names = [CLASSES[i] for i in FLIP_PERMUTATION]
    assert names[CLASSES.index("l_eye")] == "r_eye" and names[CLASSES.index("r_ear")] == "l_ear"
    assert names[CLASSES.index("l_lip")] == "l_lip"  # lower lip, not left
    assert sorted(FLIP_PERMUTATION) == list(range(19))


# ------------------------------------------------------------------------------------------- conversions
def test_round_trip_exact():
    labels = torch.randint(0, 19, (2, 48, 40))
    color = labels_to_color(labels)
    assert color.shape == (2, 48, 40, 3) and color.dtype == np.uint8
    for b in range(2):
        assert torch.equal(color_to_labels(color[b]), labels[b])
        assert torch.equal(color_to_labels(Image.fromarray(color[b])), labels[b])  # PIL
        chw = torch.from_numpy(color[b]).permute(2, 0, 1).float() / 255  # [3, H, W] float
        assert torch.equal(color_to_labels(chw), labels[b])
    with pytest.raises(ValueError, match="0..18"):
        labels_to_color(torch.tensor([[0, 19]]))


def test_antialiased_strokes_only_neighbouring_classes():
    # a hat-coloured stroke and a hair ellipse on skin, drawn 4x larger and box-filtered: every edge pixel
    # is a blend; a skin/hat blend lies near a third colour (eyeglasses), which plain nearest-colour picks
    skin, hat, hair, lip = 1, 14, 13, 11
    im = Image.new("RGB", (256, 256), _rgb(skin))
    draw = ImageDraw.Draw(im)
    draw.line([(10, 15), (240, 200)], fill=_rgb(hat), width=12)
    draw.ellipse([50, 50, 150, 130], fill=_rgb(hair))
    draw.line([(0, 250), (250, 0)], fill=_rgb(lip), width=3)  # thinner than one output pixel
    for resample in (Image.BOX, Image.BILINEAR, Image.LANCZOS):  # LANCZOS rings past both colours
        small = im.resize((64, 64), resample)
        labels = color_to_labels(small)
        assert set(labels.unique().tolist()) <= {skin, hat, hair, lip}
        assert set(_naive_nearest(small).unique().tolist()) - {skin, hat, hair, lip}  # the naive way fails
        assert (labels == hat).sum() > 50 and (labels == hair).sum() > 300


def test_two_colour_blend_takes_nearer_class():
    # every pair (a, b): a row a a a | 75/25 50/50 25/75 | b b b, three rows high so the middle row only
    # sees its own pair; all 171 pairs stacked in one image. Only a and b may appear; the nearer one wins.
    pairs = list(itertools.combinations(range(19), 2))
    rows = []
    for a, b in pairs:
        pa, pb = PALETTE[a].astype(float), PALETTE[b].astype(float)
        row = [pa] * 3 + [0.75 * pa + 0.25 * pb, 0.5 * pa + 0.5 * pb, 0.25 * pa + 0.75 * pb] + [pb] * 3
        rows += [row] * 3
    image = np.array(rows).round().astype(np.uint8)  # [171 * 3, 9, 3]
    labels = color_to_labels(image)
    for k, (a, b) in enumerate(pairs):
        middle = labels[3 * k + 1]
        assert set(middle.tolist()) <= {a, b}, (CLASSES[a], CLASSES[b], middle.tolist())
        assert middle[3] == a and middle[5] == b


def test_jpeg_compressed_map():
    # lossy compression where 19 classes meet in every block corner: chroma bleeds off the blend segments,
    # so a few pixels are foreign at the default tolerance; snap=True (documented) recovers the map
    labels = resize_labels(torch.randint(0, 19, (8, 8)), 128)  # blocks of 16x16 pixels
    buffer = io.BytesIO()
    Image.fromarray(labels_to_color(labels)).save(buffer, "JPEG", quality=90)
    out = color_to_labels(Image.open(buffer), snap=True)
    assert (out == labels).float().mean() > 0.98


def test_foreign_colours_raise_or_snap():
    photo = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))  # [3, H, W] noise "photo"
    with pytest.raises(ValueError, match=r"\d+ of 1024 pixels .* e\.g\. RGB \("):
        color_to_labels(photo)
    snapped = color_to_labels(photo, snap=True)
    flat = photo.permute(1, 2, 0).reshape(-1, 3) * 255  # [H*W, 3]
    nearest = torch.cdist(flat, torch.from_numpy(PALETTE.astype(np.float32))).argmin(1).reshape(32, 32)
    assert snapped.shape == (32, 32) and snapped.min() >= 0 and snapped.max() < 19
    assert (snapped == nearest).float().mean() > 0.8  # the rest: explained as blends of neighbours
    # a foreign patch in a clean map snaps to its nearest palette colour
    image = labels_to_color(torch.ones(16, 16, dtype=torch.long)).copy()
    image[4:12, 4:12] = (10, 250, 10)
    target = int(np.linalg.norm(PALETTE.astype(float) - (10, 250, 10), axis=1).argmin())
    with pytest.raises(ValueError, match=r"^64 of 256 pixels"):
        color_to_labels(image)
    snapped = color_to_labels(image, snap=True)
    assert (snapped[4:12, 4:12] == target).all() and (snapped[:4] == 1).all()
    # one foreign pixel inside a clean map: exactly one reported
    image = labels_to_color(torch.ones(16, 16, dtype=torch.long)).copy()
    image[5, 7] = (10, 250, 10)
    with pytest.raises(ValueError, match=r"^1 of 256 pixels .*\(10, 250, 10\) at \(y=5, x=7\)"):
        color_to_labels(image)


def test_rgba_transparent_is_background():
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)  # fully transparent, colour black underneath
    rgba[5:15, 5:15] = (*_rgb(13), 255)  # opaque hair square
    rgba[4, 5:15] = (*_rgb(13), 128)  # half-transparent anti-aliased edge
    labels = color_to_labels(Image.fromarray(rgba, "RGBA"))
    assert (labels[5:15, 5:15] == 13).all()
    assert (labels[:3] == BACKGROUND).all() and (labels[:, :4] == BACKGROUND).all()
    assert set(labels[4].unique().tolist()) <= {BACKGROUND, 13}
    assert torch.equal(color_to_labels({"composite": rgba, "layers": []}), labels)  # ImageEditor value


def test_size_handling():
    labels = torch.randint(0, 19, (16, 16))
    color = labels_to_color(labels)
    resized = color_to_labels(color, size=32)
    assert resized.shape == (32, 32) and torch.equal(resized[::2, ::2], labels)
    with pytest.raises(ValueError, match="16x16 .* 32x32"):
        color_to_labels(color, size=(32, 32), on_size_mismatch="error")
    assert color_to_labels(color, size=16, on_size_mismatch="error").shape == (16, 16)


def test_one_hot_shapes():
    labels = torch.randint(0, 19, (2, 8, 6))
    oh = one_hot(labels)
    assert oh.shape == (2, 19, 8, 6) and oh.dtype == torch.float32
    assert torch.equal(oh.argmax(1), labels) and torch.all(oh.sum(1) == 1)
    assert one_hot(labels[0]).shape == (1, 19, 8, 6)
    labels[0, 0, 0] = -1  # unknown -> zeros
    assert one_hot(labels)[0, :, 0, 0].sum() == 0
    with pytest.raises(ValueError):
        one_hot(torch.full((4, 4), 19))


# ------------------------------------------------------------------------------------------------ parser
def test_label_mapping_by_name():
    from perchead.models.face_parser import label_mapping

    # jonathandinu/face-parsing today: our order, CelebAMask-HQ file names
    hub = dict(enumerate(["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
                          "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]))
    assert label_mapping(hub).tolist() == list(range(19))
    # an older revision: another order with .png suffixes
    old = {str(i): n for i, n in enumerate(["background", "skin.png", "nose.png", "r_eye.png", "l_eye.png",
                                            "r_brow.png", "l_brow.png", "r_ear.png", "l_ear.png", "mouth.png",
                                            "u_lip.png", "l_lip.png", "neck.png", "hair.png", "neck_l.png",
                                            "cloth.png", "eye_g.png", "hat.png", "ear_r.png"])}
    lut = label_mapping(old)
    assert [CLASSES[i] for i in lut] == ["background", "skin", "nose", "r_eye", "l_eye", "r_brow", "l_brow",
                                         "r_ear", "l_ear", "mouth", "u_lip", "l_lip", "neck", "hair", "necklace",
                                         "cloth", "eyeglasses", "hat", "earring"]
    with pytest.raises(ValueError, match="tail"):
        label_mapping({0: "background", 1: "tail"})


@pytest.fixture(scope="module")
def tiny_parser():
    from transformers import SegformerForSemanticSegmentation

    from perchead.models.face_parser import FaceParser, segformer_config

    torch.manual_seed(0)
    return FaceParser(SegformerForSemanticSegmentation(segformer_config("tiny", image_size=64)), (64, 64))


def test_face_parser_output(tiny_parser):
    labels = tiny_parser.parse(torch.rand(3, 50, 70))
    assert labels.shape == (50, 70) and labels.dtype == torch.long
    assert labels.min() >= 0 and labels.max() < 19
    batch = tiny_parser.parse(torch.rand(2, 3, 40, 40))
    assert batch.shape == (2, 40, 40)
    pil = Image.fromarray((np.random.default_rng(0).random((30, 20, 3)) * 255).astype(np.uint8))
    assert tiny_parser.parse(pil).shape == (30, 20)
    mask = torch.zeros(1, 50, 70)
    mask[:, 10:40, 20:50] = 1
    masked = tiny_parser.parse(torch.rand(3, 50, 70), mask=mask)
    assert (masked[:10] == BACKGROUND).all() and (masked[:, :20] == BACKGROUND).all()


def test_face_parser_remaps_model_order(tiny_parser):
    from transformers import SegformerForSemanticSegmentation

    from perchead.models.face_parser import FaceParser

    # the same weights with the classes listed in reverse: the parser must give the same map
    config = tiny_parser.model.config.to_dict()
    config["id2label"] = {i: CLASSES[18 - i] for i in range(19)}
    config["label2id"] = {n: i for i, n in config["id2label"].items()}
    reordered = SegformerForSemanticSegmentation(type(tiny_parser.model.config).from_dict(config))
    state = tiny_parser.model.state_dict()
    for k in ("decode_head.classifier.weight", "decode_head.classifier.bias"):
        state[k] = state[k].flip(0)
    reordered.load_state_dict(state)
    image = torch.rand(3, 48, 48)
    assert torch.equal(FaceParser(reordered, (64, 64)).parse(image), tiny_parser.parse(image))


def test_face_parser_save_load_round_trip(tiny_parser, tmp_path):
    from perchead.models.face_parser import FaceParser

    tiny_parser.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = FaceParser.from_pretrained(tmp_path)
    assert loaded.image_size == (64, 64)
    image = torch.rand(3, 40, 40)
    torch.testing.assert_close(loaded.logits(image[None]), tiny_parser.logits(image[None]))


def test_face_parser_missing_model_errors(tmp_path, monkeypatch):
    from perchead.models.face_parser import FaceParser

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="jonathandinu/face-parsing.*HF_HUB_OFFLINE"):
        FaceParser.from_pretrained("jonathandinu/face-parsing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FaceParser.from_pretrained(str(tmp_path / "missing" / "parser"))


def test_mask_iou():
    from perchead.geometry.segmentation import mask_iou

    a = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1, 0]], dtype=torch.bool)
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_iou(a, a) == 1.0 and mask_iou(a & False, b & False) is None
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(a, b[:, :3])
