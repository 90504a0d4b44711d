"""Block execution of CNN layers: one module per op family, each registering its handlers.

Rules, each chosen so that an all-HR grid reproduces the dense network and an all-LR grid the
dense network on the 2x average-pooled input (see ``segblocks.blocks.dispatch`` for the handler
contract):

- ``conv``: conv2d (any kernel, stride, dilation, groups) after BlockPad, padding 0.
- ``norm``: batch norm (eval affine; training with joint HR+LR statistics).
- ``pointwise``: activations and dropout, per level.
- ``binary``: arithmetic with block tensors of the same grid and scale, scalars and
  per-channel and per-image tensors; residual ``+=``; channel concatenation (dense maps of the
  same size are split on the grid).
- ``pool``: max / average pooling after BlockPad; ``F.pad`` merged into the next op.
- ``reduce``: global average / max pooling and spatial sums per image (dense ``[N, C, 1, 1]``
  results, which ``binary`` broadcasts back per image: squeeze-excitation).
- ``upsample``: 2x nearest and bilinear.

Anything else raises ``UnsupportedBlockOp`` naming the op; wrap such layers with
``segblocks.blocks.DenseFallback`` (combine -> layer -> re-sample).
"""

from . import binary, conv, norm, pointwise, pool, reduce, upsample
from .conv import IM2COL_MAX_SIDE, IM2COL_MIN_CHANNELS

__all__ = [
    "binary",
    "conv",
    "norm",
    "pointwise",
    "pool",
    "reduce",
    "upsample",
    "IM2COL_MAX_SIDE",
    "IM2COL_MIN_CHANNELS",
]
