"""Evaluation of a (SegBlocks or dense) segmentation model, as reported in the paper.

:func:`evaluate` runs a model image by image (batch 1) over a dataset through the evaluation
loop (:mod:`segblocks.evaluation.loop`) and its evaluators
(:mod:`segblocks.evaluation.evaluators`), and gathers in an :class:`EvalResult`:

- mIoU and per-class IoU (:class:`~segblocks.evaluation.metrics.ConfusionMatrix`);
- GMACs per image from the exact accounting of :mod:`segblocks.measuring.macs`, with the block
  mask the model chose for that image (network + policy network); a dense network is counted
  with :func:`~segblocks.measuring.macs.count_macs_dense`;
- FPS as in the paper: batch 1, the first half of the images warm up, the second half is
  timed (``torch.cuda.synchronize`` around each image on CUDA);
- peak memory: CUDA ``max_memory_allocated``; on the CPU the process' peak resident set
  (``VmHWM``, reset through ``/proc/self/clear_refs``), best effort, ``None`` if unavailable;
- per-class percentage of ground-truth pixels processed at high resolution (paper Table 2);
- the per-image percentage of HR blocks and its histogram (paper Fig. 8).

A plain network (not a :class:`~segblocks.models.segblocks_model.SegBlocksModel`) counts as
100 % high resolution.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .evaluators import (
    HIST_BINS,
    HRShareEvaluator,
    MacsEvaluator,
    MemoryEvaluator,
    SegmentationEvaluator,
    TimingEvaluator,
    peak_rss_mb,
    peak_rss_reset,
)
from .loop import inference_on_dataset

__all__ = [
    "EvalResult",
    "evaluate",
    "budget_sweep",
    "peak_rss_reset",
    "peak_rss_mb",
    "HIST_BINS",
]


@dataclass
class EvalResult:
    """Result of :func:`evaluate` (JSON-serialisable through :meth:`to_dict`).

    Attributes:
        miou: mean IoU over classes present in prediction or target (0..1).
        iou: per-class IoU (NaN for classes absent from both).
        pixel_accuracy: fraction of correctly labelled (non-ignored) pixels.
        class_names: names of the classes (``class_0`` ... when the dataset has none).
        num_images: images evaluated.
        gmacs: mean GMACs per image (network + policy).
        gmacs_policy: the policy network's share of ``gmacs``.
        gmacs_per_image: GMACs of each image.
        fps: images per second over the timed images (``None`` with ``fps=False``).
        timed_images: images in the FPS measurement.
        peak_memory_mb: peak memory in MiB (``None`` when unavailable).
        memory_kind: ``"cuda_max_allocated"``, ``"cpu_vmhwm"`` or ``None``.
        hr_fractions: per image fraction of HR blocks (0..1).
        hr_hist_counts / hr_hist_edges: histogram of ``hr_fractions`` in percent
            (``HIST_BINS`` bins over 0..100, last bin closed).
        class_hr_percent: per class, % of its ground-truth pixels lying in HR blocks (NaN
            for classes without pixels).
        device: the device used.
        dtype: the dtype the model and images ran in (``"float32"``, ``"bfloat16"``).
    """

    miou: float
    iou: list[float]
    pixel_accuracy: float
    class_names: list[str]
    num_images: int
    gmacs: float
    gmacs_policy: float
    gmacs_per_image: list[float]
    fps: float | None
    timed_images: int
    peak_memory_mb: float | None
    memory_kind: str | None
    hr_fractions: list[float]
    hr_hist_counts: list[int]
    hr_hist_edges: list[float]
    class_hr_percent: list[float]
    device: str = "cpu"
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    @property
    def mean_hr_fraction(self) -> float:
        return float(np.mean(self.hr_fractions)) if self.hr_fractions else float("nan")

    def to_dict(self) -> dict:
        """Plain dict; NaN becomes ``None`` so the JSON is strict."""
        d = asdict(self)
        d["mean_hr_fraction"] = self.mean_hr_fraction
        return _nan_to_none(d)

    def save_json(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path

    def table(self) -> str:
        """Human-readable summary: totals, then per-class IoU and % HR pixels."""

        def pct(v):
            return "   n/a" if v is None or math.isnan(v) else f"{100 * v:6.2f}"

        fps = "n/a" if self.fps is None else f"{self.fps:.2f}"
        mem = "n/a" if self.peak_memory_mb is None else f"{self.peak_memory_mb:.1f} MiB"
        lines = [
            f"images: {self.num_images}, device {self.device}"
            + ("" if self.dtype == "float32" else f", {self.dtype}"),
            f"mIoU: {100 * self.miou:.2f} %, pixel accuracy: {100 * self.pixel_accuracy:.2f} %",
            f"GMACs/image: {self.gmacs:.4f} (policy {self.gmacs_policy:.4f})",
            f"FPS (batch 1, {self.timed_images} timed images): {fps}",
            f"peak memory ({self.memory_kind or 'unavailable'}): {mem}",
            f"HR blocks: {100 * self.mean_hr_fraction:.1f} % of blocks on average",
            "",
        ]
        w = max([len("class")] + [len(n) for n in self.class_names])
        lines.append(f"{'class':<{w}}  {'IoU %':>6}  {'HR px %':>7}")
        for name, iou, hr in zip(self.class_names, self.iou, self.class_hr_percent, strict=True):
            hr_s = "    n/a" if hr is None or math.isnan(hr) else f"{hr:7.2f}"
            lines.append(f"{name:<{w}}  {pct(iou)}  {hr_s}")
        lines.append("")
        lines.append("HR blocks per image (% of blocks): images")
        e = self.hr_hist_edges
        for i, c in enumerate(self.hr_hist_counts):
            close = "]" if i == len(self.hr_hist_counts) - 1 else ")"
            lines.append(f"  [{e[i]:5.1f}, {e[i + 1]:5.1f}{close}: {c}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _nan_to_none(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_nan_to_none(x) for x in v]
    return v


# ---------------------------------------------------------------------------- evaluate
def evaluate(
    model: nn.Module,
    dataset,
    *,
    device="cpu",
    normalize=None,
    max_images: int | None = None,
    fps: bool = True,
    progress: bool = True,
    num_classes: int | None = None,
    dtype: torch.dtype | None = None,
    budget=None,
) -> EvalResult:
    """Evaluate ``model`` on ``dataset`` one image at a time (batch 1, no autograd): the
    evaluation loop (:func:`~segblocks.evaluation.loop.inference_on_dataset`) with every
    evaluator of :mod:`segblocks.evaluation.evaluators`.

    Args:
        model: a :class:`~segblocks.models.segblocks_model.SegBlocksModel` (its ``grid`` gives
            the HR blocks) or a dense network returning logits ``[N, K, H, W]`` (100 % HR).
        dataset: indexable, ``dataset[i] -> (image [3, H, W] in [0, 1], label [H, W])``.
        device: where to run.
        normalize: a transform ``(image, label) -> (image, label)`` applied before the model,
            e.g. :class:`~segblocks.data.transforms.Normalize` (``None``: image used as is).
        max_images: evaluate only the first ``max_images`` images.
        fps: measure FPS (first half of the images warm up, the second half is timed).
        progress: show a tqdm progress bar.
        num_classes: classes of the confusion matrix (default: the dataset's ``num_classes``,
            else the logits' channel count). Logits with another channel count raise
            ``ValueError`` naming both numbers.
        dtype: cast the model (in place, like ``device``) and the images to this dtype, e.g.
            ``torch.bfloat16`` to run the network in bfloat16; ``None`` keeps the model's and
            feeds float32 images. Metrics use the argmax of the logits either way.
        budget: per-image budget of a SegBlocksModel (``0.4``, ``"40%"``, ``"12blocks"``,
            ``"2.1gmacs"``, ``"35ms"``; see :mod:`segblocks.policies.budget`); ``None``: the
            policy decides.

    Returns:
        an :class:`EvalResult`.
    """
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    K = num_classes or getattr(dataset, "num_classes", None)  # None: the logits'
    evaluators = [
        SegmentationEvaluator(
            K, int(getattr(dataset, "ignore_index", 255)), getattr(dataset, "classes", None)
        ),
        HRShareEvaluator(K),
        MacsEvaluator(model),
        TimingEvaluator(warmup=n // 2 if fps else n),
        MemoryEvaluator(device),
    ]
    r = inference_on_dataset(
        model,
        dataset,
        evaluators,
        device=device,
        normalize=normalize,
        max_images=max_images,
        dtype=dtype,
        budget=budget,
        progress=progress,
    )
    run_dtype = next(
        (p.dtype for p in model.parameters() if p.is_floating_point()), dtype or torch.float32
    )
    return EvalResult(
        miou=r["miou"],
        iou=r["iou"],
        pixel_accuracy=r["pixel_accuracy"],
        class_names=r["class_names"],
        num_images=n,
        gmacs=r["gmacs"],
        gmacs_policy=r["gmacs_policy"],
        gmacs_per_image=r["gmacs_per_image"],
        fps=r["fps"],
        timed_images=r["timed_images"],
        peak_memory_mb=r["peak_memory_mb"],
        memory_kind=r["memory_kind"],
        hr_fractions=r["hr_fractions"],
        hr_hist_counts=r["hr_hist_counts"],
        hr_hist_edges=r["hr_hist_edges"],
        class_hr_percent=r["class_hr_percent"],
        device=str(torch.device(device)),
        dtype=str(run_dtype).removeprefix("torch."),
    )


def budget_sweep(budgets, run_eval, on_row=None) -> list[dict]:
    """One model at each budget (mIoU against cost, paper Fig. 10 for one network).

    Args:
        budgets: budget strings (``"0.2"``, ``"1.5gmacs"``, ...).
        run_eval: ``run_eval(budget) -> EvalResult``, e.g. ``lambda b: evaluate(model, data,
            budget=b)``.
        on_row: called with each row as it is measured (progress).

    Returns:
        rows ``{"name", "budget", "miou", "gmacs", "hr_percent", "latency_ms"}`` (latency
        from the FPS measurement, ``None`` without one).
    """
    rows = []
    for b in budgets:
        r = run_eval(b)
        row = {
            "name": str(b),
            "budget": str(b),
            "miou": r.miou,
            "gmacs": r.gmacs,
            "hr_percent": 100 * r.mean_hr_fraction,
            "latency_ms": 1000.0 / r.fps if r.fps else None,
        }
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
