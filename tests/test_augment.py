"""Training-time augmentation: photo-like inputs and hair recolouring (perchead.data.augment)."""

import pytest
import torch

from perchead.data.augment import HAIR_CLASS, InputAugmentConfig, augment_inputs, recolor_hair


def _head_batch(b: int = 3, size: int = 32):
    """Discs of different colours over white, with their masks."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = (((ys - size / 2) ** 2 + (xs - size / 2) ** 2) < (size / 3) ** 2).float()  # [H, W]
    mask = disc.expand(b, 1, size, size).clone()  # [B, 1, H, W]
    colour = torch.linspace(0.2, 0.8, b).view(b, 1, 1, 1).expand(b, 3, 1, 1) * torch.tensor([1.0, 0.7, 0.4]).view(1, 3, 1, 1)
    image = colour * mask + (1 - mask)  # [B, 3, H, W] over white
    return image, mask


def test_augment_inputs_off_is_identity_and_on_changes_every_sample():
    image, mask = _head_batch()
    same_image, same_mask = augment_inputs(image, mask, InputAugmentConfig(p=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(same_image, image) and torch.equal(same_mask, mask)
    out_image, out_mask = augment_inputs(image, mask, InputAugmentConfig(p=1.0), torch.Generator().manual_seed(0))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert 0 <= float(out_image.min()) and float(out_image.max()) <= 1 and 0 <= float(out_mask.min()) <= 1
    for b in range(image.shape[0]):
        assert (out_image[b] - image[b]).abs().mean() > 1e-3  # every sample was changed


def test_augment_inputs_is_reproducible_from_the_generator():
    image, mask = _head_batch()
    a = augment_inputs(image, mask, InputAugmentConfig(p=1.0), torch.Generator().manual_seed(3))
    b = augment_inputs(image, mask, InputAugmentConfig(p=1.0), torch.Generator().manual_seed(3))
    c = augment_inputs(image, mask, InputAugmentConfig(p=1.0), torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_inputs_each_change_does_what_it_says():
    image, mask = _head_batch(1)
    off = dict(p=1.0, brightness=0, contrast=0, saturation=0, gamma=0, p_grayscale=0, p_shading=0, p_blur=0,
               p_noise=0, p_jpeg=0, p_matte=0, p_soft=0, p_crop=0)
    same, _ = augment_inputs(image, mask, InputAugmentConfig(**off), torch.Generator().manual_seed(0))
    assert torch.allclose(same, image, atol=1e-5)  # every change off: nothing happens
    grey, _ = augment_inputs(image, mask, InputAugmentConfig(**{**off, "p_grayscale": 1.0}), torch.Generator())
    assert torch.allclose(grey[:, 0], grey[:, 2], atol=1e-5) and not torch.allclose(image[:, 0], image[:, 2])
    moved, moved_mask = augment_inputs(image, mask, InputAugmentConfig(**{**off, "p_crop": 1.0, "shift": 0.2,
                                                                            "scale": 0.0, "roll_deg": 0.0}),
                                       torch.Generator().manual_seed(1))
    centre = lambda m: (m[0, 0].nonzero().float().mean(0))  # noqa: E731
    assert (centre(moved_mask) - centre(mask)).norm() > 1.0  # the crop moved
    assert float(moved[0][:, moved_mask[0, 0] < 0.01].min()) > 0.99  # outside the matte is still white
    eroded, eroded_mask = augment_inputs(image, mask, InputAugmentConfig(**{**off, "p_matte": 1.0}),
                                         torch.Generator().manual_seed(5))
    assert float(eroded_mask.sum()) != float(mask.sum())  # the matte grew or shrank


def test_augment_inputs_rejects_bad_shapes_and_settings():
    image, mask = _head_batch()
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        augment_inputs(image, mask[:, 0], InputAugmentConfig(), torch.Generator())
    with pytest.raises(ValueError, match="probability"):
        InputAugmentConfig(p=1.5)
    with pytest.raises(ValueError, match="jpeg_quality"):
        InputAugmentConfig(jpeg_quality=(90, 30))


def test_recolor_hair_paints_only_the_hair_with_the_new_albedo():
    size = 16
    labels = torch.ones(1, 2, size, size, dtype=torch.long)  # skin
    labels[..., 2:10, 2:14] = HAIR_CLASS
    old, new = torch.tensor([[0.33, 0.21, 0.12]]), torch.tensor([[0.12, 0.30, 0.80]])  # brown → blue
    shading = torch.linspace(0.6, 1.2, size).view(1, 1, 1, 1, size)
    images = torch.full((1, 2, 3, size, size), 0.7)
    images = torch.where(labels[:, :, None] == HAIR_CLASS, old.view(1, 1, 3, 1, 1) * shading, images)
    out = recolor_hair(images, labels, old, new)
    inner = out[0, 0, :, 4, 4:12]  # hair pixels away from the region's border
    expected = (new.view(3, 1) * shading[0, 0, 0, 0, 4:12]).clamp(0, 1)
    assert torch.allclose(inner, expected, atol=0.02)  # shading kept, albedo replaced
    assert torch.equal(out[labels[:, :, None].expand_as(out) != HAIR_CLASS], images[labels[:, :, None].expand_as(images) != HAIR_CLASS])
    assert torch.equal(recolor_hair(images, labels, old, old), images)  # same colour: exactly unchanged
