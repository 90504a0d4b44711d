"""Latency and MACs of a SegBlocks model against its dense network (``segblocks bench``).

A quick, self-contained measurement for one model and input size: the dense SwiftNet and the
SegBlocks model at a few HR fractions (random masks with exactly round(f x blocks) HR blocks,
a new mask every run), interleaved run by run so that machine noise hits both alike, medians
after warm-up. The fuller studies (block modules' time shares, static baselines, peak memory)
are ``benchmarks/block_engine.py`` and ``benchmarks/segblocks_model.py``.
"""

from __future__ import annotations

import statistics
import time

import torch

from segblocks.models.segblocks_model import SegBlocksModel

from ..policies.masks import random_mask
from .macs import count_macs_dense, count_macs_segblocks

__all__ = ["bench_model"]


def _random_fraction_mask(gen: torch.Generator, gh: int, gw: int, frac: float) -> torch.Tensor:
    """``[1, gh, gw]`` mask with ``round(frac * gh * gw)`` HR blocks at random positions."""
    return random_mask(1, (gh, gw), int(frac * gh * gw + 0.5), generator=gen)


def bench_model(
    name: str = "swiftnet_rn18",
    size: tuple[int, int] = (1024, 2048),
    block_size: int = 128,
    fractions=(0.2, 0.4, 0.6, 1.0),
    runs: int = 5,
    warmup: int = 2,
    num_classes: int = 19,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    budgets=(),
    calibration=None,
    optimize: bool = True,
) -> list[dict]:
    """Rows ``{hr, gmacs, theory, ms, speedup, ratio}`` (first row: dense, ``hr`` None).

    ``budgets`` (e.g. ``["0.3", "40gmacs", "500ms"]``) add rows of the budgeted model: the
    heuristic policy ranks the blocks of the (fixed) image and the top ones that fit the budget
    run in HR (row key ``budget``; ``hr`` is the fraction that ran); ``calibration`` (a
    :class:`~segblocks.measuring.calibrate.LatencyCalibration`) is needed for ms budgets.

    CPU/GPU agnostic (runs where the default device is); ``torch.inference_mode``. With
    ``optimize`` (default) both sides run in the fast inference form
    (:func:`~segblocks.models.inference.optimize_for_inference`: BN folded into the convs,
    channels-last weights and input); ``optimize=False`` (``segblocks bench --no-optimize``)
    times the network as built. The network and the input are cast to ``dtype``
    (``torch.float32`` or ``torch.bfloat16``: the network then runs in bfloat16).
    """
    from segblocks.models import create_model
    from segblocks.models.inference import optimize_for_inference

    H, W = size
    if H % block_size or W % block_size:
        raise ValueError(
            f"size {H}x{W} is not a multiple of block size {block_size}; pick e.g. "
            f"{-(-H // block_size) * block_size}x{-(-W // block_size) * block_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = create_model(name, num_classes=num_classes).eval()
    model = SegBlocksModel(net, "all_hr", block_size).eval()
    if optimize:
        example = (2 * block_size, 2 * block_size)
        model = optimize_for_inference(model, dtype=dtype, example_size=example, inplace=True)
    else:
        model = model.to(dtype=dtype)
    net = model.net
    fmt = torch.channels_last if optimize else torch.contiguous_format
    x = torch.randn(1, 3, H, W, generator=gen).to(dtype, memory_format=fmt)
    gh, gw = H // block_size, W // block_size

    dense_macs = count_macs_dense(net, x).total
    rows = [dict(hr=None, gmacs=dense_macs / 1e9, theory=1.0)]
    for f in fractions:
        mask = _random_fraction_mask(gen, gh, gw, f)
        macs = count_macs_segblocks(model, x, mask=mask).total
        rows.append(dict(hr=f, gmacs=macs / 1e9, theory=dense_macs / macs))

    budgeted = SegBlocksModel(net, "heuristic", block_size, tau=0.5).eval()
    budgeted.latency_calibration = calibration
    with torch.inference_mode():
        for b in budgets:
            mask, _ = budgeted.budget_mask(x, b, (gh, gw))
            macs = count_macs_segblocks(budgeted, x, mask=mask).total
            rows.append(
                dict(
                    hr=float(mask.float().mean()),
                    budget=str(b),
                    gmacs=macs / 1e9,
                    theory=dense_macs / macs,
                )
            )

    times = {i: [] for i in range(len(rows))}
    with torch.inference_mode():
        for r in range(warmup + runs):
            for i, row in enumerate(rows):
                if row["hr"] is None:
                    fn = lambda: net(x)  # noqa: E731
                elif "budget" in row:
                    fn = lambda b=row["budget"]: budgeted(x, budget=b)  # noqa: E731
                else:
                    m = _random_fraction_mask(gen, gh, gw, row["hr"])
                    fn = lambda m=m: model(x, mask=m)  # noqa: E731
                t0 = time.perf_counter()
                fn()
                if x.is_cuda:
                    torch.cuda.synchronize()
                if r >= warmup:
                    times[i].append(time.perf_counter() - t0)
    dense_ms = statistics.median(times[0]) * 1e3
    for i, row in enumerate(rows):
        row["ms"] = statistics.median(times[i]) * 1e3
        row["speedup"] = dense_ms / row["ms"]
        row["ratio"] = row["speedup"] / row["theory"]
    return rows
