"""Measuring: exact MAC accounting, dense and in block execution (:mod:`.macs`), and the
latency of a SegBlocks model against its dense network (:mod:`.bench`).

:mod:`.macs` depends only on the block engine and the policies (``import segblocks`` loads it
to register :class:`MacCostModel` as the cost model of GMACs budgets); :mod:`.bench` runs
models and is imported on first use.
"""

from .macs import (
    MacCostModel,
    MacReport,
    MacRow,
    compare_macs,
    count_macs_blocks,
    count_macs_dense,
    count_macs_segblocks,
    model_from_name,
)

__all__ = [
    "MacCostModel",
    "MacReport",
    "MacRow",
    "count_macs_dense",
    "count_macs_blocks",
    "count_macs_segblocks",
    "compare_macs",
    "model_from_name",
    "bench_model",
]


def __getattr__(name: str):
    if name == "bench_model":
        from .bench import bench_model

        return bench_model
    raise AttributeError(f"module 'segblocks.measuring' has no attribute {name!r}")
