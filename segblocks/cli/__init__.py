"""``segblocks`` command-line interface: one module per subcommand, each parsing its
arguments and calling the library.

Subcommands:
    demo    train and compare SegBlocks on procedural scenes (``segblocks.demo``); with
            --engine the block-engine check on a random-weight timm ResNet-18 trunk.
    macs    exact per-layer MACs, dense and in block execution (segblocks.measuring.macs).
    bench   latency and MACs of a SegBlocks model vs its dense network.
    train   joint training of network and policy from a YAML config.
    eval    mIoU, GMACs, FPS, memory, per-class HR %, HR histogram.
    infer   coloured segmentation and decision overlay for images.
"""

from __future__ import annotations

import argparse

from . import bench, demo, eval, infer, macs, train

__all__ = ["build_parser", "main"]

COMMANDS = (demo, macs, bench, train, eval, infer)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="segblocks",
        description="SegBlocks: block-based dynamic resolution for segmentation CNNs.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "func", None) is None:
        ap.print_help()
        return 2
    return args.func(args)
