"""Evaluation: the evaluation loop (:mod:`.loop`, :func:`inference_on_dataset`) and its
evaluators (:mod:`.evaluators`: segmentation metrics, HR share, MACs, timing, memory), used by
the trainer's validation and by :func:`evaluate` (:mod:`.evaluate`: the paper's measurements
of a model over a dataset); segmentation metrics (:mod:`.metrics`), figures
(:mod:`.visualize`), inference on image files (:mod:`.infer`) and on videos / frame streams
(:mod:`.video`)."""

from .evaluate import EvalResult, evaluate
from .infer import infer
from .loop import inference_on_dataset
from .metrics import ConfusionMatrix
from .video import StreamSummary, infer_stream

__all__ = [
    "EvalResult",
    "evaluate",
    "inference_on_dataset",
    "ConfusionMatrix",
    "infer",
    "infer_stream",
    "StreamSummary",
]
