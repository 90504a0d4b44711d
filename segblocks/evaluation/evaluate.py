"""Evaluation of a (SegBlocks or dense) segmentation model, as reported in the paper.

:func:`evaluate` runs a model image by image (batch 1) over a dataset and measures:

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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..measuring.macs import count_macs_dense, count_macs_segblocks
from ..models.segblocks_model import SegBlocksModel
from .metrics import ConfusionMatrix

__all__ = ["EvalResult", "evaluate", "peak_rss_reset", "peak_rss_mb", "HIST_BINS"]

#: number of histogram bins over [0, 100] % HR blocks (paper Fig. 8 uses 10 % bins)
HIST_BINS = 10


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


# ---------------------------------------------------------------------------- memory
def peak_rss_reset() -> bool:
    """Reset the process' peak RSS (Linux ``/proc/self/clear_refs``); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size (``VmHWM``) of the process in MiB, or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pixel_grid(grid: Tensor, block_size: int, h: int, w: int) -> Tensor:
    """``[GH, GW]`` bool -> ``[h, w]`` bool (blocks upsampled to pixels, cropped)."""
    g = grid.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    return g[:h, :w]


def _segblocks_macs(model, hw: tuple[int, int], mask: Tensor) -> tuple[int, int]:
    """(total, policy) MACs of one padded ``hw`` image run by ``model`` with ``mask [GH, GW]``."""
    p = next(iter(model.net.parameters()))
    x = torch.zeros(1, 3, *hw, device=p.device, dtype=p.dtype)
    rep = count_macs_segblocks(model, x, mask=mask[None].to(p.device))
    return rep.total, rep.policy


def _dense_macs(model, hw: tuple[int, int]) -> int:
    p = next(iter(model.parameters()))
    x = torch.zeros(1, 3, *hw, device=p.device, dtype=p.dtype)
    return count_macs_dense(model, x).total


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
    """Evaluate ``model`` on ``dataset`` one image at a time (batch 1, ``inference_mode``).

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
    from tqdm import tqdm

    device = torch.device(device)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if budget is not None and not isinstance(model, SegBlocksModel):
        raise ValueError("a budget needs a SegBlocksModel (a model with a block policy)")
    if n < 1:
        raise ValueError("evaluate: the dataset has no images to evaluate")
    seg = isinstance(model, SegBlocksModel)
    modes = [(m, m.training) for m in model.modules()]
    model.to(device=device, dtype=dtype).eval()
    run_dtype = next(
        (p.dtype for p in model.parameters() if p.is_floating_point()), dtype or torch.float32
    )
    warmup = n // 2 if fps else n
    cm = None
    class_pix = class_hr = None
    hr_fractions: list[float] = []
    mac_keys: list[tuple] = []
    mac_masks: dict[tuple, Tensor] = {}
    elapsed = 0.0
    timed = 0

    mem_kind = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        mem_kind = "cuda_max_allocated"
    elif peak_rss_reset():
        mem_kind = "cpu_vmhwm"

    try:
        with torch.inference_mode():
            for i in tqdm(range(n), desc="evaluate", disable=not progress):
                image, label = dataset[i]
                if normalize is not None:
                    image, label = normalize(image, label)
                x = image.unsqueeze(0).to(device=device, dtype=dtype)
                label = torch.as_tensor(label).to(device).long()
                H, W = label.shape[-2:]
                timing = fps and i >= warmup
                if timing:
                    _sync(device)
                    t0 = time.perf_counter()
                out = model(x) if budget is None else model(x, budget=budget)
                if timing:
                    _sync(device)
                    elapsed += time.perf_counter() - t0
                    timed += 1
                if seg:
                    logits, grid = out.logits, out.grid[0]
                    bs = model.block_size
                else:
                    logits = out if isinstance(out, Tensor) else out.logits
                    grid, bs = None, None
                if logits.shape[-2:] != (H, W):
                    logits = F.interpolate(
                        logits, size=(H, W), mode="bilinear", align_corners=False
                    )
                K = num_classes or getattr(dataset, "num_classes", None) or logits.shape[1]
                if logits.shape[1] != K:
                    raise ValueError(
                        f"the model predicts {logits.shape[1]} classes but the dataset "
                        f"{type(dataset).__name__} has {K}; evaluate a model trained on this "
                        "dataset (or with num_classes matching it)"
                    )
                if cm is None:
                    ignore = int(getattr(dataset, "ignore_index", 255))
                    cm = ConfusionMatrix(K, device=device, ignore_index=ignore)
                    class_pix = torch.zeros(K, dtype=torch.long, device=device)
                    class_hr = torch.zeros(K, dtype=torch.long, device=device)
                pred = logits.argmax(1)
                cm.update(pred, label[None])

                valid = (label >= 0) & (label < K)
                lab = label[valid]
                class_pix += torch.bincount(lab, minlength=K)[:K]
                if grid is None:
                    class_hr += torch.bincount(lab, minlength=K)[:K]
                    hr_fractions.append(1.0)
                    key = ("dense", int(x.shape[-2]), int(x.shape[-1]))
                else:
                    hr_pix = _pixel_grid(grid, bs, H, W)
                    class_hr += torch.bincount(label[valid & hr_pix], minlength=K)[:K]
                    hr_fractions.append(float(grid.float().mean()))
                    # MACs depend only on the padded size and the number of HR blocks.
                    hp, wp = grid.shape[0] * bs, grid.shape[1] * bs
                    key = ("blocks", hp, wp, int(grid.sum()))
                    if key not in mac_masks:
                        mac_masks[key] = grid.detach().clone()
                mac_keys.append(key)

            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
            elif mem_kind == "cpu_vmhwm":
                peak = peak_rss_mb()
                mem_kind = mem_kind if peak is not None else None
            else:
                peak = None

        # MACs per distinct (size, number of HR blocks), outside the timed loop.
        mac_cache: dict[tuple, tuple[int, int]] = {}
        for key in dict.fromkeys(mac_keys):
            if key[0] == "dense":
                mac_cache[key] = (_dense_macs(model, key[1:]), 0)
            else:
                mac_cache[key] = _segblocks_macs(model, key[1:3], mac_masks[key])
    finally:
        for m, t in modes:
            m.training = t

    res = cm.compute()
    K = cm.num_classes
    names = list(getattr(dataset, "classes", ()) or ())
    if len(names) != K:
        names = [f"class_{k}" for k in range(K)]
    pix = class_pix.double().cpu()
    hr = class_hr.double().cpu()
    class_hr_pct = torch.where(pix > 0, 100 * hr / pix.clamp_min(1), float("nan")).tolist()
    per_image = [mac_cache[k][0] / 1e9 for k in mac_keys]
    policy = [mac_cache[k][1] / 1e9 for k in mac_keys]
    counts, edges = np.histogram(100 * np.asarray(hr_fractions), bins=HIST_BINS, range=(0.0, 100.0))
    return EvalResult(
        miou=float(res["miou"]),
        iou=[float(v) for v in res["iou"]],
        pixel_accuracy=float(res["pixel_accuracy"]),
        class_names=names,
        num_images=n,
        gmacs=float(np.mean(per_image)),
        gmacs_policy=float(np.mean(policy)),
        gmacs_per_image=per_image,
        fps=(timed / elapsed if timed and elapsed > 0 else None),
        timed_images=timed,
        peak_memory_mb=peak,
        memory_kind=mem_kind,
        hr_fractions=hr_fractions,
        hr_hist_counts=[int(c) for c in counts],
        hr_hist_edges=[float(e) for e in edges],
        class_hr_percent=class_hr_pct,
        device=str(device),
        dtype=str(run_dtype).removeprefix("torch."),
    )
