"""Dataset registry: build datasets by name, beside the model registry
(:mod:`segblocks.models.registry`) and the policy registry (:data:`segblocks.policies.POLICIES`).

The built-in datasets are registered at the bottom of this module, in this order:
``procedural`` (:class:`~segblocks.data.ProceduralStreets`, made on the fly, no folder),
``camvid``, ``cityscapes`` and ``mapillary`` (read from a dataset folder ``root``).

Example:
    >>> from segblocks.data.registry import create_dataset, list_datasets
    >>> list_datasets()
    ['procedural', 'camvid', 'cityscapes', 'mapillary']
    >>> val = create_dataset("camvid", root="/data/camvid", split="val")
    >>> toy = create_dataset("procedural", split="val", num_images=16)
"""

from __future__ import annotations

from ..errors import did_you_mean
from .datasets import CamVid, Cityscapes, MapillaryVistas
from .procedural import ProceduralStreets

__all__ = [
    "register_dataset",
    "get_dataset_class",
    "dataset_needs_root",
    "list_datasets",
    "create_dataset",
]

_REGISTRY: dict[str, type] = {}
_NEEDS_ROOT: dict[str, bool] = {}


def register_dataset(name: str, *, needs_root: bool = True):
    """Class decorator: make the dataset class available as ``create_dataset(name, ...)``.

    ``needs_root``: the class reads a dataset folder, its first argument ``root``; ``False``
    for classes that make their data (they take no ``root``). Raises ``ValueError`` if
    ``name`` is already registered to another class.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")

    def deco(cls: type) -> type:
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            raise ValueError(
                f"dataset name {name!r} is already registered to "
                f"{old.__module__}.{old.__qualname__}"
            )
        _REGISTRY[name] = cls
        _NEEDS_ROOT[name] = bool(needs_root)
        return cls

    return deco


def list_datasets() -> list[str]:
    """Names of the registered datasets, in registration order (the built-ins first)."""
    return list(_REGISTRY)


def get_dataset_class(name: str) -> type:
    """The class registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message names it, suggests the closest
            name and lists the available ones.
    """
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"unknown dataset {name!r}{did_you_mean(name, _REGISTRY)}; "
            f"available datasets: {', '.join(_REGISTRY)}"
        )
    return cls


def dataset_needs_root(name: str) -> bool:
    """Whether dataset ``name`` reads a dataset folder (``root``); ``False`` for ``procedural``."""
    get_dataset_class(name)
    return _NEEDS_ROOT[name]


def create_dataset(name: str, root=None, split: str = "train", **kwargs):
    """Build dataset ``name``'s ``split`` with the class's keyword arguments ``kwargs``.

    ``root`` (the dataset folder) goes to datasets that read one and is ignored by those that
    make their data (``procedural``, which needs ``num_images`` instead).

    Raises:
        ValueError: unknown ``name`` (see :func:`get_dataset_class`), or no ``root`` for a
            dataset that reads a folder.
    """
    cls = get_dataset_class(name)
    if not _NEEDS_ROOT[name]:
        return cls(split=split, **kwargs)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root (the dataset folder)")
    return cls(root, split=split, **kwargs)


register_dataset("procedural", needs_root=False)(ProceduralStreets)
register_dataset("camvid")(CamVid)
register_dataset("cityscapes")(Cityscapes)
register_dataset("mapillary")(MapillaryVistas)
