"""Evaluation: the paper's measurements over a dataset (:mod:`.evaluate`), segmentation
metrics (:mod:`.metrics`), figures (:mod:`.visualize`) and inference on image files
(:mod:`.infer`)."""

from .evaluate import EvalResult, evaluate
from .infer import infer
from .metrics import ConfusionMatrix

__all__ = ["EvalResult", "evaluate", "ConfusionMatrix", "infer"]
