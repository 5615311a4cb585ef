"""Tests for perchead/training/losses.py with tiny random DINOv2 / SAM 2 configs (no weights are downloaded)."""

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Sam2HieraDetConfig, Sam2VisionConfig, Sam2VisionModel

from perchead.models.similarity import MissingWeightsError, imagenet_normalize
from perchead.training.config import PAPER_LOSS, TrainConfig
from perchead.training.losses import LossConfig, PerceptualLoss, ReconstructionLoss


def tiny_dino() -> Dinov2Model:
    cfg = Dinov2Config(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32,
                       image_size=28, patch_size=14)
    return Dinov2Model(cfg)


def tiny_sam() -> Sam2VisionModel:
    backbone = Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, image_size=[64, 64], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 2, 2, 2], global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    cfg = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=16)
    return Sam2VisionModel(cfg)


def paper_phase1_tiny() -> ReconstructionLoss:
    cfg = LossConfig(**PAPER_LOSS["1"], dino_image_size=28, sam_image_size=64)
    return ReconstructionLoss(cfg, dino=tiny_dino(), sam=tiny_sam())


def test_perceptual_identical_images_give_zero_loss():
    loss = paper_phase1_tiny()
    x = torch.rand(2, 3, 32, 32)
    total, logs = loss(x, x.clone())
    assert set(logs) == {"dino", "sam", "total"}
    assert abs(total.item()) < 1e-5
    other, logs = loss(x, torch.rand(2, 3, 32, 32))
    assert other.item() > 1e-4 and logs["dino"] > 0 and logs["sam"] > 0


def test_gradients_reach_render_not_frozen_networks():
    loss = paper_phase1_tiny()
    loss.train()  # stays frozen/eval
    assert not loss.perceptual.dino.model.training and not loss.perceptual.sam.model.training
    render = torch.rand(2, 3, 32, 32, requires_grad=True)
    total, _ = loss(render, torch.rand(2, 3, 32, 32))
    total.backward()
    assert render.grad is not None and render.grad.abs().sum() > 0
    for p in loss.parameters():
        assert not p.requires_grad and p.grad is None


def test_dino_layers_are_zero_based_blocks():
    dino = tiny_dino()
    pl = PerceptualLoss(dino, None, dino_layers=(8, 11), dino_image_size=28)
    x = torch.rand(1, 3, 28, 28)
    feats = pl.dino(x)
    ref = dino(pixel_values=imagenet_normalize(x, 28),
               output_hidden_states=True).hidden_states
    torch.testing.assert_close(feats[1], ref[12])
    with pytest.raises(ValueError, match="block indices"):
        PerceptualLoss(dino, None, dino_layers=(12,), dino_image_size=28)


def test_demo_preset_terms_and_mask_loss():
    weights = TrainConfig.preset_defaults("demo").loss_weights
    cfg = LossConfig(**weights["1"])
    assert cfg.weights == {"l1": 0.8, "ssim": 0.2, "mask": 0.5}
    paper = TrainConfig.preset_defaults("paper").loss_weights
    assert LossConfig(**paper["2"]).weights == {"l1": 1.0, "dino": 1.0, "lpips": 1.0}
    loss = ReconstructionLoss(cfg)
    x = torch.rand(3, 3, 16, 16)
    a = torch.rand(3, 1, 16, 16)
    total, logs = loss(x, x, a, a)
    assert total.item() == pytest.approx(0.0, abs=1e-5)
    total, logs = loss(x, x, torch.zeros_like(a), torch.ones_like(a))
    assert logs["mask"] == pytest.approx(1.0) and total.item() == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(ValueError, match="needs pred_alpha"):
        loss(x, x)


def test_missing_weights_error_or_documented_skip(capsys):
    cfg = LossConfig(dino=1.0, dino_model="/nonexistent/dinov2")
    with pytest.raises(MissingWeightsError, match="/nonexistent/dinov2"):
        ReconstructionLoss(cfg)
    cfg = LossConfig(l1=1.0, lpips=1.0, on_missing="skip", lpips_net="vgg")
    loss = ReconstructionLoss(cfg)
    if "lpips" in loss.dropped:  # the lpips package / its backbone is not available here
        assert "dropping the 'lpips' loss term" in capsys.readouterr().err
        assert loss.weights == {"l1": 1.0}


def test_bad_config_values():
    with pytest.raises(ValueError, match="must be >= 0"):
        LossConfig(l1=-1)
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig.preset_defaults("huge")
    with pytest.raises(ValueError, match="no loss term"):
        ReconstructionLoss(LossConfig())
