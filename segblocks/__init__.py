"""SegBlocks: block-based dynamic resolution for segmentation CNNs."""

import os

# Block execution runs convs (and bfloat16 GEMMs) whose batch - the number of HR or LR blocks -
# changes with every mask. oneDNN JIT-compiles a primitive per shape and caches 1024 by
# default, which a video's range of HR counts overflows: then every frame recompiles (CamVid
# SegBlocks tau 0.4 over 80 HR counts, bfloat16: 37 -> 66 ms). oneDNN reads the capacity once,
# at its first use, so this only takes effect when segblocks is imported before any oneDNN op
# runs; set ONEDNN_PRIMITIVE_CACHE_CAPACITY yourself to choose another value.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8192")

from .blocks import BlockGrid, BlockTensor, block_combine, block_pad, block_sample
from .measuring.macs import MacCostModel
from .policies.budget import register_cost_model
from .version import __version__ as __version__

# Budgets in GMACs are converted with the exact MAC count of the model; the counter lives in
# measuring/ (above models/), so it is handed to the models here rather than imported by them.
register_cost_model("gmacs", MacCostModel)

__all__ = [
    "BlockGrid",
    "BlockTensor",
    "block_sample",
    "block_pad",
    "block_combine",
    "load_exported",
]


def __getattr__(name: str):
    # segblocks.load_exported without importing the model code at ``import segblocks``
    if name == "load_exported":
        from .deploy import load_exported

        return load_exported
    raise AttributeError(f"module 'segblocks' has no attribute {name!r}")
