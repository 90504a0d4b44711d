"""``segblocks bench``: latency and MACs of a SegBlocks model against its dense network."""

from __future__ import annotations

import argparse

from .common import add_dtype_argument, add_optimize_argument


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="latency and MACs of a SegBlocks model vs its dense network",
        description=(
            "Time the dense SwiftNet and the SegBlocks model at several HR fractions (random "
            "masks, new mask per run, interleaved runs, medians) and print GMACs, latency, "
            "measured and theoretical speedup. Fuller studies: benchmarks/*.py."
        ),
    )
    p.add_argument("--model", default="swiftnet_rn18", help="registered model (default rn18)")
    p.add_argument("--size", default="1024x2048", metavar="HxW", help="input size")
    p.add_argument("--block-size", type=int, default=128, help="block side (default 128)")
    p.add_argument(
        "--hr", default="0.2,0.4,0.6,1.0", help="comma-separated HR fractions (default 0.2-1.0)"
    )
    p.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--budget",
        help="comma-separated budgets timed as budgeted runs (heuristic ranking): e.g. "
        "0.3,40gmacs,500ms",
    )
    p.add_argument("--calibration", help="latency calibration (segblocks calibrate) for ms budgets")
    add_dtype_argument(p)
    add_optimize_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from segblocks.measuring import bench_model

    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
        fracs = tuple(float(v) for v in args.hr.split(","))
    except ValueError:
        print(f"segblocks bench: error: bad --size {args.size!r} or --hr {args.hr!r}")
        return 2
    if any(not 0 <= f <= 1 for f in fracs) or args.runs < 1 or args.warmup < 0:
        print("segblocks bench: error: --hr values must be in [0, 1], --runs >= 1")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [b.strip() for b in (args.budget or "").split(",") if b.strip()]
    try:
        from segblocks.policies.budget import Budget

        for b in budgets:
            Budget.parse(b)
        cal = None
        if args.calibration:
            from segblocks.measuring.calibrate import LatencyCalibration

            cal = LatencyCalibration.load(
                args.calibration,
                model=args.model,
                size=(h, w),
                block_size=args.block_size,
                dtype=args.dtype,
                threads=torch.get_num_threads(),
            )
        rows = bench_model(
            args.model,
            (h, w),
            args.block_size,
            fracs,
            args.runs,
            args.warmup,
            seed=args.seed,
            dtype=getattr(torch, args.dtype),
            budgets=budgets,
            calibration=cal,
            optimize=args.optimize,
        )
    except ValueError as e:
        print(f"segblocks bench: error: {e}")
        return 2
    print(
        f"{args.model} at 1x3x{h}x{w}, block {args.block_size}, {args.dtype}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs} runs "
        f"after {args.warmup} warm-up, dense and block runs interleaved, new random mask per run"
        + ("; BN folded, channels-last" if args.optimize else "; --no-optimize: model as built")
    )
    print(f"{'config':>16} {'GMACs':>8} {'ms':>9} {'speedup':>8} {'theory':>7} {'ratio':>6}")
    for r in rows:
        name = "dense" if r["hr"] is None else f"{r['hr'] * 100:.0f}% HR"
        if "budget" in r:
            name = f"{r['budget']} ({r['hr'] * 100:.0f}%)"
        print(
            f"{name:>16} {r['gmacs']:8.2f} {r['ms']:9.1f} {r['speedup']:8.3f} "
            f"{r['theory']:7.3f} {r['ratio']:6.2f}"
        )
    return 0
