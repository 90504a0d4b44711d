"""Fold eval-mode batch norm into the preceding convolution (inference deployment).

Folding removes one full read+write pass per conv, for dense and block execution alike; the
benchmarks fold both sides so that the comparison stays fair. A pair is folded only when a
traced forward pass shows that the batch norm's input *is* the conv's output tensor (and
nothing else reads that output), so pre-activation designs (BN-ReLU-Conv, as in SwiftNet's
decoder) and branches are left alone. timm's ``BatchNormAct2d`` keeps its activation and
dropout. ``tests/blocks/test_fuse.py`` checks that outputs are unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

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


_NOT_A_READ = {"__get__", "size", "dim", "numel", "stride", "is_contiguous", "contiguous"}


class _ReadCounter(TorchFunctionMode):
    """Counts, per traced conv output, the torch calls that read it (module or functional)."""

    def __init__(self, produced, readers):
        super().__init__()
        self.produced, self.readers = produced, readers

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _NOT_A_READ:
            stack = list(args) + list(kwargs.values())
            while stack:
                a = stack.pop()
                if isinstance(a, (list, tuple)):
                    stack.extend(a)
                elif isinstance(a, torch.Tensor):
                    hit = self.produced.get(id(a))
                    if hit is not None and hit[1] is a:
                        self.readers[hit[0]] += 1
        return func(*args, **kwargs)


def _conv_bn_pairs(model: nn.Module, example_input) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` pairs where the BN consumes the conv output and only it does."""
    names = {m: n for n, m in model.named_modules()}
    # id(output tensor) -> (conv name, the tensor); holding the tensor keeps its id unique
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    readers: dict[str, int] = {}  # conv name -> torch calls reading its output
    pairs: list[tuple[str, str]] = []
    hooks = []

    def conv_hook(mod, inp, out):
        produced[id(out)] = (names[mod], out)
        readers[names[mod]] = 0

    def bn_pre_hook(mod, inp):
        t = inp[0] if inp else None
        hit = produced.get(id(t)) if isinstance(t, torch.Tensor) else None
        if hit is not None and hit[1] is t:
            pairs.append((hit[0], names[mod]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(bn_pre_hook))
    try:
        with torch.no_grad(), _ReadCounter(produced, readers):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    # The BN's own batch_norm call is the one read allowed.
    return [(c, b) for c, b in pairs if readers.get(c) == 1]


def fold_batchnorm(model: nn.Module, example_input=None, inplace: bool = False) -> nn.Module:
    """Return ``model`` (a copy unless ``inplace``) with eval BN folded into preceding convs.

    Args:
        model: an eval-mode network (training BN needs batch statistics).
        example_input: an input for one traced forward pass that finds the conv -> BN pairs;
            default ``torch.randn(1, 3, 64, 64)`` on the model's device.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs an eval-mode model; call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    if example_input is None:
        p = next(model.parameters(), None)
        example_input = torch.randn(
            1,
            3,
            64,
            64,
            device=p.device if p is not None else None,
            dtype=p.dtype if p is not None else None,
        )
    mods = dict(model.named_modules())
    try:
        pairs = _conv_bn_pairs(model, example_input)
    except Exception as e:
        raise ValueError(
            f"fold_batchnorm could not run the model on an example input of shape "
            f"{tuple(example_input.shape)} ({type(e).__name__}: {e}); pass example_input= "
            "with a shape the model accepts"
        ) from e
    for conv_name, bn_name in pairs:
        conv, bn = mods[conv_name], mods[bn_name]
        if bn.num_features == conv.out_channels and bn.track_running_stats:
            _set(mods, conv_name, _fold(conv, bn))
            _set(mods, bn_name, _bn_replacement(bn))
    return model


def _set(parents: dict, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(parents[parent_name], attr, new)
