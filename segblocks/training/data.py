"""Training data: datasets by config, per-sample seeded augmentation, epoch-aware sampling.

The data order of epoch ``e`` comes from a ``DistributedSampler`` seeded with the config's
``seed`` (wrapped in :class:`EpochSampler`), and every sample's augmentation runs under its own
RNG seeded from ``(seed, e, index)`` (:class:`AugmentedDataset`), so the data of a run does not
depend on worker count or on what ran before, and a resumed run sees the same data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ..data import create_dataset, dataset_needs_root
from ..data import transforms as T
from .config import TrainConfig

__all__ = [
    "AugmentedDataset",
    "EpochSampler",
    "make_dataset",
    "dataset_num_classes",
    "build_datasets",
]


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0])


class AugmentedDataset(Dataset):
    """``base[index]`` followed by ``transform`` under an RNG seeded from ``(seed, epoch, index)``.

    Keys are ``(epoch, index)`` pairs (from :class:`EpochSampler`) or plain indices (epoch 0).
    """

    def __init__(self, base: Dataset, transform=None, seed: int = 0):
        self.base, self.transform, self.seed = base, transform, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.base[index]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(_sample_seed(self.seed, epoch, index))
                image, label = self.transform(image, label)
        return image.contiguous(), label.contiguous()


class EpochSampler(Sampler):
    """Wraps a sampler with ``set_epoch``; yields ``(epoch, index)`` for AugmentedDataset."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        e = self.epoch
        return ((e, int(i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def make_dataset(cfg: TrainConfig, split: str, kwargs: dict):
    """The configured dataset's ``split``, built with ``kwargs`` (no augmentation)."""
    kwargs = dict(kwargs)
    if cfg.dataset == "procedural":
        kwargs.setdefault("num_images", 64)
    if dataset_needs_root(cfg.dataset) and not cfg.data_root:
        raise ValueError(f"dataset {cfg.dataset!r} needs data_root (e.g. data_root=/data/...)")
    if kwargs.get("size") is not None:
        kwargs["size"] = tuple(kwargs["size"])
    return create_dataset(cfg.dataset, cfg.data_root, split=split, **kwargs)


def dataset_num_classes(ds) -> int:
    """``ds.num_classes``, or the length of ``ds.classes``."""
    n = getattr(ds, "num_classes", None)
    return int(n) if n is not None else len(ds.classes)


def build_datasets(cfg: TrainConfig, mean, std):
    """``(train, val)`` :class:`AugmentedDataset` s; ``val`` is ``None`` when the run never
    validates (no ``eval_at_end``, no ``eval_every``)."""
    train_base = make_dataset(cfg, "train", cfg.dataset_kwargs)
    ignore = int(getattr(train_base, "ignore_index", 255))
    aug = []
    if (cfg.scale_min, cfg.scale_max) != (1.0, 1.0):
        if cfg.crop_size is None:
            raise ValueError("random scaling needs crop_size (images of one batch must match)")
        aug.append(T.RandomScale(cfg.scale_min, cfg.scale_max))
    if cfg.crop_size is not None:
        crop = cfg.crop_size
        aug.append(T.RandomCrop(crop if isinstance(crop, int) else tuple(crop), ignore))
    if cfg.jitter:
        aug.append(T.ColorJitter(cfg.jitter, cfg.jitter, cfg.jitter))
    if cfg.hflip:
        aug.append(T.RandomHorizontalFlip())
    aug.append(T.Normalize(mean, std))
    train = AugmentedDataset(train_base, T.Compose(aug), cfg.seed)
    val = None
    if cfg.eval_at_end or cfg.eval_every:
        val_base = make_dataset(cfg, "val", {**cfg.dataset_kwargs, **cfg.val_kwargs})
        val = AugmentedDataset(val_base, T.Normalize(mean, std), cfg.seed)
    return train, val
