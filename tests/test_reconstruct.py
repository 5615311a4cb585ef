"""Tests for perchead.pipelines.reconstruct: one ``__call__`` for photos and prepared tensors, always batched."""

from pathlib import Path

import pytest
import torch

from perchead.models.config import PercHeadConfig
from perchead.models.perchead import PercHead
from perchead.pipelines.reconstruct import PercHeadPipeline, Reconstruction

PHOTO = Path(__file__).resolve().parents[1] / "examples" / "head0_front.png"


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return PercHeadPipeline(PercHead(PercHeadConfig.preset("tiny")), device="cpu")


def portrait(H=96, W=80):
    """An ellipse 'head' over white at a size other than the model's, so the pipeline must resize."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    mask = ((xs / 0.5) ** 2 + (ys / 0.7) ** 2 < 1).float()[None]  # [1, H, W]
    image = torch.rand(3, H, W) * mask + (1 - mask)
    return image, mask


def test_single_image_gives_a_batch_of_one_and_timings(pipe):
    image, mask = portrait()
    rec = pipe(image, mask, cameras=pipe.model.default_cameras([0, 90], size=48))
    assert isinstance(rec, Reconstruction) and rec.preprocessed is None and rec.notes == []
    g = rec.gaussians
    assert g.is_batched and g.batch_size == 1 and g.num_gaussians == pipe.model.config.template.n_gaussians
    assert not g.means.requires_grad  # ran under no_grad
    g.validate()
    assert rec.views.rgb.shape == (1, 2, 3, 48, 48) and rec.views.alpha.shape == (1, 2, 1, 48, 48)
    assert set(rec.timings) == {"preprocess", "encode", "decode", "gaussians", "render", "total"}
    assert all(v >= 0 for v in rec.timings.values())
    assert rec.timings["total"] >= rec.timings["encode"] + rec.timings["decode"]


def test_batched_input_and_no_cameras(pipe):
    image, mask = portrait()
    rec = pipe(torch.stack([image, image]), torch.stack([mask, mask]))
    assert rec.views is None and "render" not in rec.timings
    assert rec.gaussians.is_batched and rec.gaussians.batch_size == 2
    torch.testing.assert_close(rec.gaussians.means[0], rec.gaussians.means[1])


def test_matches_the_model_at_native_size(pipe):
    S = pipe.image_size
    image, mask = portrait(S, S)
    rec = pipe(image, mask)
    with torch.no_grad():
        ref = pipe.model(image[None], mask[None])[0]
    torch.testing.assert_close(rec.gaussians[0].colors, ref.colors)
    torch.testing.assert_close(rec.gaussians[0].means, ref.means)


def test_from_pretrained_folder(pipe, tmp_path):
    pipe.model.save_pretrained(tmp_path)
    again = PercHeadPipeline.from_pretrained(str(tmp_path), device="cpu")
    image, mask = portrait()
    torch.testing.assert_close(again(image, mask).gaussians.means, pipe(image, mask).gaussians.means)


def test_photo_is_preprocessed_inside(pipe):
    from perchead.photo.config import PreprocessConfig
    from perchead.photo.preprocess import preprocess

    rec = pipe(str(PHOTO), remove_background=True)
    assert rec.gaussians.batch_size == 1 and len(rec.preprocessed) == 1
    prep = preprocess(str(PHOTO), PreprocessConfig.from_model_config(pipe.model.config.render))
    torch.testing.assert_close(rec.gaussians.means, pipe(prep.image, prep.mask).gaussians.means)
    assert rec.notes == prep.notes and rec.timings["preprocess"] > 0


def test_bad_inputs(pipe):
    image, mask = portrait()
    with pytest.raises(ValueError, match="torch tensors"):
        pipe(image, mask.numpy())
    with pytest.raises(ValueError, match="no mask"):
        pipe(str(PHOTO), mask)
    with pytest.raises(ValueError, match="need their mask"):
        pipe(image)
    with pytest.raises(ValueError, match="apply to photos"):
        pipe(image, mask, auto_crop=False)
    with pytest.raises(ValueError, match="mask must be"):
        pipe(image, mask[:, :10])
    with pytest.raises(ValueError, match="float"):
        pipe((image * 255).to(torch.uint8), mask)


# ------------------------------------------------------------------------------ decoder layers (supplement §7)
def test_decoder_layers_one_column_per_layer_the_last_is_the_model(pipe):
    image, mask = portrait()
    layers = pipe.decoder_layers(torch.stack([image, image.flip(-1)]), torch.stack([mask, mask.flip(-1)]), size=40)
    L = pipe.model.config.decoder.depth
    assert layers.n_layers == L == len(layers.gaussians) and layers.view_captions == ["front", "¾ left"]
    assert layers.rgb.shape == (2, L, 2, 3, 40, 40) and layers.alpha.shape == (2, L, 2, 1, 40, 40)
    assert layers.column_captions() == [f"layer {k} of {L}" for k in range(1, L + 1)]
    strip = layers.strip(1)
    assert strip.shape == (2 * 40, L * 40, 3) and strip.dtype.name == "uint8"
    assert set(layers.timings) == {"preprocess", "encode", "decode", "gaussians", "render", "total"}
    # the last column is the normal model's head and render, exactly; column k is cross_attn_until=k
    normal = pipe(torch.stack([image, image.flip(-1)]), torch.stack([mask, mask.flip(-1)]), cameras=layers.cameras)
    assert torch.equal(layers.rgb[:, -1], normal.views.rgb)
    assert torch.equal(layers.gaussians[-1].means, normal.gaussians.means)
    first = pipe(image, mask, cameras=layers.cameras, cross_attn_until=0)
    torch.testing.assert_close(layers.rgb[0, 0], first.views.rgb[0])
    torch.testing.assert_close(layers.gaussians[0][0].colors, first.gaussians[0].colors)
    # every layer's cross-attention changes the head (the columns would be equal if it were ignored)
    for k in range(L - 1):
        assert not torch.equal(layers.gaussians[k].colors, layers.gaussians[k + 1].colors), k  # (a fresh head predicts no offsets yet)


def test_decoder_layers_of_the_bundled_model_on_a_photo():
    from perchead.photo.load import PreprocessError

    trained = PercHeadPipeline.from_pretrained(str(PHOTO.parents[1] / "weights_card"), device="cpu")
    layers = trained.decoder_layers(str(PHOTO))
    assert layers.preprocessed is not None and layers.rgb.shape[1] == trained.model.config.decoder.depth
    columns = layers.columns()
    for k in range(layers.n_layers):
        head = (columns[k].astype(float) < 200).any(-1).mean()  # non-white pixels
        assert 0.1 < head < 0.9, (k, head)  # a head in every picture, not an empty or filled frame
    change = [float((layers.rgb[0, k + 1] - layers.rgb[0, k]).abs().mean()) for k in range(layers.n_layers - 1)]
    assert min(change) > 2e-3, change  # each layer visibly changes the render
    with pytest.raises(ValueError, match="no mask"):
        trained.decoder_layers(str(PHOTO), torch.ones(1, 64, 64))
    with pytest.raises(PreprocessError):
        trained.decoder_layers(b"not an image")
