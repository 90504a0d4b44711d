"""mIoU, per-class IoU and pixel accuracy (paper Tables 4-7)."""

from __future__ import annotations

from ..metrics import ConfusionMatrix
from .base import Batch, DatasetEvaluator

__all__ = ["SegmentationEvaluator"]


class SegmentationEvaluator(DatasetEvaluator):
    """Confusion matrix of the argmax of the logits against the labels.

    Args:
        num_classes: ``K``; the logits must have ``K`` channels (``ValueError`` naming both
            numbers otherwise: a model trained on another dataset). ``None``: the logits'.
        ignore_index: label of unlabelled pixels.
        class_names: names for the result (``class_0`` ... when missing or of another length).

    Result: ``miou``, ``iou`` (list, NaN for classes absent from prediction and target),
    ``pixel_accuracy``, ``class_names``.
    """

    def __init__(self, num_classes: int | None, ignore_index: int = 255, class_names=None):
        self.num_classes = None if num_classes is None else int(num_classes)
        self.ignore_index = int(ignore_index)
        self.names = list(class_names or ())
        self.cm = None

    def reset(self) -> None:
        self.cm = None

    def process(self, batch: Batch) -> None:
        K = self.num_classes = self.num_classes or int(batch.logits.shape[1])
        if batch.logits.shape[1] != K:
            raise ValueError(
                f"the model predicts {batch.logits.shape[1]} classes but the dataset has {K}; "
                "evaluate a model trained on this dataset (or with num_classes matching it)"
            )
        if self.cm is None:
            self.cm = ConfusionMatrix(K, device=batch.labels.device, ignore_index=self.ignore_index)
        self.cm.update(batch.logits.argmax(1), batch.labels)

    def evaluate(self) -> dict:
        self.cm.sync()
        res = self.cm.compute()
        return {
            "miou": float(res["miou"]),
            "iou": [float(v) for v in res["iou"]],
            "pixel_accuracy": float(res["pixel_accuracy"]),
            "class_names": [str(n) for n in self.names]
            if len(self.names) == self.num_classes
            else [f"class_{k}" for k in range(self.num_classes)],
        }
