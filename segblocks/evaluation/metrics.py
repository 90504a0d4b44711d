"""Segmentation metrics: a streaming confusion matrix with IoU / mIoU / pixel accuracy.

torchmetrics-style (``update`` / ``compute`` / ``reset``) but dependency-free and with a
``sync()`` that sums the matrix over ``torch.distributed`` ranks, so multi-process evaluation
reports the same numbers as a single process. (torchmetrics is not a dependency of this
package; its ``MulticlassJaccardIndex`` gives the same IoUs.)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``.

    Args:
        num_classes: number of classes ``K``.
        device: where the ``[K, K]`` int64 matrix lives.
        ignore_index: the label of unlabelled pixels (skipped). Any other label outside
            ``[0, K)`` raises ``ValueError``: it means the model and the dataset disagree on
            the classes, and dropping those pixels would report a wrong mIoU.
    """

    def __init__(self, num_classes: int, device=None, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: ``[N, H, W]`` class ids or ``[N, K, H, W]`` logits; ``target [N, H, W]``."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape"
            )
        K = self.num_classes
        t = target.flatten().to(self.matrix.device)
        p = pred.flatten().to(self.matrix.device)
        keep = (t >= 0) & (t < K)
        bad = ~keep & (t != self.ignore_index)
        if bad.any():
            top = int(t[bad].max())
            raise ValueError(
                f"label {top} is outside the {K} classes of this confusion matrix (labels "
                f"0..{K - 1}, ignore {self.ignore_index}); the model predicts {K} classes but "
                f"the dataset has at least {top + 1}: evaluate with the dataset's number of "
                "classes (a model trained on it)"
            )
        idx = t[keep] * K + p[keep].clamp(0, K - 1)
        self.matrix += torch.bincount(idx, minlength=K * K).view(K, K)

    def sync(self) -> None:
        """Sum the matrix over all ``torch.distributed`` processes (no-op when not running)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def iou(self) -> Tensor:
        """``[K]`` per-class IoU; NaN for classes absent from both prediction and target."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))

    def compute(self) -> dict:
        """``{"miou", "iou" (list), "pixel_accuracy"}``; mIoU averages classes that occur."""
        iou = self.iou()
        present = ~torch.isnan(iou)
        m = self.matrix
        total = m.sum().item()
        return {
            "miou": iou[present].mean().item() if present.any() else float("nan"),
            "iou": iou.tolist(),
            "pixel_accuracy": m.diag().sum().item() / total if total else float("nan"),
        }
