#!/usr/bin/env python
"""Millisecond budgets (issue 11): how close a budgeted SegBlocks-RN18 comes to its budget.

Setting: SegBlocks-RN18 (``swiftnet_rn18``, 19 classes, random weights, BN folded by eval
mode), 1x3x1024x2048, block 128 (8x16 grid), heuristic policy ranking the blocks, channels-last,
``inference_mode``. Steps, all in one run on a quiet machine:

1. calibrate (:func:`segblocks.measuring.calibrate.calibrate`): latency at ``--counts`` HR
   counts from all-LR to all-HR, fresh random masks, interleaved, medians, affine fit;
2. five budgets spread over the calibrated range (10 %, 30 %, 50 %, 70 %, 90 % of the way
   from the all-LR to the all-HR latency);
3. for each budget, ``--runs`` budgeted forward passes (policy ranking + top-k + network) on
   fresh random images, the budgets interleaved round by round; per budget the median latency.

Headline JSON keys: ``budget_latency_error_median`` (median over the 5 budgets of
``|measured / budget - 1|``) and ``budget_latency_error_max``. Targets: <= 0.05 and <= 0.10.

Usage::

    python benchmarks/budget.py --json results/budget.json        # ~3-5 min, float32
    python benchmarks/budget.py --quick --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DTYPES,
    add_run_arguments,
    cpu_snapshot,
    foreign_load,
    machine_info,
    reexec_with_malloc,
    resolve_run_arguments,
)

RUNS = {"runs": (9, 3), "warmup": (2, 1), "profile_runs": (1, 1)}
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(ap, None, RUNS)
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    ap.add_argument("--size", default="1024x2048")
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--counts", type=int, default=6, help="calibration HR counts (default 6)")
    return resolve_run_arguments(ap, ap.parse_args(argv), RUNS)


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    from segblocks.measuring.calibrate import calibrate
    from segblocks.models import create_model
    from segblocks.models.segblocks_model import SegBlocksModel

    H, W = (int(v) for v in args.size.split("x"))
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    net = create_model("swiftnet_rn18", num_classes=19).eval()
    model = SegBlocksModel(net, "heuristic", args.block_size, tau=0.5).eval()
    model = model.to(memory_format=torch.channels_last, dtype=dtype)
    snap0 = cpu_snapshot()
    print(f"machine: {json.dumps(machine_info())}", flush=True)
    cal = calibrate(
        model,
        "swiftnet_rn18",
        (H, W),
        dtype=dtype,
        counts=args.counts,
        runs=args.runs,
        warmup=args.warmup,
        seed=args.seed,
    )
    model.latency_calibration = cal
    B = (H // args.block_size) * (W // args.block_size)
    lo, hi = cal.intercept_ms, cal.intercept_ms + cal.per_block_ms * B
    budgets = [lo + f * (hi - lo) for f in FRACTIONS]
    print(f"calibration: {cal.intercept_ms:.1f} ms + {cal.per_block_ms:.2f} ms x k (B = {B})")
    gen = torch.Generator().manual_seed(args.seed + 1)
    times: dict[int, list[float]] = {i: [] for i in range(len(budgets))}
    counts: dict[int, int] = {}
    with torch.inference_mode():
        for r in range(args.warmup + args.runs):
            order = list(range(len(budgets)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                x = torch.randn(1, 3, H, W, generator=gen).to(dtype=dtype)
                x = x.contiguous(memory_format=torch.channels_last)
                t0 = time.perf_counter()
                out = model(x, budget=f"{budgets[i]}ms")
                dt = 1000 * (time.perf_counter() - t0)
                counts[i] = int(out.grid.sum())
                if r >= args.warmup:
                    times[i].append(dt)
    rows = []
    for i, b in enumerate(budgets):
        med = statistics.median(times[i])
        rows.append(
            {"budget_ms": b, "median_ms": med, "hr_blocks": counts[i], "error": abs(med / b - 1)}
        )
        print(
            f"  budget {b:8.1f} ms: {counts[i]:4d} HR blocks, measured {med:8.1f} ms "
            f"({100 * (med / b - 1):+5.1f} %)"
        )
    errs = [r["error"] for r in rows]
    snap1 = cpu_snapshot()
    result = {
        "machine": machine_info(),
        "foreign_load": foreign_load(snap0, snap1) if snap0 and snap1 else None,
        "config": {
            "size": [H, W],
            "block_size": args.block_size,
            "dtype": args.dtype,
            "runs": args.runs,
            "warmup": args.warmup,
            "counts": args.counts,
        },
        "calibration": {
            "intercept_ms": cal.intercept_ms,
            "per_block_ms": cal.per_block_ms,
            "residual_ms": cal.residual_ms,
            "points": cal.points,
        },
        "rows": rows,
        "budget_latency_error_median": statistics.median(errs),
        "budget_latency_error_max": max(errs),
    }
    print(
        f"budget_latency_error_median {result['budget_latency_error_median']:.3f}  "
        f"max {result['budget_latency_error_max']:.3f}  (targets 0.05 / 0.10)"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
