"""Model loading: checkpoints that rebuild their model (``save_checkpoint`` / ``load_model``
for a network, ``SegBlocksModel.from_checkpoint`` for a trained SegBlocks model with its
policy, dataset, class names and palette).

A checkpoint is a ``torch.save``-d dict::

    {"format": "segblocks-checkpoint", "version": 1,
     "model_name": "swiftnet_rn18",              # registry name
     "model_config": {"num_classes": 19, ...},   # the create_model keyword arguments
     "state_dict": {...},
     **extra}                                     # e.g. epoch, optimizer state, metrics

Writes are atomic: the dict goes to a temporary file (``.NAME.*.tmp``) in the target
directory, which then replaces the target with ``os.replace``, so a crash never leaves a
truncated checkpoint; the file gets the usual permissions (``0666`` less the umask).
:func:`remove_stale_temp_files` deletes the temporary files a killed write left behind.

Reading is guarded: a missing, empty, truncated or foreign file, or weights that do not fit the
model, raise :class:`~segblocks.errors.CheckpointError` with a one-line message naming the file
and what to do.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..data.palettes import palette_for
from ..errors import CheckpointError
from .registry import create_model

__all__ = [
    "segblocks_from_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_state_dict_checked",
    "model_from_checkpoint",
    "remove_stale_temp_files",
    "export_checkpoint",
]

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
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
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


#: what :func:`export_checkpoint` keeps besides the model (training state is dropped)
EXPORT_KEYS = ("segblocks", "policy_state_dict", "config", "epoch", "global_step", "history")


def _cast_floats(state: dict, dtype: torch.dtype) -> dict:
    return {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in state.items()
    }


def export_checkpoint(src, dst, dtype: torch.dtype = torch.float16) -> Path:
    """A small deployable copy of a (trainer) checkpoint: the model, the SegBlocks policy and
    its weights, the training config and history, with floating-point weights cast to
    ``dtype``; the optimizer, scheduler and RNG states are dropped.

    The export rebuilds its model from the file alone (:func:`load_model`,
    :meth:`SegBlocksModel.from_checkpoint`), which loads the weights back into float32
    modules. Half precision halves the file; weights lose precision below ~1e-3 relative.

    Args:
        src: checkpoint written by :func:`save_checkpoint` (e.g. a run's ``last.pt``).
        dst: file to write.
        dtype: ``torch.float16`` (default), ``torch.bfloat16`` or ``torch.float32``.
    """
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"export dtype {dtype} must be float16, bfloat16 or float32")
    ckpt = load_checkpoint(src)
    extra = {k: ckpt[k] for k in EXPORT_KEYS if k in ckpt}
    if isinstance(extra.get("policy_state_dict"), dict):
        extra["policy_state_dict"] = _cast_floats(extra["policy_state_dict"], dtype)
    extra["exported_from"] = {"file": Path(src).name, "dtype": str(dtype).removeprefix("torch.")}
    model = model_from_checkpoint(ckpt, src)
    model.load_state_dict(_cast_floats(model.state_dict(), dtype), strict=True, assign=True)
    return save_checkpoint(model, dst, **extra)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(path) -> list[Path]:
    """Delete the temporary files (``.NAME.*.tmp``) that killed writes of checkpoint ``path``
    left in its folder; returns the removed paths. Call it only when no other process writes
    this checkpoint (the trainer does, holding the output folder's lock)."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _unreadable(path, why: str, hint: str) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {path}: {why}; {hint}")


_DEFAULT_HINT = "delete it, or give a checkpoint written by segblocks train / save_checkpoint"


def load_checkpoint(
    path, map_location="cpu", weights_only: bool = True, hint: str | None = None
) -> dict:
    """Read a checkpoint dict (see the module docstring) without building the model.

    ``weights_only=False`` is needed only when ``extra`` entries held arbitrary Python objects;
    use it for trusted files only.

    Raises:
        CheckpointError: the file is missing, empty, truncated, not a PyTorch file or not a
            segblocks checkpoint; the one-line message names it and ends with ``hint`` (what to
            do; default: delete it or give another file).
    """
    hint = hint or _DEFAULT_HINT
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {path} not found; check the path")
    if p.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the .pt file in it")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise _unreadable(path, e.strerror or str(e), hint) from None
    if size == 0:
        raise _unreadable(path, "the file is empty (0 bytes; an interrupted copy?)", hint)
    is_zip = zipfile.is_zipfile(p)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=weights_only)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise _unreadable(path, e.strerror or str(e), hint) from None
    except Exception as e:  # noqa: BLE001 - every decoding failure means a bad file
        if is_zip and weights_only and isinstance(e, pickle.UnpicklingError) and _zip_ok(p):
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            obj = f" ({found.group(1)})" if found else ""
            raise _unreadable(
                path,
                f"it holds Python objects{obj} that safe (weights-only) loading refuses",
                "if you trust the file, load it with "
                "segblocks.models.load_checkpoint(path, weights_only=False)",
            ) from None
        what = "truncated or corrupt" if is_zip else "truncated, corrupt or not a PyTorch file"
        raise _unreadable(path, f"the file is {what} ({size} bytes)", hint) from None
    if not isinstance(ckpt, dict) or "model_name" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a segblocks checkpoint (no model_name / state_dict entries); "
            "give a file written by segblocks train or segblocks.models.save_checkpoint"
        )
    return ckpt


def _zip_ok(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except Exception:  # noqa: BLE001
        return False


def load_state_dict_checked(module: nn.Module, state_dict, path, what: str = "weights") -> None:
    """``module.load_state_dict(state_dict)`` (strict) with a one-line
    :class:`~segblocks.errors.CheckpointError` naming ``path`` when the tensors do not fit."""
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"checkpoint {path}: its {what} are not a state dict")
    target = module.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    shapes = [
        k
        for k in target
        if k in state_dict
        and hasattr(state_dict[k], "shape")
        and tuple(state_dict[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} tensor(s) of another shape, e.g. {k} "
                f"{tuple(state_dict[k].shape)} in the file vs {tuple(target[k].shape)}"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"checkpoint {path}: its {what} do not fit the model ({'; '.join(parts)}); it was "
            "saved for another model or class count: use the model config it was trained with"
        )
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, ValueError, TypeError) as e:
        first = " ".join((str(e).strip().splitlines() or [""])[0].split())
        raise CheckpointError(
            f"checkpoint {path}: its {what} do not fit the model ({first[:160]})"
        ) from None


def load_model(
    path, map_location="cpu", strict: bool = True, weights_only: bool = True, **overrides
) -> nn.Module:
    """Rebuild the model stored in ``path`` and load its weights; returned in eval mode.

    The model is built with ``create_model(model_name, **model_config)``, except that
    ``pretrained_backbone`` is forced to ``False`` (the checkpoint holds all weights, so no
    download or weights file is needed). ``overrides`` replace config entries.
    """
    ckpt = load_checkpoint(path, map_location=map_location, weights_only=weights_only)
    return model_from_checkpoint(ckpt, path, map_location, strict, **overrides)


def model_from_checkpoint(
    ckpt: dict, path, map_location="cpu", strict: bool = True, **overrides
) -> nn.Module:
    """:func:`load_model` for a checkpoint dict already read from ``path``."""
    config = dict(ckpt.get("model_config") or {})
    if "pretrained_backbone" in config:
        config["pretrained_backbone"] = False
    config.update(overrides)
    try:
        model = create_model(ckpt["model_name"], **config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: cannot rebuild its model {ckpt['model_name']!r} with "
            f"{config} ({e}); it was written by another version of segblocks or edited"
        ) from None
    if strict:
        load_state_dict_checked(model, ckpt["state_dict"], path)
    else:
        model.load_state_dict(ckpt["state_dict"], strict=False)
    # Remember the config as originally given, so a re-saved checkpoint is the same.
    model.model_config = {**dict(ckpt.get("model_config") or {}), **overrides}
    if (
        map_location is not None
        and not callable(map_location)
        and not isinstance(map_location, dict)
    ):
        model.to(map_location)
    return model.eval()


def segblocks_from_checkpoint(cls, path, map_location="cpu"):
    """:meth:`SegBlocksModel.from_checkpoint <segblocks.models.segblocks_model.SegBlocksModel.
    from_checkpoint>`: the trained model of a trainer checkpoint, ``cls`` being the
    SegBlocks model class (passed in: this module sits below it)."""
    ckpt = load_checkpoint(path, map_location=map_location)
    net = model_from_checkpoint(ckpt, path, map_location=map_location)
    sb = ckpt.get("segblocks") or {}
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    dataset = sb.get("dataset") or config.get("dataset")
    classes = [str(c) for c in sb.get("classes") or ()] or None
    num_classes = int(getattr(net, "num_classes", 0) or 0)
    palette = sb.get("palette")
    if palette is None and dataset and num_classes:
        pal, _, what = palette_for(dataset, num_classes, classes)
        palette = pal if what != "generic palette" else None
    try:
        model = cls(
            net,
            sb.get("policy", "all_hr"),
            sb.get("block_size", 128),
            pad_mode=sb.get("pad_mode", "avg"),
            dataset=dataset,
            class_names=classes,
            palette=palette,
            # the block size is the model's (a stored copy would collide with it)
            **{k: v for k, v in (sb.get("policy_kwargs") or {}).items() if k != "block_size"},
        )
    except (ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path}: cannot rebuild its SegBlocks model ({e})"
        ) from None
    if ckpt.get("policy_state_dict"):
        load_state_dict_checked(model.policy, ckpt["policy_state_dict"], path, "policy weights")
    if map_location is not None and not callable(map_location):
        model.to(map_location)
    return model.eval()
