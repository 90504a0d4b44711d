"""Checkpoints that rebuild their model: ``save_checkpoint`` / ``load_model``.

A checkpoint is a ``torch.save``-d dict::

    {"format": "segblocks-checkpoint", "version": 1,
     "model_name": "swiftnet_rn18",              # registry name
     "model_config": {"num_classes": 19, ...},   # the create_model keyword arguments
     "state_dict": {...},
     **extra}                                     # e.g. epoch, optimizer state, metrics

Writes are atomic: the dict goes to a temporary file in the target directory, which then
replaces the target with ``os.replace``, so a crash never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .registry import create_model

__all__ = ["save_checkpoint", "load_checkpoint", "load_model"]

FORMAT = "segblocks-checkpoint"
VERSION = 1
_RESERVED = ("format", "version", "model_name", "model_config", "state_dict")


def save_checkpoint(model: nn.Module, path, **extra) -> Path:
    """Write ``model`` (made by :func:`~segblocks.models.registry.create_model`) to ``path``.

    Args:
        model: a model with ``model_name`` and ``model_config`` attributes.
        path: target file; its directory is created if needed.
        **extra: more entries to store (anything ``torch.save`` accepts; plain tensors,
            numbers, strings, lists and dicts keep the file loadable with ``weights_only=True``).

    Returns:
        the path written.
    """
    name = getattr(model, "model_name", None)
    config = getattr(model, "model_config", None)
    if name is None or config is None:
        raise ValueError(
            "save_checkpoint needs a model built by segblocks.models.create_model (it records "
            "model_name and model_config, which load_model uses to rebuild the model)"
        )
    clash = [k for k in extra if k in _RESERVED]
    if clash:
        raise ValueError(f"extra keys {clash} are reserved by the checkpoint format")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "model_name": name,
        # Paths as strings, so the file stays loadable with torch.load(weights_only=True).
        "model_config": {
            k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in config.items()
        },
        "state_dict": model.state_dict(),
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_checkpoint(path, map_location="cpu", weights_only: bool = True) -> dict:
    """Read a checkpoint dict (see the module docstring) without building the model.

    ``weights_only=False`` is needed only when ``extra`` entries held arbitrary Python objects;
    use it for trusted files only.
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=weights_only)
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a segblocks checkpoint (no model_name / state_dict entries); "
            "write checkpoints with segblocks.models.checkpoint.save_checkpoint"
        )
    return ckpt


def load_model(
    path, map_location="cpu", strict: bool = True, weights_only: bool = True, **overrides
) -> nn.Module:
    """Rebuild the model stored in ``path`` and load its weights; returned in eval mode.

    The model is built with ``create_model(model_name, **model_config)``, except that
    ``pretrained_backbone`` is forced to ``False`` (the checkpoint holds all weights, so no
    download or weights file is needed). ``overrides`` replace config entries.
    """
    ckpt = load_checkpoint(path, map_location=map_location, weights_only=weights_only)
    config = dict(ckpt.get("model_config") or {})
    if "pretrained_backbone" in config:
        config["pretrained_backbone"] = False
    config.update(overrides)
    model = create_model(ckpt["model_name"], **config)
    model.load_state_dict(ckpt["state_dict"], strict=strict)
    # Remember the config as originally given, so a re-saved checkpoint is the same.
    model.model_config = {**dict(ckpt.get("model_config") or {}), **overrides}
    if (
        map_location is not None
        and not callable(map_location)
        and not isinstance(map_location, dict)
    ):
        model.to(map_location)
    return model.eval()
