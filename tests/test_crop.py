"""Property test of perchead.photo.crop.crop_resize against a plain bilinear reference crop.

Random boxes (fractional, negative, partly or wholly outside the image) and sizes 16–512, on a smooth
image so that area averaging (when shrinking) and point sampling agree away from the image's border.
"""

from __future__ import annotations

import numpy as np
import pytest

from perchead.photo.crop import crop_resize


def smooth_image(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """A uint8 image of low-frequency sines: resampling it any reasonable way gives nearly the same values."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    layers = []
    for _ in range(channels):
        fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.3)
        layers.append(127.5 + 100 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase))
    return np.stack(layers, -1).round().astype(np.uint8)  # [H, W, C]


def reference_crop(array: np.ndarray, box, size: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear point sampling at output pixel centres, ``fill`` outside the image.

    Returns:
        (crop ``[size, size, C]`` float, whether each output pixel's footprint lies wholly inside or wholly
        outside the image ``[size, size]`` — where area averaging and point sampling must agree).
    """
    height, width, _ = array.shape
    x0, y0, x1, y1 = box
    step = (x1 - x0) / size
    centres = np.arange(size) + 0.5
    xs, ys = x0 + centres * step - 0.5, y0 + centres * (y1 - y0) / size - 0.5  # pixel-centre coordinates
    padded = np.pad(array.astype(np.float64), ((1, 1), (1, 1), (0, 0)), constant_values=fill)

    def taps(coords, limit):
        lo = np.floor(coords)
        frac = coords - lo
        lo_i = np.clip(lo.astype(np.int64) + 1, 0, limit + 1)
        hi_i = np.clip(lo.astype(np.int64) + 2, 0, limit + 1)
        return lo_i, hi_i, frac

    xl, xh, fx = taps(xs, width)
    yl, yh, fy = taps(ys, height)
    fx, fy = fx[None, :, None], fy[:, None, None]
    top = padded[yl][:, xl] * (1 - fx) + padded[yl][:, xh] * fx
    bottom = padded[yh][:, xl] * (1 - fx) + padded[yh][:, xh] * fx
    out = top * (1 - fy) + bottom * fy  # [S, S, C]
    margin = max(step, 1.0) + 1.0  # footprint half-width plus the bilinear reach
    inside_x = (xs - margin >= 0) & (xs + margin <= width - 1)
    outside_x = (xs + margin < -1) | (xs - margin > width)
    inside_y = (ys - margin >= 0) & (ys + margin <= height - 1)
    outside_y = (ys + margin < -1) | (ys - margin > height)
    clean = (inside_y[:, None] & inside_x[None, :]) | outside_y[:, None] | outside_x[None, :]
    return out, clean


@pytest.mark.parametrize("seed", range(40))
def test_crop_resize_matches_a_reference_crop(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(16, 300, size=2)
    channels = int(rng.choice([1, 3]))
    image = smooth_image(int(height), int(width), channels, seed)
    size = int(rng.integers(16, 513))
    side = float(rng.uniform(0.2, 2.0) * max(height, width))
    x0 = float(rng.uniform(-0.8, 0.9) * width)
    y0 = float(rng.uniform(-0.8, 0.9) * height)
    box = (x0, y0, x0 + side, y0 + side)
    fill = int(rng.integers(0, 256))
    array = image[..., 0] if channels == 1 else image

    out = crop_resize(array, box, size, fill)

    assert out.dtype == np.uint8 and out.shape == (size, size) + array.shape[2:]
    expected, clean = reference_crop(image, box, size, fill)
    got = out.reshape(size, size, channels).astype(np.float64)
    diff = np.abs(got - expected)
    if clean.any():
        assert diff[clean].max() <= 6, f"box {box} size {size}: max error {diff[clean].max():.1f}"
    assert diff.mean() <= 4, f"box {box} size {size}: mean error {diff.mean():.2f}"


def test_fractional_box_of_the_bundled_example_size():
    """The box that used to crash (a crop starting at a fractional coordinate)."""
    image = smooth_image(101, 101, 3, 0)
    for size in (64, 101, 128, 256):
        out = crop_resize(image, (0.6, 0.6, 100.6, 100.6), size, 255)
        expected, _ = reference_crop(image, (0.6, 0.6, 100.6, 100.6), size, 255)
        assert out.shape == (size, size, 3)
        assert np.abs(out - expected).mean() <= 2


def test_box_wholly_outside_gives_fill():
    image = smooth_image(50, 60, 3, 1)
    assert np.all(crop_resize(image, (100, 100, 150, 150), 32, 7) == 7)
    assert np.all(crop_resize(image, (-300, -300, -200, -200), 64, 9) == 9)


def test_identity_crop_is_exact():
    image = smooth_image(40, 40, 3, 2)
    assert np.array_equal(crop_resize(image, (0, 0, 40, 40), 40, 0), image)


@pytest.mark.parametrize("box", [(0, 0, 0, 10), (5, 5, 1, 9), (0, 0, float("nan"), 10), (0, 0, float("inf"), 1)])
def test_bad_boxes_are_refused(box):
    with pytest.raises(ValueError, match="box"):
        crop_resize(np.zeros((10, 10, 3), np.uint8), box, 16, 0)
