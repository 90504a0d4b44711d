"""SegBlocks: block-based dynamic resolution for segmentation CNNs."""

from .blocks import BlockGrid, BlockTensor, block_combine, block_pad, block_sample

__version__ = "0.1.0"
__all__ = ["BlockGrid", "BlockTensor", "block_sample", "block_pad", "block_combine"]
