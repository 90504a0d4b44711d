"""Max / average pooling and ``F.pad`` on block tensors.

Pooling: BlockPad with ``-inf`` (max) or 0 (average) beyond the image, pool with padding 0.
``F.pad`` (constant) is deferred and merged into the next conv / pool's BlockPad.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..dispatch import UnsupportedBlockOp, register_block_op
from ..tensor import BlockTensor
from .geometry import check_ceil, crop, op_geometry, padded_or_plain

__all__ = []


@register_block_op(F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d)
def _max_pool2d(
    x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    if return_indices:
        raise UnsupportedBlockOp("max_pool2d(return_indices=True) on block tensors")
    if ceil_mode:
        check_ceil("max_pool2d", x, kernel_size, stride, padding, dilation)
    pads, st, value = op_geometry(
        "max_pool2d", x, kernel_size, stride, padding, dilation, own_pad_value=float("-inf")
    )
    side = x.side // st
    inputs = padded_or_plain(x, pads, float("-inf") if value is None else value)
    out = [
        crop(F.max_pool2d(p, kernel_size, st, 0, dilation), side >> lv)
        for lv, p in enumerate(inputs)
    ]
    return x.derive(out, side)


@register_block_op(F.avg_pool2d)
def _avg_pool2d(
    x,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    if ceil_mode:
        check_ceil("avg_pool2d", x, kernel_size, stride, padding, 1)
    pads, st, value = op_geometry("avg_pool2d", x, kernel_size, stride, padding, 1)
    if any(pads) and not count_include_pad:
        raise UnsupportedBlockOp(
            "avg_pool2d(count_include_pad=False) with padding: border pixels would be counted "
            "differently from the dense map; use DenseFallback"
        )
    side = x.side // st
    inputs = padded_or_plain(x, pads, 0.0 if value is None else value)
    kw = dict(divisor_override=divisor_override)
    out = [
        crop(F.avg_pool2d(p, kernel_size, st, 0, False, True, **kw), side >> lv)
        for lv, p in enumerate(inputs)
    ]
    return x.derive(out, side)


@register_block_op(F.pad)
def _pad(x, pad, mode="constant", value=None):
    if mode != "constant":
        raise UnsupportedBlockOp(f"F.pad mode {mode!r} on block tensors (only 'constant')")
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = pad + (0, 0)
    if len(pad) != 4:
        raise UnsupportedBlockOp(f"F.pad {pad} on block tensors pads the last two dims only")
    if any(p < 0 for p in pad):
        raise ValueError(
            f"F.pad {pad} crops (negative widths); block tensors cannot be cropped, "
            "use DenseFallback"
        )
    pl, pr, pt, pb = pad
    value = 0.0 if value is None else float(value)
    # The padded tensor shares its blocks with x (the pad is applied lazily by the next op),
    # so neither may be written in place any more.
    x.owned = False
    if x.pending_pad is not None:
        qt, qb, ql, qr, v0 = x.pending_pad
        if v0 != value:
            raise UnsupportedBlockOp("two F.pad calls with different values on a block tensor")
        pt, pb, pl, pr = pt + qt, pb + qb, pl + ql, pr + qr
    return BlockTensor(
        x.parts,
        x.grid,
        x.side,
        pad_mode=x.pad_mode,
        trace=x.trace,
        op_id=x.op_id,
        store=x.store,
        pending_pad=(pt, pb, pl, pr, value),
    )
