"""Paired segmentation transforms."""

from __future__ import annotations

import pytest
import torch

from segblocks.data.transforms import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
)


def _pair(h: int = 20, w: int = 30, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, h, w, generator=g)
    label = torch.randint(0, 5, (h, w), generator=g)
    label[0, 0] = 255
    return image, label


def _allowed(label: torch.Tensor) -> set[int]:
    return set(label.unique().tolist()) | {255}


def test_random_scale_shapes_and_label_values():
    image, label = _pair()
    t = RandomScale(0.5, 2.0)
    sizes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        img2, lab2 = t(image, label)
        assert img2.shape[0] == 3 and img2.shape[1:] == lab2.shape
        assert img2.dtype == torch.float32 and lab2.dtype == torch.int64
        h, w = lab2.shape
        assert 10 <= h <= 40 and 15 <= w <= 60
        assert set(lab2.unique().tolist()) <= _allowed(label)
        sizes.add((h, w))
    assert len(sizes) > 1


def test_random_scale_deterministic():
    image, label = _pair()
    t = Compose([RandomScale(0.5, 2.0), RandomCrop(16), RandomHorizontalFlip(0.5)])
    torch.manual_seed(3)
    a = t(image, label)
    torch.manual_seed(3)
    b = t(image, label)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_random_crop_shapes_and_alignment():
    h, w = 20, 30
    image = torch.arange(h * w, dtype=torch.float32).view(1, h, w).repeat(3, 1, 1)
    label = torch.arange(h * w).view(h, w)
    torch.manual_seed(0)
    img2, lab2 = RandomCrop((8, 12))(image, label)
    assert img2.shape == (3, 8, 12) and lab2.shape == (8, 12)
    assert torch.equal(img2[0].long(), lab2)  # image and label cropped at the same spot


def test_random_crop_pads_with_ignore():
    image, label = _pair(5, 6)
    label[label == 255] = 1
    torch.manual_seed(0)
    img2, lab2 = RandomCrop((8, 10), ignore_index=255)(image, label)
    assert img2.shape == (3, 8, 10) and lab2.shape == (8, 10)
    assert torch.equal(lab2[:5, :6], label) and torch.equal(img2[:, :5, :6], image)
    assert (lab2[5:] == 255).all() and (lab2[:, 6:] == 255).all()
    assert (img2[:, 5:] == 0).all() and (img2[:, :, 6:] == 0).all()
    torch.manual_seed(0)
    _, lab3 = RandomCrop(7, ignore_index=99)(image, label)
    assert lab3.shape == (7, 7) and (lab3[5:] == 99).all()


def test_scale_then_crop_label_values():
    image, label = _pair()
    t = Compose([RandomScale(0.5, 2.0), RandomCrop(24)])
    for seed in range(5):
        torch.manual_seed(seed)
        img2, lab2 = t(image, label)
        assert img2.shape == (3, 24, 24) and lab2.shape == (24, 24)
        assert set(lab2.unique().tolist()) <= _allowed(label)


def test_flip_flips_both():
    image, label = _pair()
    img2, lab2 = RandomHorizontalFlip(1.0)(image, label)
    assert torch.equal(img2, image.flip(-1)) and torch.equal(lab2, label.flip(-1))
    img3, lab3 = RandomHorizontalFlip(0.0)(image, label)
    assert torch.equal(img3, image) and torch.equal(lab3, label)
    torch.manual_seed(0)
    flips = 0
    for _ in range(50):
        img4, lab4 = RandomHorizontalFlip(0.5)(image, label)
        flipped = torch.equal(lab4, label.flip(-1))
        assert torch.equal(img4, image.flip(-1) if flipped else image)
        flips += flipped
    assert 5 < flips < 45


def test_color_jitter_image_only_and_deterministic():
    image, label = _pair()
    t = ColorJitter(0.4, 0.4, 0.4, 0.1)
    torch.manual_seed(1)
    img2, lab2 = t(image, label)
    torch.manual_seed(1)
    img3, _ = t(image, label)
    assert torch.equal(lab2, label) and img2.shape == image.shape
    assert not torch.equal(img2, image) and torch.equal(img2, img3)
    assert img2.min() >= 0 and img2.max() <= 1


def test_normalize():
    image, label = _pair()
    img2, lab2 = Normalize([0.5, 0.5, 0.5], [0.25, 0.5, 1.0])(image, label)
    assert torch.equal(lab2, label)
    torch.testing.assert_close(img2[0], (image[0] - 0.5) / 0.25)
    torch.testing.assert_close(img2[2], image[2] - 0.5)


def test_bad_scale_args():
    with pytest.raises(ValueError):
        RandomScale(2.0, 0.5)
