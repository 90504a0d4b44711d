"""``segblocks export``: a small, deployable copy of a trained checkpoint (half precision)."""

from __future__ import annotations

import argparse

from .common import fail

DTYPES = ("float16", "bfloat16", "float32")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a small deployable copy of a checkpoint (half-precision weights)",
        description=(
            "Copy a trained checkpoint without its optimizer, scheduler and RNG state, with the "
            "weights cast to --dtype (default float16). The copy rebuilds its model from the "
            "file alone: segblocks eval / infer --checkpoint take it as they take last.pt."
        ),
    )
    p.add_argument("checkpoint", help="checkpoint to export (e.g. runs/NAME/last.pt)")
    p.add_argument("out", help="file to write (e.g. checkpoints/NAME.pt)")
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="weights dtype")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from segblocks.models.checkpoint import export_checkpoint

    try:
        path = export_checkpoint(args.checkpoint, args.out, getattr(torch, args.dtype))
    except (ValueError, OSError) as e:
        return fail("export", e)
    before, after = os.path.getsize(args.checkpoint), os.path.getsize(path)
    print(
        f"exported {args.checkpoint} ({before / 2**20:.1f} MiB) -> {path} ({after / 2**20:.1f} MiB)"
    )
    return 0
