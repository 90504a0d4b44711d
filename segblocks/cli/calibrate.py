"""``segblocks calibrate``: latency against the number of HR blocks, for millisecond budgets."""

from __future__ import annotations

import argparse

from .common import (
    add_dtype_argument,
    add_engine_argument,
    add_model_arguments,
    eager_reason,
    fail,
    model_from_args,
    model_id,
    parse_size,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure latency vs. number of HR blocks on this machine (for --budget NNms)",
        description=(
            "Time the model at several counts of high-resolution blocks (fresh random masks, "
            "interleaved, medians), fit latency = intercept + per_block x count, and write it "
            "with the model, size, block size, dtype, threads and CPU it was measured with. "
            "eval and infer take it with --calibration FILE to honour budgets in ms."
        ),
    )
    add_model_arguments(p)
    p.add_argument(
        "--size",
        type=parse_size,
        required=True,
        metavar="HxW",
        help="image size (measured padded to whole blocks, as the model runs it)",
    )
    add_dtype_argument(p)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--counts", type=int, default=6, help="HR counts measured (default 6)")
    p.add_argument("--runs", type=int, default=7, help="timed runs per count (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up runs (default 2)")
    p.add_argument("--out", required=True, help="JSON file to write")
    add_engine_argument(p, "what is timed (infer on videos runs the same by default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import torch

    def note(msg: str) -> None:
        print(f"segblocks calibrate: note: {msg}", file=sys.stderr)

    from segblocks.measuring.calibrate import calibrate

    if args.threads is not None:
        if args.threads < 1:
            return fail("calibrate", f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    try:
        model = model_from_args(args)
        if getattr(model, "dense", True):
            raise ValueError("calibration needs a block policy (not --policy dense)")
        why_eager = eager_reason(args, model)
        if why_eager is None:
            from segblocks.deploy.cache import compiled_model

            dtype = getattr(torch, args.dtype)
            model = compiled_model(model, args.checkpoint, args.size, dtype=dtype, report=note)
        elif args.engine == "auto" and args.checkpoint:
            note(f"timing the eager model ({why_eager})")
        cal = calibrate(
            model,
            model_id(args),
            args.size,
            dtype=getattr(torch, args.dtype),
            counts=args.counts,
            runs=args.runs,
            warmup=args.warmup,
        )
    except ValueError as e:
        return fail("calibrate", e)
    path = cal.save(args.out)
    net_base = cal.intercept_ms - cal.policy_ms
    for k, t in cal.points:
        print(f"  {k:4d} HR blocks: {t:8.2f} ms (fit {net_base + cal.per_block_ms * k:8.2f})")
    print(
        f"latency = {cal.intercept_ms:.2f} ms + {cal.per_block_ms:.3f} ms x HR blocks (policy "
        f"{cal.policy_ms:.2f} ms included; largest residual {cal.residual_ms:.2f} ms) -> {path}"
    )
    return 0
