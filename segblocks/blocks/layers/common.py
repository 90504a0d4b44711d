"""Helpers shared by the block layer handlers: per-level mapping and operand checks."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dispatch import UnsupportedBlockOp
from ..tensor import BlockTensor, Store, inference_fast_path

__all__ = [
    "pair",
    "map_parts",
    "joint_operand",
    "no_pending",
    "operand_parts",
    "functions",
    "inplace_functions",
]


def functions(name: str) -> list[Callable]:
    """The out-of-place ``F.<name>``, ``torch.<name>`` and ``torch.Tensor.<name>`` that exist."""
    found = [getattr(m, name, None) for m in (F, torch, torch.Tensor)]
    return list(dict.fromkeys(f for f in found if f is not None))


def inplace_functions(name: str) -> list[Callable]:
    """The in-place ``<name>_`` variants (``F.relu_``, ``torch.relu_``, ``Tensor.relu_``)."""
    return functions(name + "_")


def pair(v, name="value") -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise ValueError(f"{name} {v!r} must be an int or a pair")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def map_parts(
    x: BlockTensor,
    fn: Callable,
    out_fn: Callable | None = None,
    side: int | None = None,
    others: list | None = None,
    inplace_fn: Callable | None = None,
    joint_other=None,
) -> BlockTensor:
    """Apply ``fn`` to each level's blocks; with a learned halo, write into a padded store.

    ``others``: per level, the second operand of a binary op, passed as ``fn(a, b)`` /
    ``out_fn(a, b, out)``. ``out_fn`` writes its result into ``out`` (inference only).
    ``inplace_fn(a, *others)`` overwrites ``a``: used (inference only) when ``x.owned`` (its
    parts are fresh conv / pool outputs nobody else holds) and no consumer asked for a halo, so
    an in-place activation after a conv stays in place as in the dense network; ``x`` itself is
    returned then.

    When ``x.pixels`` holds both levels in one matrix (see :class:`BlockTensor`), ``fn`` /
    ``inplace_fn`` run once on it, for an element-wise ``fn`` that broadcasts only scalars:
    ``joint_other`` is then the second operand for that matrix (a number or another block
    tensor's ``pixels``); a binary op without one (``None``) takes the per-level path.
    """
    trace = x.trace
    op_id = x.next_op_id()
    pads = trace.margins_for(op_id) if (trace is not None and out_fn is not None) else None
    extra = [()] * len(x.parts) if others is None else [(o,) for o in others]
    store = None
    if pads is not None:
        store = Store(x.grid, x.side, pads, x.channels, x.dtype, x.device, trace)
        parts = store.interiors()
        for a, e, out in zip(x.parts, extra, parts, strict=True):
            out_fn(a, *e, out)
    elif (
        inplace_fn is not None
        and side in (None, x.side)
        and x.owned
        and x.pending_pad is None
        and inference_fast_path()
    ):
        joint = _joint_operands(x, others, joint_other)
        if joint is not None:
            inplace_fn(x.pixels, *joint)
        else:
            for a, e in zip(x.parts, extra, strict=True):
                inplace_fn(a, *e)
        if x.store is not None:
            x.store.halo = None  # the interior changed: the halo must be refilled
        x.op_id = op_id
        return x
    else:
        joint = _joint_operands(x, others, joint_other) if side in (None, x.side) else None
        if joint is not None:
            return x.derive(None, side=side, op_id=op_id, pixels=fn(x.pixels, *joint))
        parts = [fn(a, *e) for a, e in zip(x.parts, extra, strict=True)]
    return x.derive(parts, side=side, store=store, op_id=op_id)


def _joint_operands(x: BlockTensor, others, joint_other):
    """The extra operands of a once-for-both-levels call on ``x.pixels``, or None."""
    if x.pixels is None:
        return None
    if others is None:
        return ()
    return None if joint_other is None else (joint_other,)


def joint_operand(other):
    """``map_parts``' ``joint_other`` for a binary op's second operand: a number, another block
    tensor's ``pixels``, or ``None`` (per-channel / per-image tensors broadcast per level)."""
    if isinstance(other, numbers.Number):
        return other
    if isinstance(other, BlockTensor) and other.pending_pad is None:
        return other.pixels
    return None


def no_pending(x: BlockTensor, op: str) -> None:
    if x.pending_pad is not None:
        raise UnsupportedBlockOp(
            f"F.pad on a block tensor must be followed by a conv or pooling layer, not '{op}'"
        )


def operand_parts(x: BlockTensor, other, op: str) -> list:
    """Per level, the operand of an element-wise op between ``x`` and ``other``."""
    n = len(x.parts)
    if isinstance(other, BlockTensor):
        no_pending(other, op)
        if not x.grid.same_decisions(other.grid) or other.side != x.side:
            raise ValueError(
                f"'{op}' between block tensors with different grids or scales (sides {x.side} "
                f"and {other.side}); both operands must come from the same BlockSample and scale"
            )
        return list(other.parts)
    if isinstance(other, numbers.Number):
        return [other] * n
    if isinstance(other, Tensor):
        if other.dim() >= 2 and tuple(other.shape[-2:]) != (1, 1):
            raise ValueError(
                f"'{op}' between a block tensor and a dense tensor of shape {tuple(other.shape)}; "
                "split the dense tensor with block_sample(...) using the same grid first"
            )
        if other.dim() == 4 and other.shape[0] != 1:
            if other.shape[0] != x.grid.N:
                raise ValueError(
                    f"'{op}' with a per-image tensor of shape {tuple(other.shape)} but the block "
                    f"tensor holds {x.grid.N} image(s); give [{x.grid.N}, C, 1, 1] or [1, C, 1, 1]"
                )
            # Per-image values (e.g. squeeze-excitation gates): each block gets its image's.
            return [other[x.grid.cells(lv == 0)[0].to(other.device)] for lv in range(n)]
        return [other] * n
    raise UnsupportedBlockOp(f"'{op}' with an operand of type {type(other).__name__}")
