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

User errors (the project's :class:`~segblocks.errors.SegBlocksError` types: bad config,
unreadable checkpoint, busy or non-empty output folder, unusable inputs) print one line,
``segblocks CMD: error: ...``, and exit with status 2; Ctrl-C exits with 130. ``--debug``
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, calibrate, common, demo, eval, export, infer, macs, train

__all__ = ["build_parser", "main"]

COMMANDS = (demo, macs, bench, train, eval, infer, export, calibrate)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="segblocks",
        description="SegBlocks: block-based dynamic resolution for segmentation CNNs.",
    )
    ap.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks for errors (also accepted after the subcommand)",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from segblocks.errors import SegBlocksError, TrainingInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    ap = build_parser()
    args = ap.parse_args(argv)
    args.debug = common.DEBUG = debug
    if getattr(args, "func", None) is None:
        ap.print_help()
        return 2
    cmd = args.command
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        if debug:
            raise
        hint = getattr(args, "resume_hint", None)
        print(f"segblocks {cmd}: {hint(e) if hint else e}", file=sys.stderr)
        return 130
    except SegBlocksError as e:
        if debug:
            raise
        print(f"segblocks {cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"segblocks {cmd}: interrupted", file=sys.stderr)
        return 130
