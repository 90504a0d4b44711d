"""Dense fallback: run a layer that needs the whole map on the combined map, then re-split.

:func:`dense_call` is how a network calls such a layer (it passes dense inputs straight
through); :func:`dense_fallback` is the combine -> layer -> re-split itself, and
:class:`~segblocks.blocks.DenseFallback` the same as an ``nn.Module`` wrapper.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .combine import block_combine
from .sample import check_dense, split_dense
from .tensor import BlockTensor

__all__ = ["dense_call", "dense_fallback"]


def dense_fallback(fn: Callable[..., Tensor], x: BlockTensor, *args, **kwargs) -> BlockTensor:
    """Run ``fn`` on the dense map of ``x`` and split the result with the same decisions.

    For layers that need the whole map (global pooling, SPP): combine (nearest) -> ``fn`` ->
    re-sample (LR blocks average-pooled). The output's spatial size must be a whole multiple
    of the grid, e.g. ``fn`` keeps ``H x W``.
    """
    dense = block_combine(x)
    y = fn(dense, *args, **kwargs)
    check_dense(y, "dense_fallback output")
    g = x.grid
    Ho, Wo = y.shape[-2:]
    if Ho % g.GH or Wo % g.GW or Ho // g.GH != Wo // g.GW:
        raise ValueError(
            f"dense_fallback output is {Ho}x{Wo}, which does not split into the {g.GH}x{g.GW} "
            "block grid; the wrapped layer must keep the spatial size (or scale it evenly)"
        )
    side = Ho // g.GH
    g.check_side(side, "dense_fallback output")
    return split_dense(y, g, side, pad_mode=x.pad_mode, trace=x.trace)


def dense_call(module: Callable[..., Tensor], x, *args, **kwargs):
    """``module(x, *args, **kwargs)``, run on the dense map when ``x`` is a block tensor.

    The explicit call path of layers that need the whole map (SwiftNet's SPP, DeepLabV3's
    ASPP): a network's forward calls such a layer as ``dense_call(self.spp, x)`` instead of
    ``self.spp(x)``. With a :class:`BlockTensor` ``x`` it is :func:`dense_fallback` (combine
    -> ``module`` -> split back on ``x``'s grid with its pad mode); with anything else it is
    the plain call, so the same forward runs the dense network unchanged. Nothing is stored
    or replaced: the module (weights, hooks, state-dict keys) is untouched, its hooks see the
    dense map, and any number of threads may run the network at once.
    """
    if isinstance(x, BlockTensor):
        return dense_fallback(module, x, *args, **kwargs)
    return module(x, *args, **kwargs)
