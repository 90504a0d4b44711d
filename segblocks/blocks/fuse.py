"""Fold eval-mode batch norm into the preceding convolution (inference deployment).

Folding removes one full read+write pass per conv, for dense and block execution alike; the
benchmarks fold both sides so that the comparison stays fair. Pairs are found in module
registration order (a ``Conv2d`` immediately followed by a ``BatchNorm2d`` of matching width),
which is how torchvision and timm ResNets / EfficientNets declare them (``conv1``/``bn1``,
``conv_pw``/``bn1``, downsample ``Sequential(conv, bn)``). timm's ``BatchNormAct2d`` keeps its
activation and dropout. ``tests/blocks/test_fuse.py`` checks that outputs are unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_batchnorm"]


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
    # fuse_conv_bn_eval builds a plain Conv2d; keep subclasses such as timm's Conv2dSame.
    if type(conv) is not nn.Conv2d:
        new = copy.copy(conv)
        new._parameters = dict(conv._parameters)
        new.weight, new.bias = fused.weight, fused.bias
        return new
    return fused


def _bn_replacement(bn: nn.Module) -> nn.Module:
    """What stays of a BN module once its affine part lives in the conv."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    layers = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` (a copy unless ``inplace``) with eval BN folded into preceding convs.

    Only for inference: the model must be in eval mode (training BN needs batch statistics).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model; call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    named = list(model.named_modules())
    parents = {name: mod for name, mod in named}
    prev_name, prev = None, None
    for name, mod in named:
        if isinstance(mod, nn.Conv2d):
            prev_name, prev = name, mod
            continue
        if isinstance(mod, nn.BatchNorm2d) and prev is not None:
            if mod.num_features == prev.out_channels and mod.track_running_stats:
                _set(parents, prev_name, _fold(prev, mod))
                _set(parents, name, _bn_replacement(mod))
        if len(list(mod.children())) == 0:
            prev_name, prev = None, None
    return model


def _set(parents: dict, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(parents[parent_name], attr, new)
