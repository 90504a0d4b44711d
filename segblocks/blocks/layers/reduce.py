"""Per-image reductions of block tensors: global average / max pooling and spatial sums.

Their result is a dense per-image tensor (``[N, C, 1, 1]`` or ``[N, C]``), which the ops
around them (squeeze-excitation gating, ASPP's image-pooling branch) then combine with block
tensors (``binary`` broadcasts per image; ``torch.cat`` samples a dense map on the grid).

What holds: a block tensor covers its images exactly, an HR pixel standing for one pixel of the
map at this scale and an LR pixel for a 2x2 patch. The global mean is therefore the weighted
mean (LR pixels count 4 times), the global sum the weighted sum, the global max the max over
both levels. All-HR: equal to the dense op (up to summation order). All-LR: equal to the dense
op on the 2x-pooled map (the mean of a 2x2-pooled map is the map's mean), i.e. the dense
network on the 2x-pooled input gives the same value when it gives the same map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..dispatch import UnsupportedBlockOp, register_block_op
from ..tensor import BlockTensor
from .common import no_pending

__all__ = ["global_sum", "global_mean", "global_max", "image_index"]


def image_index(x: BlockTensor, level: int) -> Tensor:
    """``[blocks]`` image of each block of ``x.parts[level]`` (0 = HR, 1 = LR)."""
    return x.grid.cells(level == 0)[0]


def _per_image(x: BlockTensor, reduce_block, combine: str) -> Tensor:
    """``[N, C]``: ``reduce_block(part, level) -> [blocks, C]`` combined per image."""
    out = None
    for lv, part in enumerate(x.parts):
        if part.shape[0] == 0:
            continue
        vals = reduce_block(part, lv)
        idx = image_index(x, lv).to(vals.device)
        if out is None:
            fill = 0.0 if combine == "sum" else float("-inf")
            out = vals.new_full((x.grid.N, vals.shape[1]), fill)
        if combine == "sum":
            out = out.index_add(0, idx, vals)
        else:
            index = idx[:, None].expand_as(vals)
            out = out.scatter_reduce(0, index, vals, "amax", include_self=True)
    return out


def global_sum(x: BlockTensor) -> Tensor:
    """``[N, C]``: the sum over each image's pixels at this scale (an LR pixel counts 4)."""
    no_pending(x, "sum")
    return _per_image(x, lambda a, lv: a.sum((2, 3)) * (4**lv), "sum")


def global_mean(x: BlockTensor) -> Tensor:
    """``[N, C]``: the mean over each image's pixels at this scale (an LR pixel counts 4)."""
    g = x.grid
    return global_sum(x) / float(g.GH * g.GW * x.side * x.side)


def global_max(x: BlockTensor) -> Tensor:
    """``[N, C]``: the max over each image's HR and LR pixels."""
    no_pending(x, "amax")
    return _per_image(x, lambda a, lv: a.amax((2, 3)), "amax")


def _is_global(output_size) -> bool:
    if isinstance(output_size, (list, tuple)):
        return len(output_size) in (1, 2) and all(v == 1 for v in output_size)
    return output_size == 1


def _pool_handler(name: str, reduce):
    def handler(x, output_size, *args, **kwargs):
        if args or kwargs.get("return_indices"):
            raise UnsupportedBlockOp(f"{name}(..., return_indices=True) on block tensors")
        if not _is_global(output_size):
            raise UnsupportedBlockOp(
                f"{name} to {output_size} on block tensors: only global pooling (output 1x1) "
                "is exact per image; wrap the layer in DenseFallback (e.g. pyramid pooling)"
            )
        return reduce(x)[:, :, None, None]

    return handler


register_block_op(F.adaptive_avg_pool2d)(_pool_handler("adaptive_avg_pool2d", global_mean))
register_block_op(F.adaptive_max_pool2d, F.adaptive_max_pool2d_with_indices)(
    _pool_handler("adaptive_max_pool2d", global_max)
)


def _spatial_dims(dim) -> bool:
    if dim is None:
        return False
    dims = {int(d) % 4 for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
    return dims == {2, 3}


def _reduction(name: str, reduce):
    def handler(x, dim=None, keepdim=False, *, dtype=None, out=None):
        if out is not None or not _spatial_dims(dim):
            raise UnsupportedBlockOp(
                f"{name} over dims {dim} on block tensors: only the spatial dims (2, 3) reduce "
                "per image; combine the blocks first (block_combine) or wrap the layer in "
                "DenseFallback"
            )
        y = reduce(x)
        if dtype is not None:
            y = y.to(dtype)
        return y[:, :, None, None] if keepdim else y

    return handler


register_block_op(torch.mean, Tensor.mean)(_reduction("mean", global_mean))
register_block_op(torch.sum, Tensor.sum)(_reduction("sum", global_sum))
_amax = _reduction("amax", global_max)


@register_block_op(torch.amax, Tensor.amax)
def _amax_handler(x, dim=(), keepdim=False, *, out=None):
    return _amax(x, dim, keepdim, out=out)  # torch.amax has no dtype argument
