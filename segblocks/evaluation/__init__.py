"""Evaluation: the paper's measurements over a dataset (:mod:`.evaluate`), segmentation
metrics (:mod:`.metrics`), figures (:mod:`.visualize`), inference on image files
(:mod:`.infer`) and on videos / frame streams (:mod:`.video`)."""

from .evaluate import EvalResult, evaluate
from .infer import infer
from .metrics import ConfusionMatrix
from .video import StreamSummary, infer_stream

__all__ = ["EvalResult", "evaluate", "ConfusionMatrix", "infer", "infer_stream", "StreamSummary"]
