"""Element-wise arithmetic between block tensors (same grid and scale), scalars and per-channel
tensors, residual ``+=``, channel concatenation and clone. All per resolution level."""

from __future__ import annotations

import torch
from torch import Tensor

from ..dispatch import UnsupportedBlockOp, register_block_op
from ..sample import split_dense
from ..tensor import BlockTensor, inference_fast_path
from .common import joint_operand, map_parts, no_pending, operand_parts

__all__ = ["inplace_add"]


def _binary(op_name, fn, out_fn=None, commutative=True):
    def handler(x, other, *args, **kwargs):
        if not isinstance(x, BlockTensor):  # reflected call, e.g. tensor + block
            if not commutative:
                raise UnsupportedBlockOp(
                    f"'{op_name}' with a block tensor as second operand and a dense tensor first"
                )
            x, other = other, x
        no_pending(x, op_name)
        others = operand_parts(x, other, op_name)

        def plain(a, b):
            return fn(a, b, *args, **kwargs)

        def into(a, b, out):
            out_fn(a, b, *args, out=out, **kwargs)

        return map_parts(
            x,
            plain,
            into if out_fn is not None else None,
            others=others,
            joint_other=joint_operand(other),
        )

    return handler


def _inplace(handler):
    def run(x, *args, **kwargs):
        return x.assign(handler(x, *args, **kwargs))

    return run


def _add_out(a, b, alpha=1, out=None):
    return torch.add(a, b, alpha=alpha, out=out)


_add = register_block_op(torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__)(
    _binary("add", torch.add, _add_out)
)
_sub = register_block_op(torch.sub, Tensor.sub, Tensor.__sub__)(
    _binary("sub", torch.sub, commutative=False)
)


def _mul_out(a, b, out=None):
    return torch.mul(a, b, out=out)


_mul = register_block_op(torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__)(
    _binary("mul", torch.mul, _mul_out)
)
_div = register_block_op(torch.div, Tensor.div, Tensor.__truediv__)(
    _binary("div", torch.div, commutative=False)
)
register_block_op(Tensor.sub_, Tensor.__isub__)(_inplace(_sub))
register_block_op(Tensor.mul_, Tensor.__imul__)(_inplace(_mul))
register_block_op(Tensor.div_, Tensor.__itruediv__)(_inplace(_div))


@register_block_op(Tensor.__rsub__, torch.rsub)
def _rsub(x, other, alpha=1):
    """``other - alpha * x``."""
    return _add(_mul(x, -alpha), other)


@register_block_op(Tensor.add_, Tensor.__iadd__)
def inplace_add(x, other, alpha=1):
    """``x += other``: writes into ``x``'s blocks when they are fresh conv/pool outputs."""
    if inference_fast_path() and x.owned and x.pending_pad is None:
        others = operand_parts(x, other, "add_")
        joint = joint_operand(other)
        if x.pixels is not None and joint is not None:
            x.pixels.add_(joint, alpha=alpha)  # both levels at once
        else:
            for a, b in zip(x.parts, others, strict=True):
                a.add_(b, alpha=alpha)
        if x.store is not None:
            x.store.halo = None  # the interior changed: the halo must be refilled
        x.op_id = x.next_op_id()
        return x
    return x.assign(_add(x, other, alpha=alpha))


@register_block_op(torch.cat, torch.concat, torch.concatenate)
def _cat(tensors, dim=0, *, out=None):
    tensors = list(tensors)
    if out is not None:
        raise UnsupportedBlockOp("torch.cat(..., out=) on block tensors")
    if dim not in (1, -3):
        raise UnsupportedBlockOp(
            f"torch.cat along dim {dim}: block tensors concatenate along channels (dim=1) only"
        )
    x = next(t for t in tensors if isinstance(t, BlockTensor))
    # A dense map of the same size (e.g. ASPP's pooled branch upsampled to the map size) is
    # split on the grid like the input image: HR blocks exact, LR blocks its 2x2 average.
    tensors = [t if isinstance(t, BlockTensor) else _sample_like(x, t) for t in tensors]
    for t in tensors[1:]:
        operand_parts(x, t, "cat")
    parts = [torch.cat([t.parts[lv] for t in tensors], 1) for lv in range(len(x.parts))]
    return x.derive(parts)


def _sample_like(x: BlockTensor, t) -> BlockTensor:
    if not isinstance(t, Tensor) or t.dim() != 4:
        raise ValueError(
            f"torch.cat of a block tensor with {type(t).__name__} "
            f"{tuple(getattr(t, 'shape', ()))}; give block tensors or dense [N, C, H, W] maps"
        )
    g = x.grid
    if t.shape[0] != g.N or tuple(t.shape[-2:]) != (g.GH * x.side, g.GW * x.side):
        raise ValueError(
            f"torch.cat of a block tensor (map {g.GH * x.side}x{g.GW * x.side}, {g.N} image(s)) "
            f"with a dense tensor of shape {tuple(t.shape)}; the dense map must have the block "
            "tensor's batch and spatial size"
        )
    return split_dense(t.to(x.dtype), g, x.side, pad_mode=x.pad_mode)


@register_block_op(torch.clone, Tensor.clone)
def _clone(x, memory_format=None):
    return map_parts(x, lambda a: a.clone())
