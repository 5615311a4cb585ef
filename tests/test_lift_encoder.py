"""Tests for the dual-branch lift encoder (paper §3.1): foreground patches only, padding, frozen DINOv2."""

import copy

import pytest
import torch

from perchead.models.config import EncoderConfig, PercHeadConfig
from perchead.models.layers import sincos_pos_embed_2d
from perchead.models.lift_encoder import LiftEncoder, foreground_patches, pack_indices

P = 8  # tiny preset patch size


@pytest.fixture(scope="module")
def config():
    return PercHeadConfig.preset("tiny")


@pytest.fixture(scope="module")
def encoder(config):
    torch.manual_seed(0)
    return LiftEncoder(config.encoder, config.decoder.width).eval()


def random_mask(B, S, seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, 1, S, S)
    for b in range(B):
        n = int(torch.randint(3, 30, (), generator=g))
        ys = torch.randint(0, S, (n,), generator=g)
        xs = torch.randint(0, S, (n,), generator=g)
        mask[b, 0, ys, xs] = 1.0  # isolated pixels: a patch is foreground if ANY pixel > 0.5
    return mask


def reference_foreground(mask):
    """Per-image set of raster patch indices with any pixel > 0.5 (plain loops)."""
    B, _, H, W = mask.shape
    out = []
    for b in range(B):
        s = set()
        for i in range(H // P):
            for j in range(W // P):
                if (mask[b, 0, i * P:(i + 1) * P, j * P:(j + 1) * P] > 0.5).any():
                    s.add(i * (W // P) + j)
        out.append(s)
    return out


def test_token_count_equals_foreground_patches(encoder, config):
    S = config.render.image_size
    mask = random_mask(3, S, seed=1)
    image = torch.rand(3, 3, S, S)
    out = encoder(image, mask)
    ref = reference_foreground(mask)
    assert out.counts.tolist() == [len(s) for s in ref]
    assert out.tokens.shape == (3, max(len(s) for s in ref), config.decoder.width)
    for b in range(3):
        valid = out.patch_index[b][~out.padding_mask[b]].tolist()
        assert valid == sorted(ref[b])  # raster order, foreground only
        assert (out.patch_index[b][out.padding_mask[b]] == -1).all()
    assert out.grid == (S // P, S // P)


def test_background_patches_are_never_seen(encoder, config):
    """Changing pixels of background patches (both branches) leaves every token unchanged."""
    S = config.render.image_size
    mask = torch.zeros(1, 1, S, S)
    mask[..., 16:40, 8:48] = 1.0
    image = torch.rand(1, 3, S, S)
    other = image.clone()
    fg = foreground_patches(mask, P)[0].view(S // P, S // P)
    pix = fg.repeat_interleave(P, 0).repeat_interleave(P, 1)  # [S, S] foreground-patch pixels
    other[:, :, ~pix] = torch.rand_like(other[:, :, ~pix])
    with torch.no_grad():
        a, b = encoder(image, mask).tokens, encoder(other, mask).tokens
    torch.testing.assert_close(a, b)


def test_padding_does_not_change_tokens(encoder, config):
    """An image encoded alone equals its unpadded part when batched with an image that has more patches."""
    S = config.render.image_size
    small = torch.zeros(1, 1, S, S)
    small[..., 24:40, 24:40] = 1.0
    big = torch.ones(1, 1, S, S)
    image = torch.rand(2, 3, S, S)
    with torch.no_grad():
        alone = encoder(image[:1], small)
        batch = encoder(image, torch.cat([small, big]))
    k = int(alone.counts[0])
    assert batch.tokens.shape[1] == (S // P) ** 2 and bool(batch.padding_mask[0, k:].all())
    torch.testing.assert_close(batch.tokens[0, :k], alone.tokens[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dino_image_size", [64, 40])  # 40: DINOv2's position grid (5×5) is interpolated to 8×8
def test_dino_branch_matches_transformers_forward(config, dino_image_size):
    """With every patch in the foreground, our token-dropping DINOv2 pass equals transformers' own forward."""
    cfg = copy.deepcopy(config.encoder)
    cfg.dino.architecture["image_size"] = dino_image_size
    encoder = LiftEncoder(cfg, config.decoder.width).eval()
    S = config.render.image_size
    image = torch.rand(2, 3, S, S)
    mask = torch.ones(2, 1, S, S)
    gather, pad, _ = pack_indices(foreground_patches(mask, P))
    ours = encoder.dino(image, gather, pad)  # [B, L, C·layers]
    dino = encoder.dino.model
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        hs = dino((image - mean) / std, output_hidden_states=True).hidden_states  # embeddings + each block
    ref = torch.cat([dino.layernorm(hs[i + 1][:, 1:]) for i in config.encoder.dino.layers], dim=-1)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_dino_is_frozen_and_stays_in_eval(config):
    enc = LiftEncoder(config.encoder, config.decoder.width)
    enc.train()
    assert not enc.dino.model.training
    assert all(not p.requires_grad for p in enc.dino.model.parameters())
    S = config.render.image_size
    mask = random_mask(2, S, seed=3)
    enc(torch.rand(2, 3, S, S), mask).tokens.square().mean().backward()
    assert all(p.grad is None for p in enc.dino.model.parameters())
    trainable = [p for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_task_vit_alone(config):
    cfg = EncoderConfig(patch_size=8, width=32, depth=1, heads=2, dino=None)
    enc = LiftEncoder(cfg, 16)
    S = 32
    mask = torch.zeros(2, 1, S, S)
    mask[0, :, :8, :8] = 1
    mask[1, :, 8:, :] = 1
    out = enc(torch.rand(2, 3, S, S), mask)
    assert out.tokens.shape == (2, 12, 16) and out.counts.tolist() == [1, 12]


def test_errors(encoder, config):
    S = config.render.image_size
    with pytest.raises(ValueError, match="no foreground patch"):
        encoder(torch.rand(1, 3, S, S), torch.zeros(1, 1, S, S))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        encoder(torch.rand(1, 3, S + 4, S + 4), torch.ones(1, 1, S + 4, S + 4))
    with pytest.raises(ValueError, match="mask must be"):
        encoder(torch.rand(1, 3, S, S), torch.ones(1, S, S))
    with pytest.raises(ValueError, match="must match DINOv2"):
        EncoderConfig(patch_size=16, dino=config.encoder.dino)


def test_sincos_embedding_distinct():
    e = sincos_pos_embed_2d(32, 4, 5)
    assert e.shape == (20, 32)
    assert torch.cdist(e, e).add(torch.eye(20)).min() > 0.1  # every grid cell has its own code
