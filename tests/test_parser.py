"""Tests of the face-parser training recipe in perchead.training.parser (supplement §8): data from a multi-view
folder, class-balanced loss, label-consistent augmentation, and a short training run."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from perchead.geometry.segmentation import CLASSES, FLIP_PERMUTATION, NUM_CLASSES


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from perchead.data.multiview import export_synthetic

    root = tmp_path_factory.mktemp("mv")
    export_synthetic(str(root), seeds=[0, 1], views_per_subject=2, image_size=32, density=0.3)
    return root


def test_load_parser_data_from_exported_folder(tiny_folder):
    from perchead.training.parser import load_parser_data

    images, labels = load_parser_data(tiny_folder, 32)
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4, 32, 32)
    assert images.dtype == torch.uint8 and labels.dtype == torch.uint8
    first = np.array(Image.open(tiny_folder / "synthetic-0" / "labels" / "0000.png"))
    assert np.array_equal(labels[0].numpy(), first)
    rgb = np.array(Image.open(tiny_folder / "synthetic-0" / "images" / "0000.png").convert("RGB"))
    assert np.abs(images[0].permute(1, 2, 0).numpy().astype(int) - rgb.astype(int)).max() <= 1
    assert len(torch.unique(labels)) > 3  # several classes present
    # resized on load; only the first subject
    images64, labels64 = load_parser_data(tiny_folder, 64, max_subjects=1)
    assert images64.shape == (2, 3, 64, 64) and labels64.shape == (2, 64, 64)
    assert set(torch.unique(labels64).tolist()) <= set(range(NUM_CLASSES)) | {255}


def test_load_parser_data_errors(tmp_path):
    from perchead.training.parser import load_parser_data

    with pytest.raises(ValueError, match="does not exist"):
        load_parser_data(tmp_path / "missing", 32)


def test_class_weights_inverse_sqrt_frequency():
    from perchead.training.parser import IGNORE, class_weights

    labels = torch.tensor([0] * 900 + [1] * 90 + [4] * 10 + [IGNORE] * 500)
    w = class_weights(labels, clip=(1e-3, 1e3))
    freq = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    freq[[0, 1, 4]] = torch.tensor([0.9, 0.09, 0.01], dtype=torch.float64)
    expect = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    expect[[0, 1, 4]] = freq[[0, 1, 4]] ** -0.5
    expect /= (freq * expect).sum()
    torch.testing.assert_close(w, expect.float())
    assert float((freq * w.double()).sum()) == pytest.approx(1.0, rel=1e-5)  # pixel-weighted mean 1
    assert w[4] > w[1] > w[0] and (w[[2, 3, 5]] == 0).all()  # rarer = heavier; absent classes 0
    clipped = class_weights(labels, clip=(1.0, 2.0))  # unclipped: 0.78, 2.47, 7.41
    assert clipped[0] == pytest.approx(1.0) and clipped[1] == clipped[4] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="labelled pixel"):
        class_weights(torch.full((4,), IGNORE))


def test_flip_swaps_left_right_labels():
    from perchead.training.parser import IGNORE, _augment

    labels = torch.zeros(32, 8, 8, dtype=torch.long)
    labels[:, 2, 1] = CLASSES.index("l_eye")
    labels[:, 2, 6] = CLASSES.index("r_eye")
    labels[:, 1, 0] = CLASSES.index("l_brow")
    labels[:, 4, 7] = CLASSES.index("r_ear")
    labels[:, 6, 3] = CLASSES.index("u_lip")
    labels[:, 7, 0] = IGNORE
    images = torch.rand(1, 3, 8, 8).expand(32, 3, 8, 8).clone()
    images[:, :, 0] = 1.0  # white background row
    out_images, out_labels = _augment(images, labels, torch.Generator().manual_seed(0))
    perm = torch.tensor(FLIP_PERMUTATION)
    flipped = 0
    for i in range(32):
        if torch.equal(out_labels[i], labels[i]):
            continue
        flipped += 1
        assert out_labels[i, 2, 6] == CLASSES.index("r_eye") and out_labels[i, 2, 1] == CLASSES.index("l_eye")
        assert out_labels[i, 1, 7] == CLASSES.index("r_brow") and out_labels[i, 4, 0] == CLASSES.index("l_ear")
        assert out_labels[i, 6, 4] == CLASSES.index("u_lip") and out_labels[i, 7, 7] == IGNORE
        known = labels[i].flip(-1) != IGNORE
        assert torch.equal(out_labels[i][known], perm[labels[i].flip(-1)[known]])
        # the image is flipped with its labels (background pixels are not jittered)
        bg = out_labels[i] == 0
        assert torch.equal(out_images[i][:, bg], images[i].flip(-1)[:, bg])
    assert 4 < flipped < 28


def test_random_crops_keep_image_and_labels_aligned():
    from perchead.training.parser import _random_crops

    labels = torch.randint(0, NUM_CLASSES, (6, 64, 64))
    images = labels[:, None].expand(6, 3, 64, 64).to(torch.uint8)  # the image encodes its own labels
    x, y = _random_crops(images, labels, 32, torch.Generator().manual_seed(1))
    assert x.shape == (6, 3, 32, 32) and y.shape == (6, 32, 32)
    assert torch.equal(x[:, 0].long(), y)
    with pytest.raises(ValueError, match="crop size"):
        _random_crops(images, labels, 96, torch.Generator())


def test_parser_loss_upsamples_logits_to_labels():
    from perchead.training.parser import IGNORE, parser_loss

    logits = torch.randn(2, NUM_CLASSES, 8, 8)  # SegFormer's 1/4 resolution
    labels = torch.randint(0, NUM_CLASSES, (2, 32, 32))
    labels[:, :4] = IGNORE
    weights = torch.rand(NUM_CLASSES) + 0.5
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    expect = F.cross_entropy(up, labels, weight=weights, ignore_index=IGNORE)
    torch.testing.assert_close(parser_loss(logits, labels, weights, dice_weight=0.0), expect)
    # a perfect prediction has (almost) zero Dice + cross-entropy
    perfect = F.one_hot(labels.clamp(max=NUM_CLASSES - 1), NUM_CLASSES).permute(0, 3, 1, 2).float() * 50
    assert parser_loss(perfect, labels, weights, dice_weight=0.5) < 1e-3


def test_parser_task_from_folder_lowers_loss(tiny_folder, tmp_path):
    from perchead.models.face_parser import FaceParser
    from perchead.training.config import TrainConfig
    from perchead.training.train import train

    torch.set_num_threads(1)
    config = TrainConfig.preset_defaults("tiny", task="parser", data=str(tiny_folder), output=str(tmp_path),
                                         phase1_steps=15, options={"density": 0.3})
    train(config, progress=False)
    losses = [json.loads(line)["total"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 15 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["train_images"] == 4 and summary["data_source"] == str(tiny_folder)
    assert list(summary["val_class_iou"]) == list(CLASSES)
    assert all(v is None or 0.0 <= v <= 1.0 for v in summary["val_class_iou"].values())
    assert summary["val_class_iou"]["background"] > 0.0
    assert len(summary["class_weights"]) == NUM_CLASSES and summary["seconds_per_step"] > 0
    assert FaceParser.from_pretrained(tmp_path).parse(torch.rand(3, 32, 32)).shape == (32, 32)
    with pytest.raises(ValueError, match="crop_size"):
        train(TrainConfig.preset_defaults("tiny", task="parser", data=str(tiny_folder), output=str(tmp_path / "x"),
                                          options={"crop_size": 48}), progress=False)


def test_parser_task_from_rendered_heads_through_the_cli(tmp_path):
    from perchead.models.face_parser import FaceParser
    from perchead.training.train import main

    main(["--task", "parser", "--preset", "tiny", "--output", str(tmp_path), "--steps", "12", "--no-progress",
          "--options", json.dumps({"n_heads": 2, "views_per_head": 2, "density": 0.3})])
    losses = [json.loads(line)["total"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    summary = json.loads((tmp_path / "training.json").read_text())
    assert summary["data_source"] == "rendered" and summary["train_images"] == 4
    assert 0.0 <= summary["val_pixel_accuracy"] <= 1.0 and 0.0 <= summary["val_mean_iou"] <= 1.0
    assert FaceParser.from_pretrained(tmp_path).parse(torch.rand(3, 32, 32)).shape == (32, 32)
