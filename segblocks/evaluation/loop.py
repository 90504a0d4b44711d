"""The evaluation loop: :func:`inference_on_dataset` runs a model over a dataset and feeds
every batch to evaluators (:mod:`segblocks.evaluation.evaluators`). The trainer's validation
and ``segblocks eval`` (:func:`segblocks.evaluation.evaluate`) both run it.

Under ``torch.distributed`` each rank runs every ``world``-th image and the evaluators combine
the ranks, so every rank returns the numbers of the whole dataset.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from .evaluators.base import Batch, DatasetEvaluator, rank_world

__all__ = ["inference_on_dataset", "autocast"]


def autocast(device: torch.device, enabled: bool):
    """Mixed precision as the trainer uses it: float16 on CUDA, bfloat16 elsewhere (CPU); a
    no-op when not ``enabled``."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


class _Transformed(Dataset):
    """``dataset[i]`` passed through ``transform(image, label)``; labels become tensors."""

    def __init__(self, dataset, transform: Callable | None):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, torch.as_tensor(label), i


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inference_on_dataset(
    model: nn.Module,
    dataset,
    evaluators: Sequence[DatasetEvaluator],
    *,
    device="cpu",
    batch_size: int = 1,
    num_workers: int = 0,
    normalize: Callable | None = None,
    max_images: int | None = None,
    dtype: torch.dtype | None = None,
    amp: bool = False,
    budget=None,
    progress: bool = False,
    desc: str = "evaluate",
) -> dict:
    """Run ``model`` over ``dataset`` in eval mode without autograd and return the merged
    results of ``evaluators``.

    Args:
        model: a :class:`~segblocks.models.segblocks_model.SegBlocksModel` (its output's
            ``grid`` says which blocks ran in HR) or a plain network returning logits
            ``[N, K, H, W]`` (everything in HR).
        dataset: ``dataset[i] -> (image [3, H, W], label [H, W])``.
        evaluators: :class:`~segblocks.evaluation.evaluators.DatasetEvaluator` s; their
            result keys must not clash.
        device: where to run; the model is moved there (and cast to ``dtype`` when given).
        batch_size, num_workers: of the ``DataLoader`` (images of a batch must match in size).
        normalize: ``(image, label) -> (image, label)`` applied to each sample first (e.g.
            :class:`~segblocks.data.transforms.Normalize`); ``None``: used as they are.
        max_images: only the first ``max_images`` images.
        dtype: run the model and its input in this dtype (``torch.bfloat16``); ``None`` keeps
            the model's and feeds the images as they are.
        amp: run under :func:`autocast` (mixed precision, as the trainer's ``amp``).
        budget: per-image budget of a SegBlocksModel (see :mod:`segblocks.policies.budget`).
        progress: a tqdm bar (rank 0 only).

    The model's training flags are restored afterwards, and the global RNGs too (stochastic
    policies draw from them), so that validating in the middle of a run leaves it exactly as
    it was.
    """
    from tqdm import tqdm

    from ..models.segblocks_model import SegBlocksModel

    device = torch.device(device)
    seg = isinstance(model, SegBlocksModel)
    if budget is not None and not seg:
        raise ValueError("a budget needs a SegBlocksModel (a model with a block policy)")
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n < 1:
        raise ValueError("evaluate: the dataset has no images to evaluate")
    rank, world = rank_world()
    shard = Subset(_Transformed(dataset, normalize), list(range(rank, n, world)))
    loader = DataLoader(shard, batch_size=batch_size, num_workers=num_workers)
    for ev in evaluators:
        ev.reset()
    modes = [(m, m.training) for m in model.modules()]
    model.to(device=device, dtype=dtype).eval()
    try:
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        ):
            for images, labels, indices in tqdm(
                loader, desc=desc, disable=not progress or rank != 0
            ):
                x = images.to(device=device, dtype=dtype)
                labels = labels.to(device).long()
                _sync(device)
                t0 = time.perf_counter()
                with autocast(device, amp):
                    out = model(x) if budget is None else model(x, budget=budget)
                _sync(device)
                seconds = time.perf_counter() - t0
                logits: Tensor = out.logits if seg or not isinstance(out, Tensor) else out
                logits = logits.float()
                if logits.shape[-2:] != labels.shape[-2:]:
                    logits = F.interpolate(
                        logits, size=labels.shape[-2:], mode="bilinear", align_corners=False
                    )
                batch = Batch(
                    indices=[int(i) for i in indices],
                    images=x,
                    labels=labels,
                    logits=logits,
                    grid=out.grid if seg else None,
                    block_size=model.block_size if seg else None,
                    seconds=seconds,
                )
                for ev in evaluators:
                    ev.process(batch)
        results: dict = {}
        for ev in evaluators:
            res = ev.evaluate()
            clash = set(res) & set(results)
            if clash:
                raise ValueError(
                    f"evaluator {type(ev).__name__} reports {sorted(clash)}, which another "
                    "evaluator of this run already reports; give each measurement once"
                )
            results.update(res)
    finally:
        for m, t in modes:
            m.training = t
    return results
