"""GMACs per image from the exact accounting of :mod:`segblocks.measuring.macs`, with the
number of HR blocks the model chose for that image (network + policy network)."""

from __future__ import annotations

import numpy as np
import torch

from ...measuring.macs import count_macs_dense
from .base import Batch, DatasetEvaluator, gather_by_index

__all__ = ["MacsEvaluator"]


class MacsEvaluator(DatasetEvaluator):
    """MACs of every image as the model ran it, counted after the loop (outside any timing).
    The MACs of a SegBlocks model depend only on the padded size and the number of HR blocks:
    they come from the model's own cost model (:meth:`SegBlocksModel.mac_cost`, the one
    budgets in GMACs use, counted once per padded size); a plain network is counted densely
    on its input.

    Args:
        model: the evaluated model (a ``SegBlocksModel`` when batches carry a grid).

    Result: ``gmacs`` (mean per image), ``gmacs_policy`` (the policy's share),
    ``gmacs_per_image`` (dataset order).
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.keys: list[tuple[int, tuple]] = []

    def process(self, batch: Batch) -> None:
        for j, index in enumerate(batch.indices):
            if batch.grid is None:
                key = ("dense", int(batch.images.shape[-2]), int(batch.images.shape[-1]))
            else:
                grid, bs = batch.grid[j], batch.block_size
                key = ("blocks", grid.shape[0] * bs, grid.shape[1] * bs, int(grid.sum()))
            self.keys.append((index, key))

    def _count(self, key: tuple) -> tuple[float, float]:
        """(total, policy) GMACs of one image of ``key``."""
        kind, hp, wp = key[:3]
        if kind == "dense":
            p = next(iter(self.model.parameters()))
            x = torch.zeros(1, 3, hp, wp, device=p.device, dtype=p.dtype)
            return count_macs_dense(self.model, x).total / 1e9, 0.0
        return self.model.mac_cost(hp, wp)(key[3]), self.model.policy.macs((hp, wp)) / 1e9

    def evaluate(self) -> dict:
        keys = gather_by_index(self.keys)
        counts = {}
        with torch.no_grad():
            for key in dict.fromkeys(keys):
                counts[key] = self._count(key)
        per_image = [counts[k][0] for k in keys]
        policy = [counts[k][1] for k in keys]
        return {
            "gmacs": float(np.mean(per_image)) if per_image else float("nan"),
            "gmacs_policy": float(np.mean(policy)) if policy else float("nan"),
            "gmacs_per_image": per_image,
        }
