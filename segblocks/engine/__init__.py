"""Execution-side utilities: exact MAC accounting (``segblocks.engine.macs``)."""

from .macs import MacReport, MacRow, count_macs_blocks, count_macs_dense, main_macs

__all__ = ["MacReport", "MacRow", "count_macs_dense", "count_macs_blocks", "main_macs"]
