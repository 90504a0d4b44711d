"""Paired segmentation transforms on ``(image [3,H,W] float, label [H,W] long)``.

All randomness comes from the global torch RNG, so pipelines are deterministic under
``torch.manual_seed``. Labels are always resized with nearest-neighbour interpolation and
padded with ``ignore_index``; photometric transforms touch the image only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

__all__ = [
    "Compose",
    "RandomScale",
    "RandomCrop",
    "ColorJitter",
    "RandomHorizontalFlip",
    "Normalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = tuple[torch.Tensor, torch.Tensor]


def _resize_pair(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]) -> Pair:
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
    return image, label.to(torch.long)


class Compose:
    """Apply paired transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, torch.Tensor], Pair]]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Pair:
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class RandomScale:
    """Rescale by a factor drawn uniformly from ``[min_scale, max_scale]``
    (image bilinear, label nearest)."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Pair:
        s = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(()).item()
        h, w = label.shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        if size == (h, w):
            return image, label
        return _resize_pair(image, label, size)

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Random ``size = (h, w)`` crop; smaller inputs are first padded at the bottom/right
    (image with 0, label with ``ignore_index``)."""

    def __init__(self, size: int | tuple[int, int], ignore_index: int = 255):
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Pair:
        ch, cw = self.size
        h, w = label.shape[-2:]
        ph, pw = max(0, ch - h), max(0, cw - w)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            label = F.pad(label, (0, pw, 0, ph), value=self.ignore_index)
            h, w = label.shape[-2:]
        top = int(torch.randint(0, h - ch + 1, ()).item())
        left = int(torch.randint(0, w - cw + 1, ()).item())
        return (
            image[..., top : top + ch, left : left + cw],
            label[..., top : top + ch, left : left + cw],
        )

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, ignore_index={self.ignore_index})"


class ColorJitter:
    """Photometric jitter of the image only (``torchvision.transforms.v2.ColorJitter``)."""

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        self.jitter = v2.ColorJitter(brightness, contrast, saturation, hue)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Pair:
        return self.jitter(image), label

    def __repr__(self) -> str:
        return repr(self.jitter)


class RandomHorizontalFlip:
    """Flip image and label left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Pair:
        if torch.rand(()).item() < self.p:
            return image.flip(-1), label.flip(-1)
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Per-channel ``(image - mean) / std``; label untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> Pair:
        mean = self.mean.to(image.device, image.dtype)
        std = self.std.to(image.device, image.dtype)
        return (image - mean) / std, label

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
