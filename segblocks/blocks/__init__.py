"""Block tensors and block execution of CNN layers (SegBlocks paper, section 3.2).

Where each part of the method lives:

- ``grid``: the per-image HR/LR decisions (:class:`BlockGrid`) and tables derived from them;
- ``tensor``: the block tensor (parts per resolution level) and its padded buffers;
- ``sample`` / ``pad`` / ``combine``: BlockSample, BlockPad (index plans + halo fill),
  BlockCombine; ``indirection``: BlockPad without copies (per-tap source tables that the
  depthwise kernel reads halos through); ``fallback``: dense execution of layers that need the
  whole map;
- ``kernels`` / ``extension``: the ``segblocks::`` custom ops behind them (C++ on CPU, pure
  PyTorch otherwise);
- ``dispatch``: which handler runs for a torch call (:func:`register_block_op`);
  ``layers``: the handlers, one module per op family;
- ``modules``: thin ``nn.Module`` wrappers; ``cache``: every cache, with :func:`clear_caches`;
  ``stats``: MAC and time accounting; ``fuse``: batch-norm folding and conv + activation
  fusion for inference.
"""

from . import layers  # noqa: F401  (registers the layer handlers)
from .cache import clear_caches
from .combine import block_combine
from .dispatch import UnsupportedBlockOp, register_block_op
from .fallback import dense_call, dense_fallback
from .grid import BlockGrid
from .modules import BlockCombine, BlockPad, BlockSample, DenseFallback
from .pad import PAD_MODES, block_pad, pad_plan
from .sample import block_sample
from .tensor import BlockTensor, MarginProfile

__all__ = [
    "PAD_MODES",
    "BlockGrid",
    "BlockTensor",
    "MarginProfile",
    "UnsupportedBlockOp",
    "register_block_op",
    "clear_caches",
    "block_sample",
    "block_pad",
    "block_combine",
    "dense_call",
    "dense_fallback",
    "pad_plan",
    "BlockSample",
    "BlockPad",
    "BlockCombine",
    "DenseFallback",
]
