"""Evaluators of :func:`~segblocks.evaluation.loop.inference_on_dataset`, one measurement
each: segmentation metrics, where HR was spent, MACs, throughput, peak memory."""

from .base import Batch, DatasetEvaluator
from .hr_share import HIST_BINS, HRShareEvaluator
from .macs import MacsEvaluator
from .memory import MemoryEvaluator, peak_rss_mb, peak_rss_reset
from .segmentation import SegmentationEvaluator
from .timing import TimingEvaluator

__all__ = [
    "Batch",
    "DatasetEvaluator",
    "SegmentationEvaluator",
    "HRShareEvaluator",
    "MacsEvaluator",
    "TimingEvaluator",
    "MemoryEvaluator",
    "HIST_BINS",
    "peak_rss_mb",
    "peak_rss_reset",
]
