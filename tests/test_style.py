"""Tests of the open_clip style encoder (perchead/models/style_encoder.py) and its training (perchead/training/style.py): tiny CPU configs, offline."""

import json
import os
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from perchead.models.base import WEIGHTS_NAME
from perchead.models.style_encoder import STYLE_CONFIG_NAME, StyleEncoder, style_config
from perchead.training.style import (augment_caption, augment_images, caption_atoms, contrastive_loss, entailment,
                                     evaluate_style, load_style_pairs, render_style_pairs)

CAPTIONS = ["long red hair, dark skin, glasses, navy shirt", "bald, pale skin, beard, white collared shirt",
            "blonde hair with a fringe, medium skin, smiling, earrings, red striped shirt",
            "buzz-cut dark brown hair, tan skin, sunglasses, beanie, grey turtleneck"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return StyleEncoder.from_config("tiny").eval()


def test_configs_build_open_clip_models(tiny):
    assert isinstance(tiny.model, open_clip.model.CLIP)
    assert tiny.embed_dim == 32
    demo = style_config("demo")
    cfg = demo.model_cfg()
    assert cfg["embed_dim"] == 128 and cfg["vision_cfg"]["image_size"] == 64 and cfg["text_cfg"]["context_length"] == 32
    n_tiny = sum(p.numel() for p in tiny.parameters())
    assert n_tiny < 1_000_000
    with pytest.raises(ValueError, match="unknown preset"):
        style_config("huge")


def test_encode_shapes_and_normalisation(tiny):
    images = torch.rand(3, 3, 40, 56)  # non-square, not the model size: resized + centre-cropped
    with torch.no_grad():
        img = tiny.encode_image(images)
        txt = tiny.encode_text(["long red hair", "bald with glasses"])
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    assert tiny.preprocess(images).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tiny.encode_image(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="float"):
        tiny.encode_image(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="list of strings"):
        tiny.encode_text("blonde")


def test_tokenizer_works_offline(tiny):
    tokens = tiny.tokenize(["Long RED hair"])  # [1, 32]
    assert tokens.shape == (1, 32) and tokens.dtype == torch.long
    ids = [t for t in tokens[0].tolist() if t != 0]
    assert ids[0] == tiny.tokenizer.sot_token_id and ids[-1] == tiny.tokenizer.eot_token_id
    assert tiny.tokenizer.decode(ids[1:-1]).strip() == "long red hair"  # the package's own BPE vocabulary


def test_save_load_roundtrip(tiny, tmp_path):
    images = torch.rand(2, 3, 32, 32)
    texts = ["blonde", "curly black hair, tan skin"]
    with torch.no_grad():
        ref_img, ref_txt = tiny.encode_image(images), tiny.encode_text(texts)
    tiny.save_pretrained(tmp_path / "fp32", dtype=torch.float32)
    loaded = StyleEncoder.from_pretrained(tmp_path / "fp32")
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen at use
    with torch.no_grad():  # float32 storage: the same numbers (frozen torch may take its fused attention path)
        torch.testing.assert_close(loaded.encode_image(images), ref_img, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.encode_text(texts), ref_txt, rtol=0, atol=1e-6)

    tiny.save_pretrained(tmp_path / "fp16")  # default: float16 storage, loading casts back to float32
    config = json.loads((tmp_path / "fp16" / STYLE_CONFIG_NAME).read_text())
    assert set(config) >= {"model_cfg", "preprocess_cfg"} and not list((tmp_path / "fp16").glob("*.bin"))
    half = StyleEncoder.from_pretrained(str(tmp_path / "fp16"))
    assert next(half.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(half.encode_text(texts), ref_txt, rtol=0, atol=2e-2)
    # open_clip itself reads the folder (local-dir layout) and gives the same embeddings
    model = open_clip.create_model(f"local-dir:{tmp_path / 'fp32'}").eval()
    tok = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'fp32'}")
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
    torch.testing.assert_close(direct, ref_txt)
    assert (tmp_path / "fp16" / WEIGHTS_NAME).stat().st_size < 0.6 * (tmp_path / "fp32" / WEIGHTS_NAME).stat().st_size


def test_unknown_or_offline_ids_fail_fast_and_clearly(tmp_path, monkeypatch):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="hf-hub:perchead-tests/no-such-style-model"):
        StyleEncoder.from_pretrained("hf-hub:perchead-tests/no-such-style-model")
    with pytest.raises(FileNotFoundError, match=r"'ViT-B-32:openai'.*HF_HUB_OFFLINE"):
        StyleEncoder.from_pretrained("ViT-B-32:openai")
    with pytest.raises(ValueError, match="needs a pretrained tag"):
        StyleEncoder.from_pretrained("ViT-B-32")
    with pytest.raises(ValueError, match="neither a style model folder"):
        StyleEncoder.from_pretrained("NoSuchClipModel")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StyleEncoder.from_pretrained(str(tmp_path / "missing" / "style"))
    (tmp_path / "parent").mkdir()
    monkeypatch.chdir(tmp_path)  # "parent/style" names a missing folder (its parent exists), not a Hub repo
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StyleEncoder.from_pretrained("parent/style")
    assert time.perf_counter() - start < 10.0


def test_caption_augmentation_is_entailed_by_its_caption():
    rng = np.random.default_rng(0)
    assert caption_atoms("long red hair, dark skin, glasses, navy shirt") == {
        ("hair_style", "long"), ("hair_color", "red"), ("skin", "dark"), ("flag", "glasses"), ("cloth", "navy shirt")}
    assert caption_atoms("a person with dark brown hair with a fringe and glasses") == {
        ("hair_color", "dark brown"), ("hair_style", "fringe"), ("flag", "glasses")}
    assert caption_atoms("blonde") == {("hair_color", "blonde")}
    assert caption_atoms("bald with glasses") == {("hair_style", "bald"), ("flag", "glasses")}
    full = [caption_atoms(c) for c in CAPTIONS]
    texts = [augment_caption(c, rng) for c in CAPTIONS for _ in range(100)]
    pos = entailment(full, [caption_atoms(t) for t in texts])  # [4, 400]
    assert pos.view(4, 4, 100).diagonal(dim1=0, dim2=1).all()  # every prompt is entailed by its own caption
    assert any(t in ("red", "blonde", "dark brown") for t in texts)  # bare colour prompts occur
    assert all(caption_atoms(t) for t in texts)


def test_contrastive_loss_matches_open_clip_with_distinct_captions():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    ref = open_clip.ClipLoss()(img, txt, scale)
    torch.testing.assert_close(contrastive_loss(img, txt, scale, torch.eye(6, dtype=torch.bool)), ref)
    pos = torch.eye(6, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True  # a second positive changes the targets
    assert not torch.isclose(contrastive_loss(img, txt, scale, pos), ref)
    with pytest.raises(ValueError, match="diagonal"):
        contrastive_loss(img, txt, scale, torch.zeros(6, 6, dtype=torch.bool))


def test_augment_images_shapes_and_range():
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(4, 3, 48, 48) * 255).to(torch.uint8)
    out = augment_images(images, 32, g)
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    white = torch.full((2, 3, 48, 48), 255, dtype=torch.uint8)
    torch.testing.assert_close(augment_images(white, 32, g), torch.ones(2, 3, 32, 32))  # no colour change


def test_load_style_pairs_from_folder(tmp_path):
    for s, caption in enumerate(CAPTIONS[:2]):
        d = tmp_path / f"synthetic-{s}"
        (d / "images").mkdir(parents=True)
        (d / "caption.txt").write_text(caption + "\n")
        for v in range(3):
            Image.fromarray(np.full((16, 16, 3), 40 * v + s, dtype=np.uint8)).save(d / "images" / f"{v:04d}.png")
    pairs = load_style_pairs(tmp_path, image_size=8)
    assert pairs.images.shape == (6, 3, 8, 8) and pairs.images.dtype == torch.uint8
    assert pairs.captions == CAPTIONS[:2] and pairs.subject.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(pairs.images[4, 0, 0, 0]) == 41
    with pytest.raises(ValueError, match="does not exist"):
        load_style_pairs(tmp_path / "nope")


def test_training_steps_lower_the_loss_and_metrics_run(tmp_path):
    from perchead.training.config import TrainConfig
    from perchead.training.train import train

    torch.manual_seed(0)
    config = TrainConfig.preset_defaults("tiny", task="style", output=str(tmp_path / "style"), phase1_steps=80,
                                         options={"n_heads": 4, "views_per_head": 3, "density": 0.25})
    train(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "style" / "metrics.jsonl").read_text().splitlines()]
    losses = np.array([r["total"] for r in records])
    assert np.isfinite(losses).all() and len(losses) == 80
    assert losses[-10:].mean() < losses[:10].mean() - 0.25, (losses[:10].mean(), losses[-10:].mean())
    assert all(r["logit_scale"] <= 100.0 + 1e-3 for r in records)
    assert (tmp_path / "style" / WEIGHTS_NAME).is_file() and (tmp_path / "style" / "training.json").is_file()
    reloaded = StyleEncoder.from_pretrained(tmp_path / "style")
    assert reloaded.embed_dim == 32

    val = render_style_pairs([1_000_000, 1_000_001, 1_000_002], 0, image_size=32, density=0.25,
                             views=[(0.0, 0.0), (40.0, 10.0)])
    metrics = evaluate_style(reloaded, val)
    assert metrics["n_images"] == 6
    for key in ("text_to_image_top1", "text_to_image_top5", "hair_color_accuracy", "hair_color_chance"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["text_to_image_top5"] == 1.0  # 3 heads: every caption is within the top 5
