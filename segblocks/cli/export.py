"""``segblocks export``: a deployable checkpoint, a ``torch.export`` program or an AOTInductor
package of a trained SegBlocks model."""

from __future__ import annotations

import argparse

from .common import fail, parse_size, positive_int

DTYPES = ("float16", "bfloat16", "float32")
FORMATS = ("checkpoint", "pt2", "aoti")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a deployable copy of a checkpoint: small checkpoint, torch.export program "
        "(.pt2) or AOTInductor package",
        description=(
            "--format checkpoint (default unless OUT ends in .pt2): copy a trained checkpoint "
            "without optimizer, scheduler and RNG state, weights cast to --dtype (default "
            "float16); segblocks eval / infer --checkpoint take it as they take last.pt. "
            "--format pt2 (default for OUT.pt2): the whole SegBlocks model (policy, block "
            "execution, combine) as one torch.export program for input size --size, serving "
            "every mask from all-LR to all-HR; run it with segblocks infer --model OUT.pt2 or "
            "segblocks.load_exported(OUT). --format aoti: that program compiled by "
            "AOTInductor into a CPU package (minutes; needs a C++ compiler), loaded the same "
            "way. Both need torch and segblocks (its segblocks:: ops) where they run."
        ),
    )
    p.add_argument("checkpoint", help="checkpoint to export (e.g. runs/NAME/last.pt)")
    p.add_argument("out", help="file to write (e.g. checkpoints/NAME.pt or NAME.pt2)")
    p.add_argument(
        "--format",
        choices=FORMATS,
        help="checkpoint, pt2 or aoti (default: pt2 for an OUT ending in .pt2, else checkpoint)",
    )
    p.add_argument(
        "--size",
        type=parse_size,
        help="pt2 / aoti: input size HxW the program takes (e.g. 360x480); required",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="overwrite OUT even when it is not a segblocks checkpoint / export",
    )
    p.add_argument("--batch", type=positive_int, default=1, help="pt2 / aoti: images per call")
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights dtype (checkpoint: default float16) or compute dtype (pt2 / aoti: "
        "float32 or bfloat16, default float32; inputs and logits stay float32)",
    )
    p.set_defaults(func=run)


def _export_checkpoint(args) -> int:
    import os

    import torch

    from segblocks.models.checkpoint import export_checkpoint

    dtype = getattr(torch, args.dtype or "float16")
    path = export_checkpoint(args.checkpoint, args.out, dtype)
    before, after = os.path.getsize(args.checkpoint), os.path.getsize(path)
    print(
        f"exported {args.checkpoint} ({before / 2**20:.1f} MiB) -> {path} ({after / 2**20:.1f} MiB)"
    )
    return 0


def _export_program(args, fmt: str) -> int:
    import os
    import time

    import torch

    from segblocks.deploy import package_aoti, save_exported
    from segblocks.models.segblocks_model import SegBlocksModel

    if args.size is None:
        raise ValueError(
            f"--format {fmt} needs --size HxW, the input size the program takes (e.g. 360x480)"
        )
    dtype_name = args.dtype or "float32"
    if dtype_name == "float16":
        raise ValueError("--format pt2 / aoti computes in float32 or bfloat16, not float16")
    if args.batch < 1:
        raise ValueError(f"--batch {args.batch} must be >= 1")
    model = SegBlocksModel.from_checkpoint(args.checkpoint)
    save = package_aoti if fmt == "aoti" else save_exported
    t = time.perf_counter()
    path = save(model, args.out, args.size, batch=args.batch, dtype=getattr(torch, dtype_name))
    H, W = args.size
    print(
        f"exported {args.checkpoint} -> {path} ({fmt}, {args.batch}x3x{H}x{W}, {dtype_name}, "
        f"{os.path.getsize(path) / 2**20:.1f} MiB, {time.perf_counter() - t:.0f} s); run it "
        f"with segblocks infer INPUT OUT --model {path}"
    )
    return 0


def _is_segblocks_file(path) -> bool:
    """An earlier export: a segblocks checkpoint, exported program or package."""
    import zipfile

    from segblocks.deploy.export import METADATA_FILE
    from segblocks.errors import CheckpointError
    from segblocks.models.checkpoint import load_checkpoint

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any(n.endswith(METADATA_FILE) or "/aotinductor/" in n for n in names):
            return True
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def check_overwrite(path, force: bool) -> None:
    """Refuse to replace an existing file that is not an earlier export (``--force`` does)."""
    from pathlib import Path

    p = Path(path)
    if p.is_file() and not force and not _is_segblocks_file(p):
        raise ValueError(
            f"{p} exists and is not a segblocks checkpoint or export; give another name or "
            "pass --force to overwrite it"
        )


def run(args: argparse.Namespace) -> int:
    fmt = args.format or ("pt2" if str(args.out).endswith(".pt2") else "checkpoint")
    try:
        check_overwrite(args.out, args.force)
        if fmt == "checkpoint":
            if args.size is not None:
                raise ValueError("--size applies to --format pt2 / aoti, not to a checkpoint")
            return _export_checkpoint(args)
        return _export_program(args, fmt)
    except (ValueError, OSError, RuntimeError) as e:
        return fail("export", e)
