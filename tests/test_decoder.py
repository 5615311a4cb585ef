"""Tests for the 3D ViT decoder (paper §3.2) and the cross-attention cut of the supplement §7."""

import pytest
import torch

from perchead.models.config import PercHeadConfig
from perchead.models.decoder import Decoder3D, fourier_features
from perchead.geometry.template import build_template


@pytest.fixture(scope="module")
def setup():
    cfg = PercHeadConfig.preset("tiny")
    t = cfg.template
    pv = build_template(t.n_gaussians, t.n_patches).patch_vertices()  # [P, 16, 3]
    torch.manual_seed(0)
    dec = Decoder3D(cfg.decoder, pv).eval()
    tokens = torch.randn(2, 7, cfg.decoder.width)
    return cfg, pv, dec, tokens


def test_one_token_per_template_patch(setup):
    cfg, pv, dec, tokens = setup
    out = dec(tokens)
    assert out.shape == (2, cfg.template.n_patches, cfg.decoder.width)
    assert dec.n_patches == pv.shape[0] == cfg.template.n_patches
    assert torch.isfinite(out).all()


def test_cross_attention_cut_keeps_earlier_layers(setup):
    """cross_attn_until=i: layers ≤ i identical to the full run, final output different (supplement §7)."""
    cfg, pv, dec, tokens = setup
    with torch.no_grad():
        full, full_layers = dec(tokens, return_layers=True)
        for i in range(-1, cfg.decoder.depth - 1):
            cut, cut_layers = dec(tokens, cross_attn_until=i, return_layers=True)
            for j in range(i + 1):
                torch.testing.assert_close(cut_layers[j], full_layers[j], rtol=0, atol=0)
            assert not torch.allclose(cut, full, atol=1e-4), f"cutting after layer {i} changed nothing"
            assert not torch.allclose(cut_layers[i + 1], full_layers[i + 1], atol=1e-4)
        torch.testing.assert_close(dec(tokens, cross_attn_until=cfg.decoder.depth - 1), full)


def test_no_cross_attention_means_no_image_dependence(setup):
    _, _, dec, tokens = setup
    with torch.no_grad():
        a = dec(tokens, cross_attn_until=-1)
        b = dec(torch.randn_like(tokens), cross_attn_until=-1)
    torch.testing.assert_close(a, b)


def test_no_self_attention_among_patches(setup):
    """A decoder over a subset of the patches (same weights) gives exactly those patches' outputs."""
    cfg, pv, dec, tokens = setup
    sub = Decoder3D(cfg.decoder, pv[5:17]).eval()
    sub.load_state_dict(dec.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(sub(tokens), dec(tokens)[:, 5:17], rtol=1e-5, atol=1e-5)


def test_padding_mask_hides_padding(setup):
    _, _, dec, tokens = setup
    padded = torch.cat([tokens, 100 * torch.randn(2, 3, tokens.shape[-1])], dim=1)
    mask = torch.zeros(2, padded.shape[1], dtype=torch.bool)
    mask[:, tokens.shape[1]:] = True
    with torch.no_grad():
        torch.testing.assert_close(dec(padded, mask), dec(tokens), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(dec(padded), dec(tokens), atol=1e-3)


def test_positional_encoding_distinguishes_patches(setup):
    _, _, dec, _ = setup
    pe = dec.pos()
    d = torch.cdist(pe, pe) + torch.eye(pe.shape[0]) * 1e3
    assert d.min() > 1e-4


def test_fourier_features():
    x = torch.rand(5, 48)
    f = fourier_features(x, 3)
    assert f.shape == (5, 48 * 7)
    torch.testing.assert_close(f[:, :48], x)


def test_errors(setup):
    cfg, _, dec, tokens = setup
    with pytest.raises(ValueError, match="cross_attn_until"):
        dec(tokens, cross_attn_until=cfg.decoder.depth)
    with pytest.raises(ValueError, match="tokens2d"):
        dec(torch.randn(2, 7, cfg.decoder.width + 1))
    with pytest.raises(ValueError, match="padding_mask"):
        dec(tokens, torch.zeros(2, 6, dtype=torch.bool))
