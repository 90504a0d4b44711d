"""Inference deployment: fold eval-mode batch norm into the preceding convolution, and fuse a
clamping activation (ReLU, ReLU6, hardtanh) into it.

Folding removes one full read+write pass per conv, for dense and block execution alike; the
benchmarks fold both sides so that the comparison stays fair. A pair is folded only when a
traced forward pass shows that the batch norm's input *is* the conv's output tensor (and
nothing else reads that output), so pre-activation designs (BN-ReLU-Conv, as in SwiftNet's
decoder) and branches are left alone. timm's ``BatchNormAct2d`` keeps its activation and
dropout. :func:`fuse_activations` then turns conv -> ReLU / ReLU6 pairs (the same trace rule)
into one :class:`Conv2dActivation`: on block tensors the depthwise kernel and the 1x1 GEMMs
apply the clamp while writing their output; on dense tensors it is the conv and an in-place
clamp, as before. ``tests/blocks/test_fuse.py`` checks that outputs are unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["fold_batchnorm", "fuse_activations", "Conv2dActivation"]


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


def _conv_consumers(model: nn.Module, example_input, consumers) -> list[tuple]:
    """``(conv name, consumer name, reads before, reads in all)``: a module of type
    ``consumers`` that takes a conv's output as its input, with the torch calls that read that
    output before the consumer ran and in the whole pass (the consumer's own call included).
    Convs and consumers called more than once (shared modules) are left out."""
    names = {m: n for n, m in model.named_modules()}
    # id(output tensor) -> (conv name, the tensor); holding the tensor keeps its id unique
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    readers: dict[str, int] = {}  # conv name -> torch calls reading its output
    calls: dict[str, int] = {}
    found: list[tuple[str, str, int]] = []
    hooks = []

    def conv_hook(mod, inp, out):
        produced[id(out)] = (names[mod], out)
        readers[names[mod]] = 0
        calls[names[mod]] = calls.get(names[mod], 0) + 1

    def consumer_pre_hook(mod, inp):
        calls[names[mod]] = calls.get(names[mod], 0) + 1
        t = inp[0] if inp else None
        hit = produced.get(id(t)) if isinstance(t, torch.Tensor) else None
        if hit is not None and hit[1] is t:
            found.append((hit[0], names[mod], readers[hit[0]]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        if isinstance(m, consumers):
            hooks.append(m.register_forward_pre_hook(consumer_pre_hook))
    try:
        with torch.no_grad(), _ReadCounter(produced, readers):
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return [
        (c, b, before, readers[c])
        for c, b, before in found
        if calls.get(c) == 1 and calls.get(b) == 1
    ]


def _conv_bn_pairs(model: nn.Module, example_input) -> list[tuple[str, str]]:
    """``(conv name, bn name)`` pairs where the BN consumes the conv output and only it does
    (the BN's own batch_norm call is the one read allowed)."""
    found = _conv_consumers(model, example_input, (nn.BatchNorm2d,))
    return [(c, b) for c, b, _before, total in found if total == 1]


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


class Conv2dActivation(nn.Conv2d):
    """A ``nn.Conv2d`` followed by ``clamp(lo, hi)`` (ReLU: ``(0, inf)``, ReLU6: ``(0, 6)``) as
    one layer; made by :func:`fuse_activations` from a conv and its activation module."""

    def __init__(self, *args, act_min: float = 0.0, act_max: float = float("inf"), **kwargs):
        super().__init__(*args, **kwargs)
        self.act_min, self.act_max = float(act_min), float(act_max)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, act_min: float, act_max: float) -> Conv2dActivation:
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)  # same parameters, buffers and hooks
        new._parameters = dict(conv._parameters)
        new.act_min, new.act_max = float(act_min), float(act_max)
        return new

    def forward(self, x):
        from .layers.conv import conv2d_activation

        if self.padding_mode != "zeros":
            return super().forward(x).clamp_(self.act_min, self.act_max)
        return conv2d_activation(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.act_min,
            self.act_max,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, act=clamp({self.act_min:g}, {self.act_max:g})"


def _clamp_range(act: nn.Module) -> tuple[float, float] | None:
    if type(act) is nn.ReLU:
        return 0.0, float("inf")
    if type(act) in (nn.ReLU6, nn.Hardtanh):
        return float(act.min_val), float(act.max_val)
    return None


def fuse_activations(model: nn.Module, example_input, inplace: bool = False) -> nn.Module:
    """Return ``model`` (a copy unless ``inplace``) with every plain ``nn.Conv2d`` whose output
    goes only into a ``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` module replaced by one
    :class:`Conv2dActivation` (the activation module becomes ``nn.Identity``). Subclasses of
    ``nn.Conv2d`` (e.g. timm's ``Conv2dSame``, which pads in its own forward) are left alone.

    Args:
        model: an eval-mode network, usually after :func:`fold_batchnorm` (conv -> BN -> act
            becomes conv -> act there).
        example_input: an input for one traced forward pass.
    """
    if not inplace:
        model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    acts = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
    try:
        found = _conv_consumers(model, example_input, acts)
    except Exception as e:
        raise ValueError(
            f"fuse_activations could not run the model on an example input of shape "
            f"{tuple(example_input.shape)} ({type(e).__name__}: {e}); pass an input the model "
            "accepts"
        ) from e
    for conv_name, act_name, before, total in found:
        conv, act = mods[conv_name], mods[act_name]
        rng = _clamp_range(act)
        # Nothing may read the conv output before the activation; after it, only an in-place
        # activation makes later reads see the activated values (as the fused layer gives).
        alone = before == 0 and (total == 1 or getattr(act, "inplace", False))
        if type(conv) is nn.Conv2d and rng is not None and alone:
            _set(mods, conv_name, Conv2dActivation.from_conv(conv, *rng))
            _set(mods, act_name, nn.Identity())
    return model
