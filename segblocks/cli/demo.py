"""``segblocks demo``: the procedural-scenes report, or ``--engine`` the block-engine check."""

from __future__ import annotations

import argparse

from .common import fail, parse_size, positive_int

DESCRIPTION = (
    "Default: train a static SwiftNet-RN18 and SegBlocks-RN18 (learned policy, tau 0.4) "
    "on the built-in procedural street scenes, evaluate them and a static reduced-"
    "resolution SwiftNet, and write a report folder (table, Figs. 7-9, thin-object HR "
    "rates). With --engine: run a timm ResNet-18 trunk (random weights, no download) "
    "densely and in blocks on a "
    "random image. Prints (a) exactness: all-HR block execution vs dense and all-LR vs "
    "dense on the 2x average-pooled image, relative error per stage; (b) for "
    "20/40/60/100% HR random masks: conv GMACs and MAC ratio vs dense, measured latency "
    "(median of 3) "
    "and speedup vs dense."
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train and compare SegBlocks on built-in procedural scenes (~10 min on 2 cores)",
        description=DESCRIPTION,
    )
    p.add_argument(
        "--block-size",
        type=positive_int,
        default=128,
        help="block side in input pixels, a multiple of 64 (default 128)",
    )
    p.add_argument(
        "--size",
        type=parse_size,
        default=(512, 1024),
        metavar="HxW",
        help="input image size, multiples of the block size (default 512x1024)",
    )
    p.add_argument(
        "--threads", type=positive_int, default=2, help="torch intra-op threads (default 2)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for image and masks (default 0)")
    p.add_argument(
        "--engine",
        action="store_true",
        help="only the block-engine demonstration (exactness, MACs, latency; < 1 min)",
    )
    p.add_argument("--out", default="demo_report", help="report folder (default demo_report)")
    p.add_argument(
        "--epochs", type=positive_int, default=10, help="training epochs per model (default 10)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from segblocks.demo import run_demo, run_engine_demo

    torch.set_num_threads(args.threads)
    if args.engine:
        try:
            run_engine_demo(args.size, args.block_size, seed=args.seed)
        except ValueError as e:
            return fail("demo", e)
        return 0
    run_demo(args.out, epochs=args.epochs, seed=args.seed)
    return 0
