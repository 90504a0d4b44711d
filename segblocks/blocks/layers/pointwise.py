"""Point-wise ops on block tensors: activations and dropout, applied per resolution level.

A point-wise op commutes with splitting the map into blocks, so all-HR reproduces the dense
op exactly. It also commutes with the 2x average pool of LR blocks only when it is linear;
for non-linear activations all-LR equals the dense network on the 2x-pooled *input*, which is
what block execution promises (every layer sees pooled activations of the previous one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import UnsupportedBlockOp, register_block_op
from .common import functions, inplace_functions, map_parts, no_pending

__all__ = ["unary_handler"]


def unary_handler(name: str, fn, out_fn=None, inplace_fn=None):
    """Handler of an element-wise op ``fn(a, *args, **kwargs)``; ``out_fn`` writes to ``out``,
    ``inplace_fn`` overwrites ``a`` (used for in-place calls on fresh conv outputs)."""

    def handler(x, *args, inplace=False, **kwargs):
        no_pending(x, name)
        y = map_parts(
            x,
            lambda a: fn(a, *args, **kwargs),
            None if out_fn is None else (lambda a, out: out_fn(a, *args, out=out, **kwargs)),
            inplace_fn=(lambda a: inplace_fn(a, *args, **kwargs))
            if inplace and inplace_fn is not None
            else None,
        )
        return x.assign(y) if inplace else y

    def inplace_handler(x, *args, **kwargs):
        return handler(x, *args, inplace=True, **kwargs)

    return handler, inplace_handler


def _relu(a, out=None):
    return torch.clamp_min(a, 0, out=out) if out is not None else torch.relu(a)


def _hardtanh(a, min_val=-1.0, max_val=1.0, out=None):
    if out is not None:
        return torch.clamp(a, min_val, max_val, out=out)
    return F.hardtanh(a, min_val, max_val)


def _hardtanh_(a, min_val=-1.0, max_val=1.0):
    return torch.clamp_(a, min_val, max_val)


def _aten(name: str, suffix: str):
    """``torch.ops.aten.<name>.out`` (``suffix="out"``) or ``torch.ops.aten.<name>_``."""
    if suffix == "out":
        op = getattr(torch.ops.aten, name).out
        return lambda a, *args, out, **kwargs: op(a, *args, out=out, **kwargs)
    return getattr(torch.ops.aten, name + "_")


def _register_unary(name, fn, out_fn=None, inplace_fn=None):
    handler, inplace = unary_handler(name, fn, out_fn, inplace_fn)
    register_block_op(*functions(name))(handler)
    if inplace_functions(name):
        register_block_op(*inplace_functions(name))(inplace)
    return handler


_register_unary("relu", _relu, _relu, torch.relu_)
_hardtanh_handler = _register_unary("hardtanh", _hardtanh, _hardtanh, _hardtanh_)


@register_block_op(F.relu6)
def _relu6(x, inplace=False):
    return _hardtanh_handler(x, 0.0, 6.0, inplace=inplace)


# Single-tensor activations with aten ``.out`` and in-place forms take the fast paths: written
# straight into a padded store when a conv / pool reads them next, in place after a conv.
for _name, _fn in [
    ("silu", F.silu),
    ("sigmoid", torch.sigmoid),
    ("tanh", torch.tanh),
    ("hardswish", F.hardswish),
    ("hardsigmoid", F.hardsigmoid),
    ("mish", F.mish),
    ("neg", torch.neg),
    ("abs", torch.abs),
    ("exp", torch.exp),
]:
    _register_unary(_name, _fn, _aten(_name, "out"), _aten(_name, "inplace"))

for _name, _fn in [
    ("gelu", F.gelu),
    ("leaky_relu", F.leaky_relu),
    ("elu", F.elu),
    ("selu", F.selu),
    ("celu", F.celu),
    ("softplus", F.softplus),
]:
    _register_unary(_name, _fn)


# --------------------------------------------------------------------------- dropout
@register_block_op(*functions("dropout"))
def _dropout(x, p=0.5, training=True, inplace=False):
    if not training or p == 0:
        return x
    # Element-wise masks, drawn per pixel at each resolution: a valid element-wise dropout
    # (not the same random draw as the dense map, which no block layout could reproduce).
    return unary_handler("dropout", lambda a: F.dropout(a, p, True))[0](x, inplace=inplace)


@register_block_op(*functions("alpha_dropout"))
def _alpha_dropout(x, p=0.5, training=False, inplace=False):
    if not training or p == 0:
        return x
    # Alpha dropout is element-wise too (SELU-preserving affine correction per element).
    return unary_handler("alpha_dropout", lambda a: F.alpha_dropout(a, p, True))[0](
        x, inplace=inplace
    )


def _channel_dropout(name):
    def handler(x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return x
        raise UnsupportedBlockOp(
            f"{name} in training drops whole channels per image, which block tensors (blocks of "
            "all images in one batch) cannot express; use element-wise dropout or DenseFallback"
        )

    return handler


for _name in ("dropout1d", "dropout2d", "dropout3d", "feature_alpha_dropout"):
    register_block_op(*functions(_name))(_channel_dropout(_name))
