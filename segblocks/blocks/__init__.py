"""Block tensors and block execution of CNN layers (SegBlocks paper, section 3.2)."""

from . import layers  # noqa: F401  (registers the layer handlers)
from .grid import PAD_MODES, BlockGrid
from .modules import BlockCombine, BlockPad, BlockSample, DenseFallback
from .tensor import (
    BlockTensor,
    MarginProfile,
    UnsupportedBlockOp,
    block_combine,
    block_pad,
    block_sample,
    dense_fallback,
)

__all__ = [
    "PAD_MODES",
    "BlockGrid",
    "BlockTensor",
    "MarginProfile",
    "UnsupportedBlockOp",
    "block_sample",
    "block_pad",
    "block_combine",
    "dense_fallback",
    "BlockSample",
    "BlockPad",
    "BlockCombine",
    "DenseFallback",
]
