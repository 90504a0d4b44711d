"""Measuring: exact MAC accounting, dense and in block execution (:mod:`.macs`), and the
latency of a SegBlocks model against its dense network (:mod:`.bench`)."""

from .bench import bench_model
from .macs import (
    MacReport,
    MacRow,
    compare_macs,
    count_macs_blocks,
    count_macs_dense,
    count_macs_segblocks,
    model_from_name,
)

__all__ = [
    "MacReport",
    "MacRow",
    "count_macs_dense",
    "count_macs_blocks",
    "count_macs_segblocks",
    "compare_macs",
    "model_from_name",
    "bench_model",
]
