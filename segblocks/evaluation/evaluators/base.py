"""What an evaluator sees and does (detectron2's ``DatasetEvaluator``, for block models).

:func:`~segblocks.evaluation.loop.inference_on_dataset` runs the model over a dataset and hands
each batch to every evaluator as a :class:`Batch`; an evaluator accumulates what it measures in
:meth:`~DatasetEvaluator.process` and returns its numbers from
:meth:`~DatasetEvaluator.evaluate`, summed or gathered over ``torch.distributed`` ranks so that
every rank gets the result of the whole dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

__all__ = ["Batch", "DatasetEvaluator", "all_reduce", "gather_by_index", "rank_world"]


@dataclass
class Batch:
    """One batch as the evaluators see it.

    Attributes:
        indices: dataset index of each image (``len == N``).
        images: the model's input ``[N, 3, H, W]``.
        labels: ``[N, H, W]`` int64 class ids (``ignore_index`` for unlabelled pixels).
        logits: ``[N, K, H, W]`` float32, resized to the labels' size.
        grid: ``[N, GH, GW]`` bool, ``True`` = high-resolution block, or ``None`` for a plain
            network (everything at full resolution).
        block_size: block side in input pixels (``None`` without ``grid``).
        seconds: wall-clock of the model call (device synchronised).
    """

    indices: list[int]
    images: Tensor
    labels: Tensor
    logits: Tensor
    grid: Tensor | None
    block_size: int | None
    seconds: float


class DatasetEvaluator:
    """Base class: ``reset()`` before the first batch, ``process(batch)`` per batch,
    ``evaluate() -> dict`` at the end (on every rank; keys must not clash between the
    evaluators of one run)."""

    def reset(self) -> None:
        pass

    def process(self, batch: Batch) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process under ``torch.distributed`` (``(0, 1)``
    without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _world() -> int:
    return rank_world()[1]


def all_reduce(t: Tensor) -> Tensor:
    """``t`` summed over the ``torch.distributed`` ranks (itself without a process group)."""
    if _world() > 1:
        dist.all_reduce(t)
    return t


def gather_by_index(items: list[tuple[int, object]]) -> list:
    """The values of ``(dataset index, value)`` pairs of every rank, in dataset order."""
    if _world() > 1:
        parts: list = [None] * _world()
        dist.all_gather_object(parts, items)
        items = [x for part in parts for x in part]
    return [v for _, v in sorted(items, key=lambda iv: iv[0])]
