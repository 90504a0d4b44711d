"""Where the model spent high resolution: per-class share of HR pixels (paper Table 2) and the
per-image share of HR blocks with its histogram (paper Fig. 8)."""

from __future__ import annotations

import numpy as np
import torch

from .base import Batch, DatasetEvaluator, all_reduce, gather_by_index

__all__ = ["HRShareEvaluator", "HIST_BINS"]

#: number of histogram bins over [0, 100] % HR blocks (paper Fig. 8 uses 10 % bins)
HIST_BINS = 10


def pixel_grid(grid: torch.Tensor, block_size: int, h: int, w: int) -> torch.Tensor:
    """``grid [GH, GW]`` bool -> ``[h, w]`` bool: blocks upsampled to pixels, cropped to the
    image (the padding a model adds is never scored)."""
    g = grid.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return g[:h, :w]


class HRShareEvaluator(DatasetEvaluator):
    """Per class, % of its ground-truth pixels that lie in HR blocks; per image, the fraction
    of HR blocks (a plain network counts as 100 % HR). ``num_classes`` ``None``: the
    logits'.

    Result: ``hr_fractions`` (per image, dataset order), ``hr_fraction`` (their mean),
    ``hr_hist_counts`` / ``hr_hist_edges`` (``bins`` bins over 0..100 %, last bin closed),
    ``class_hr_percent`` (NaN for classes without pixels).
    """

    def __init__(self, num_classes: int | None, bins: int = HIST_BINS):
        self.num_classes = None if num_classes is None else int(num_classes)
        self.bins = int(bins)
        self.reset()

    def reset(self) -> None:
        self.class_pix = self.class_hr = None
        self.fractions: list[tuple[int, float]] = []

    def process(self, batch: Batch) -> None:
        K = self.num_classes = self.num_classes or int(batch.logits.shape[1])
        labels = batch.labels
        if self.class_pix is None:
            self.class_pix = torch.zeros(K, dtype=torch.long, device=labels.device)
            self.class_hr = torch.zeros(K, dtype=torch.long, device=labels.device)
        H, W = labels.shape[-2:]
        for j, index in enumerate(batch.indices):
            label = labels[j]
            valid = (label >= 0) & (label < K)
            self.class_pix += torch.bincount(label[valid], minlength=K)[:K]
            if batch.grid is None:
                self.class_hr += torch.bincount(label[valid], minlength=K)[:K]
                self.fractions.append((index, 1.0))
                continue
            grid = batch.grid[j]
            hr_pix = pixel_grid(grid, batch.block_size, H, W)
            self.class_hr += torch.bincount(label[valid & hr_pix], minlength=K)[:K]
            self.fractions.append((index, float(grid.float().mean())))

    def evaluate(self) -> dict:
        pix = all_reduce(self.class_pix.clone()).double().cpu()
        hr = all_reduce(self.class_hr.clone()).double().cpu()
        fractions = gather_by_index(self.fractions)
        counts, edges = np.histogram(
            100 * np.asarray(fractions), bins=self.bins, range=(0.0, 100.0)
        )
        return {
            "hr_fractions": fractions,
            "hr_fraction": float(np.mean(fractions)) if fractions else float("nan"),
            "hr_hist_counts": [int(c) for c in counts],
            "hr_hist_edges": [float(e) for e in edges],
            "class_hr_percent": torch.where(
                pix > 0, 100 * hr / pix.clamp_min(1), float("nan")
            ).tolist(),
        }
