"""Tests of the image measures (perchead.models.similarity: PSNR, SSIM against closed forms and an independent
reference) and of the evaluation metrics table (perchead.evaluation.metrics)."""

import math

import numpy as np
import pytest
import torch

from perchead.evaluation import metrics
from perchead.models import similarity


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Direct, loop-based Wang et al. SSIM of one grey image (11×11 Gaussian, σ = 1.5, 'valid')."""
    r = np.arange(11) - 5
    g1 = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g1, g1)
    w /= w.sum()
    c1, c2 = (0.01) ** 2, (0.03) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_psnr_identical_is_inf_and_constant_offset_is_known():
    x = torch.rand(2, 3, 16, 16)
    assert torch.isinf(similarity.psnr(x, x)).all()
    y = (x * 0.5 + 0.1).clamp(0, 1)
    z = y + 0.1  # constant offset 0.1 → MSE 0.01 → PSNR 20 dB
    torch.testing.assert_close(similarity.psnr(y, z), torch.full((2,), 20.0), atol=1e-4, rtol=0)
    z = y + 0.01  # → 40 dB
    torch.testing.assert_close(similarity.psnr(y, z), torch.full((2,), 40.0), atol=1e-3, rtol=0)


def test_ssim_identical_is_one():
    x = torch.rand(2, 3, 24, 24)
    torch.testing.assert_close(similarity.ssim(x, x), torch.ones(2), atol=1e-5, rtol=0)


def test_ssim_constant_images_closed_form():
    # Constant images a and b: variances and covariance vanish, SSIM = (2ab + C1) / (a² + b² + C1).
    a, b = 0.3, 0.5
    x, y = torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    assert similarity.ssim(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_independent_reference():
    rng = np.random.default_rng(0)
    x = rng.random((20, 20))
    y = np.clip(x + 0.2 * rng.standard_normal((20, 20)), 0, 1)
    ours = similarity.ssim(torch.tensor(x)[None, None].float(), torch.tensor(y)[None, None].float()).item()
    assert ours == pytest.approx(_reference_ssim(x, y), abs=1e-6)
    assert 0.0 < ours < 1.0


def test_ssim_is_differentiable_and_rejects_bad_input():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    similarity.ssim(x, torch.rand(1, 3, 16, 16)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        similarity.ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 12, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        similarity.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_network_metrics_report_unavailable_with_reason():
    found = metrics.network_metrics()
    assert set(found) == {"lpips", "dreamsim", "arcface"}
    for m in found.values():
        assert (m.fn is None) == bool(m.reason)
    with pytest.raises(ValueError, match="unknown network metric"):
        metrics.network_metrics(("fid",))


def test_finite_mean_caps_inf():
    assert metrics.finite_mean([math.inf, 20.0]) == pytest.approx(60.0)


def test_error_regions_put_the_error_where_the_silhouettes_disagree():
    target = torch.ones(1, 3, 8, 8)  # white background
    target_alpha = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 0.2
    target_alpha[..., 2:6, 2:6] = 1.0  # a 4×4 dark square
    pred, pred_alpha = target.clone(), target_alpha.clone()
    pred[..., 2:6, 5] = 1.0  # the square's last column missed (white)
    pred_alpha[..., 2:6, 5] = 0.0
    pred[..., 3:5, 3:5] = 0.4  # an interior colour error
    out = metrics.error_regions(pred, pred_alpha, target, target_alpha)
    missed, interior = 4 * 0.8**2, 4 * 0.2**2
    assert out["missed"].item() == pytest.approx(missed / (missed + interior))
    assert out["interior"].item() == pytest.approx(interior / (missed + interior))
    assert out["spill"].item() == 0 and out["background"].item() == 0
    assert out["missed_pixels"].item() == pytest.approx(4 / 64)
    assert sum(out[k].item() for k in metrics.ERROR_REGIONS) == pytest.approx(1.0)
    # a perfect outline leaves only the interior error
    assert out["psnr_true_silhouette"].item() == pytest.approx(10 * math.log10(64 / interior))
    with pytest.raises(ValueError, match="alphas"):
        metrics.error_regions(pred, pred_alpha[:, :, :4], target, target_alpha)
