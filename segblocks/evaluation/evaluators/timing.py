"""Throughput as in the paper: batch 1, the first images warm up, the rest are timed."""

from __future__ import annotations

from .base import Batch, DatasetEvaluator

__all__ = ["TimingEvaluator"]


class TimingEvaluator(DatasetEvaluator):
    """Images per second over the batches whose first image has dataset index ``>= warmup``
    (the loop synchronises the device around each model call). On several ranks each rank
    reports its own throughput.

    Result: ``fps`` (``None`` when nothing was timed) and ``timed_images``.
    """

    def __init__(self, warmup: int):
        self.warmup = int(warmup)
        self.reset()

    def reset(self) -> None:
        self.elapsed, self.timed = 0.0, 0

    def process(self, batch: Batch) -> None:
        if batch.indices[0] >= self.warmup:
            self.elapsed += batch.seconds
            self.timed += len(batch.indices)

    def evaluate(self) -> dict:
        fps = self.timed / self.elapsed if self.timed and self.elapsed > 0 else None
        return {"fps": fps, "timed_images": self.timed}
