"""A small model registry: build models by name and remember how they were built.

Registered: SwiftNet with timm backbones (``swiftnet_rn18``, ``swiftnet_rn50``,
``swiftnet_effb0``, ``swiftnet_effl1``, ``swiftnet_mbv3``; :mod:`.swiftnet`) and torchvision's
segmentation networks through the generic wrapper (``deeplabv3_resnet50``,
``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``lraspp_mobilenet_v3_large``;
:mod:`.torchvision_nets`); :func:`register_model` adds your own.

Models made by :func:`create_model` carry ``model.model_name`` and ``model.model_config`` (a
copy of the keyword arguments), which is all :mod:`segblocks.models.checkpoint` needs to rebuild
them from a checkpoint file.

Example:
    >>> from segblocks.models.registry import create_model, list_models
    >>> len(list_models())
    9
    >>> model = create_model("swiftnet_rn18", num_classes=19)
"""

from __future__ import annotations

import copy
import importlib
import inspect
from collections.abc import Callable

from torch import nn

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "model_arguments",
    "model_output_stride",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Modules whose import registers the built-in models (imported lazily, so that importing the
# registry alone has no side effects and no circular import).
_BUILTIN_MODULES = ("segblocks.models.swiftnet", "segblocks.models.torchvision_nets")


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def register_model(name: str):
    """Decorator: register ``fn(**kwargs) -> nn.Module`` under ``name``.

    Raises ``ValueError`` if ``name`` is already registered to a different function.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(
                f"model name {name!r} is already registered to {old.__module__}.{old.__qualname__}"
            )
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    _load_builtins()
    return sorted(_REGISTRY)


def model_arguments(name: str) -> tuple[str, ...] | None:
    """The keyword arguments ``create_model(name, ...)`` accepts (``None``: not known, the
    builder takes ``**kwargs`` without declaring them in a ``model_arguments`` attribute)."""
    _load_builtins()
    fn = _REGISTRY.get(name)
    if fn is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    declared = getattr(fn, "model_arguments", None)
    if declared is not None:
        return tuple(declared)
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind != p.VAR_POSITIONAL)


def model_output_stride(name: str, kwargs: dict | None = None) -> int:
    """The output stride ``create_model(name, **kwargs)`` will have: ``kwargs["output_stride"]``
    when the model takes one, else the builder's ``output_stride`` attribute (32 if unset)."""
    _load_builtins()
    fn = _REGISTRY.get(name)
    if fn is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return int((kwargs or {}).get("output_stride", getattr(fn, "output_stride", 32)))


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` with ``kwargs``.

    The returned model has ``model_name`` (``name``) and ``model_config`` (a deep copy of
    ``kwargs``) attributes, used by :func:`segblocks.models.checkpoint.save_checkpoint`.

    Raises:
        ValueError: ``name`` is not registered (the message lists the available names).
    """
    _load_builtins()
    fn = _REGISTRY.get(name)
    if fn is None:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    config = copy.deepcopy(kwargs)
    model = fn(**kwargs)
    model.model_name = name
    model.model_config = config
    return model
