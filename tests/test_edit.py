"""Tests for perchead.pipelines.edit: photo → segmentation map, map + text / image style → 3D head (§3.5).

Every model is tiny and random, built and saved here (no downloads): a tiny PercHead turned into an editor
with :meth:`PercHeadEditor.from_base`, the ``tiny`` open_clip style model and a tiny SegFormer parser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.pipelines.edit import Edit, PercHeadEditPipeline, missing_parts
from perchead.photo.load import PreprocessError

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "head0_front.png"  # RGBA render of a held-out synthetic head (alpha = mask)


def make_edit_folder(folder: Path) -> dict:
    """Writes a tiny editing checkpoint folder (``edit/``, ``style/``, ``parser/``) as the app expects it.

    Returns:
        facts about it: ``n_gaussians``, ``image_size``, ``style_dim``.
    """
    from transformers import SegformerForSemanticSegmentation

    from perchead.models.config import PercHeadConfig
    from perchead.models.editor import PercHeadEditor
    from perchead.models.perchead import PercHead
    from perchead.models.face_parser import FaceParser, segformer_config
    from perchead.models.style_encoder import StyleEncoder

    torch.manual_seed(0)
    folder = Path(folder)
    style = StyleEncoder.from_config("tiny")
    style.save_pretrained(folder / "style")
    base = PercHead(PercHeadConfig.preset("tiny"))
    editor = PercHeadEditor.from_base(base, style_dim=style.embed_dim)
    editor.save_pretrained(folder / "edit")
    size = editor.config.render.image_size
    FaceParser(SegformerForSemanticSegmentation(segformer_config("tiny", size)), (size, size)).save_pretrained(
        folder / "parser")
    return {"n_gaussians": editor.config.template.n_gaussians, "image_size": size, "style_dim": style.embed_dim}


def head_map(size: int) -> torch.Tensor:
    """A hand-drawn head: skin oval, hair on top, neck below. ``[size, size]`` long."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    labels = torch.zeros(size, size, dtype=torch.long)
    labels[(x / 0.45) ** 2 + (y / 0.6) ** 2 < 1] = 1  # skin
    labels[((x / 0.5) ** 2 + ((y + 0.15) / 0.6) ** 2 < 1) & (y < -0.35)] = 13  # hair
    labels[(x.abs() < 0.18) & (y > 0.5)] = 17  # neck
    return labels


@pytest.fixture(scope="module")
def edit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("editing")
    return folder, make_edit_folder(folder)


@pytest.fixture(scope="module")
def pipe(edit_folder):
    return PercHeadEditPipeline.from_pretrained(edit_folder[0], device="cpu")


# ------------------------------------------------------------------------------------------------ loading
def test_missing_parts_name_the_folder_and_the_command(tmp_path, edit_folder):
    assert missing_parts(edit_folder[0]) == {}
    missing = missing_parts(tmp_path)
    assert set(missing) == {"edit", "style", "parser"}
    with pytest.raises(FileNotFoundError) as info:
        PercHeadEditPipeline.from_pretrained(tmp_path)
    message = str(info.value)
    for part in ("edit", "style", "parser"):
        command = f"python -m perchead.training.train --task {part}"
        assert str(tmp_path / part) in message and command in message


def test_one_missing_part_is_reported_alone(tmp_path, edit_folder):
    import shutil

    shutil.copytree(edit_folder[0], tmp_path / "copy")
    (tmp_path / "copy" / "parser" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="parser") as info:
        PercHeadEditPipeline.from_pretrained(tmp_path / "copy")
    assert "--task style" not in str(info.value)


def test_style_size_mismatch_is_refused(pipe):
    from perchead.models.style_encoder import StyleEncoder

    other = StyleEncoder.from_config("demo")  # 128-dimensional, the editor expects 32
    with pytest.raises(ValueError, match="not trained together"):
        PercHeadEditPipeline(pipe.editor, other, pipe.parser, device="cpu")


# ------------------------------------------------------------------------------------------------ segment
def test_segment_photo_gives_a_model_size_map_background_outside_the_mask(pipe, edit_folder):
    size = edit_folder[1]["image_size"]
    labels, prep = pipe.segment(str(PHOTO), return_preprocessed=True)
    assert labels.shape == (size, size) and labels.dtype == torch.long
    assert 0 <= int(labels.min()) and int(labels.max()) <= 18
    outside = prep.mask[0, 0] < 0.5  # [S, S]
    assert outside.any() and (labels[outside] == 0).all()
    assert torch.equal(pipe.segment(str(PHOTO)), labels)  # deterministic


def test_segment_real_photo_uses_the_landmark_map_and_the_parser_on_request(pipe, analyzer):
    """A real portrait's map comes from its face landmarks and matte: face parts where the face is (the
    synthetic-trained parser scrambles them on photos); ``source="parser"`` asks for the parser."""
    photo = str(ROOT / "examples" / "photo_astronaut.jpg")
    labels, prep = pipe.segment(photo, return_preprocessed=True)
    assert "map from the face landmarks and the matte" in prep.notes
    expected = prep.label_map()
    expected[prep.mask[0, 0] < 0.5] = 0
    assert torch.equal(labels, expected)
    assert {1, 2, 4, 5, 6, 7, 13, 18} <= set(labels.unique().tolist())  # skin, nose, eyes, brows, hair, cloth
    assert torch.isin(labels, torch.tensor([10, 11, 12])).any()  # the mouth (a 64² map may lose a thin lip)

    def row(*classes: int) -> float:  # mean image row of some classes
        return float(torch.isin(labels, torch.tensor(classes)).nonzero()[:, 0].float().mean())

    hair_top = int((labels == 13).nonzero()[:, 0].min())
    assert hair_top < row(6, 7) < row(4, 5) < row(2) < row(10, 11, 12) < row(18)  # top to bottom, as in a face
    parsed, prep_p = pipe.segment(photo, return_preprocessed=True, source="parser")
    assert "map from the face parser (trained on synthetic heads)" in prep_p.notes
    assert torch.equal(parsed, pipe.parser.parse(prep_p.image[0], mask=prep_p.mask[0]).long())
    with pytest.raises(ValueError, match="unknown map source"):
        pipe.segment(photo, source="magic")


def test_segment_without_landmarks_falls_back_to_the_parser(pipe):
    blob = np.full((96, 96, 3), 255, np.uint8)
    blob[20:80, 30:66] = (150, 110, 90)  # a face-coloured block: no face to find, so the whole image
    labels, prep = pipe.segment(blob, use_whole_image=True, return_preprocessed=True, source="landmarks")
    assert prep.landmarks is None
    assert any("no face landmarks were found" in note for note in prep.notes)
    assert torch.equal(labels, pipe.parser.parse(prep.image[0], mask=prep.mask[0]).long())


def test_segment_bad_photo_raises_preprocess_error(pipe, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(PreprocessError, match="not an image"):
        pipe.segment(str(bad))


# ------------------------------------------------------------------------------------------------ edit
def test_edit_with_text_style(pipe, edit_folder):
    facts = edit_folder[1]
    result = pipe(head_map(96), style_text="long blonde hair")
    assert isinstance(result, Edit) and result.style_source == "text"
    g = result.gaussians
    assert g.is_batched and g.batch_size == 1 and g.num_gaussians == facts["n_gaussians"]
    g.validate()
    assert result.labels.shape == (1,) + (facts["image_size"],) * 2  # resized to the model size
    assert result.style.shape == (1, facts["style_dim"])
    assert torch.allclose(result.style.norm(), torch.tensor(1.0), atol=1e-4)
    assert {"labels", "style", "encode", "decode", "gaussians", "total"} <= set(result.timings)
    assert all(v >= 0 for v in result.timings.values())
    stages = sum(v for k, v in result.timings.items() if k != "total")
    assert result.timings["total"] == pytest.approx(stages, rel=1e-6)


def test_edit_with_image_style_crops_the_reference(pipe, edit_folder):
    result = pipe(head_map(64), style_image=str(PHOTO))
    assert result.style_source == "image" and result.style_input is not None
    assert result.style_input.image.shape[-1] == edit_folder[1]["image_size"]  # cropped like a portrait
    assert result.style_input.head_source == "alpha"
    assert "style_preprocess" in result.timings
    # a tensor reference is used as it is (already framed)
    same = pipe(head_map(64), style_image=result.style_input.image[0])
    assert torch.allclose(same.style, result.style, atol=1e-5)


def test_different_styles_give_different_colours(pipe):
    a = pipe(head_map(64), style_text="red hair").gaussians
    b = pipe(head_map(64), style_text="bald with glasses").gaussians
    assert not torch.allclose(a.colors, b.colors)


@pytest.mark.parametrize("text,image,message", [
    (None, None, "no style"), ("   ", None, "no style"), ("", None, "no style"), ("red", PHOTO, "not both")])
def test_style_must_be_exactly_one(pipe, text, image, message):
    with pytest.raises(ValueError, match=message):
        pipe(head_map(64), style_text=text, style_image=None if image is None else str(image))


def test_bad_label_maps(pipe):
    with pytest.raises(ValueError, match="empty"):
        pipe(torch.zeros(64, 64, dtype=torch.long), style_text="red hair")
    with pytest.raises(ValueError, match="0..18"):
        pipe(torch.full((64, 64), 19), style_text="red hair")
    with pytest.raises(ValueError, match="integer"):
        pipe(torch.rand(64, 64), style_text="red hair")


def test_bad_style_image(pipe, tmp_path):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    with pytest.raises(PreprocessError, match="empty"):
        pipe(head_map(64), style_image=str(bad))


def test_edit_then_write_outputs_gives_the_reconstruction_outputs(pipe, edit_folder, tmp_path):
    from perchead.geometry.gaussians import load_ply
    from perchead.export.outputs import write_outputs

    result = pipe(head_map(64), style_text="short black hair")
    out = write_outputs(pipe.editor, result.gaussians, tmp_path, turntable_frames=4, turntable_size=64,
                        view_size=32, timings=result.timings, notes=result.notes)
    assert sorted(out.files) == ["glb", "ply", "splat"]
    assert load_ply(out.files["ply"]).num_gaussians == edit_folder[1]["n_gaussians"]
    assert out.video is not None and out.video.stat().st_size > 0
    assert [caption for caption, _ in out.views][0] == "front" and len(out.views) == 7
    assert {"style", "encode", "export_ply", "novel_views", "turntable", "total"} <= set(out.timings)
    assert out.timings["total"] == pytest.approx(sum(v for k, v in out.timings.items() if k != "total"))
    assert np.asarray(Image.open(out.views[0][1])).shape == (32, 32, 3)


def test_edit_reads_coloured_maps_and_notes_long_prompts(pipe, edit_folder):
    from perchead.geometry.segmentation import labels_to_color

    image = Image.fromarray(labels_to_color(head_map(96)))
    result = pipe(image, style_text="long wavy " * 20 + "red hair")
    assert result.labels.shape == (1,) + (edit_folder[1]["image_size"],) * 2
    assert any("tokens long" in note for note in result.notes)
    with pytest.raises(ValueError, match="characters"):
        pipe(image, style_text="x" * 400)
    with pytest.raises(ValueError, match="square"):
        pipe(image.resize((100, 37)), style_text="red")
    with pytest.raises(ValueError, match="too small"):
        pipe(image.resize((40, 40)), style_text="red")


def test_labels_from_color_reads_palette_maps_and_refuses_foreign_colours(pipe, edit_folder):
    from perchead.geometry.segmentation import labels_to_color

    size = edit_folder[1]["image_size"]
    labels = head_map(256)
    image = Image.fromarray(labels_to_color(labels))
    got = pipe.labels_from_color(image)
    assert got.shape == (size, size) and set(got.unique().tolist()) == {0, 1, 13, 17}
    editor_value = {"background": image, "layers": [], "composite": None}  # no composite: the background
    assert torch.equal(pipe.labels_from_color(editor_value), got)
    big = image.resize((2048, 2048), Image.Resampling.NEAREST)  # downscaled (nearest) before parsing colours
    assert torch.equal(pipe.labels_from_color(big), got)
    array = np.asarray(image).copy()
    array[100:120, 100:120] = (12, 200, 90)  # neither a palette colour nor a blend
    with pytest.raises(ValueError, match="snap=True"):
        pipe.labels_from_color(Image.fromarray(array))
    assert pipe.labels_from_color(Image.fromarray(array), snap=True).shape == (size, size)
    with pytest.raises(ValueError, match="no segmentation map"):
        pipe.labels_from_color({"background": None, "layers": [], "composite": None})


def test_disentanglement_probes(pipe, edit_folder):
    from perchead.evaluation.editing import render_and_parse
    from perchead.evaluation.metrics import class_mean_color, label_iou

    result = pipe(head_map(64), style_text="red hair")
    rgb, labels = render_and_parse(pipe, result.gaussians, [0.0, 90.0], 0.0)
    size = edit_folder[1]["image_size"]
    assert rgb.shape == (2, 3, size, size) and labels.shape == (2, size, size)
    assert label_iou(labels, labels) == 1.0
    a, b = torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long)
    a[:2], b[:1] = 13, 13  # hair: 4 of 8 pixels overlap
    a[3, 0] = 1  # skin only in a
    assert label_iou(a, b) == pytest.approx((0.5 + 0.0) / 2)
    assert label_iou(a, b, classes=[13]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same shape"):
        label_iou(a, b[:2])
    image = torch.zeros(1, 3, 4, 4)
    image[:, 0] = 1.0  # red everywhere
    assert torch.allclose(class_mean_color(image, a[None], 13), torch.tensor([1.0, 0.0, 0.0]))
    assert class_mean_color(image, a[None], 5) is None
