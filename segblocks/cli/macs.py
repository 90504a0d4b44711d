"""``segblocks macs``: exact per-layer MACs of a model, dense and in block execution."""

from __future__ import annotations

import argparse

from .common import fail, fraction, parse_size

POLICIES_WITH_TAU = ("random", "heuristic", "learned")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "macs",
        help="exact per-layer MACs of a model, dense and in block execution",
        description=(
            "Count conv and linear multiply-accumulates per layer and per image, densely and in "
            "block execution (HR and LR blocks separately, policy net separately and in the "
            "total), and print them as a table."
        ),
    )
    p.add_argument(
        "--model",
        default="timm:resnet18",
        help="'timm:NAME' for a timm features_only trunk (random weights, offline), or a name "
        "from the segblocks.models registry (default timm:resnet18)",
    )
    p.add_argument(
        "--size",
        type=parse_size,
        default=(1024, 2048),
        metavar="HxW",
        help="input size, multiples of the block size (default 1024x2048, Cityscapes)",
    )
    p.add_argument("--block-size", type=int, default=128, help="block side (default 128)")
    p.add_argument(
        "--policy",
        default="random",
        choices=["all_hr", "all_lr", "random", "heuristic", "learned"],
        help="block policy (default random); 'learned' is an untrained policy net whose mask "
        "is sampled with p ~ --hr-fraction; its network's MACs are counted",
    )
    p.add_argument(
        "--hr-fraction",
        type=fraction,
        default=0.4,
        help="target HR fraction tau for the random / heuristic policies and the learned "
        "policy's initial bias (default 0.4)",
    )
    p.add_argument("--batch", type=int, default=1, help="images in the batch (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed for image and masks (default 0)")
    p.add_argument(
        "--summary-only", action="store_true", help="print totals only, no per-layer tables"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segblocks.measuring import compare_macs, model_from_name

    H, W = args.size
    bs = args.block_size
    if bs < 2 or bs % 2 or H % bs or W % bs:
        return fail(
            "macs", f"--size {H}x{W} must be a multiple of --block-size {bs} (an even number)"
        )
    if args.batch < 1:
        return fail("macs", "--batch must be >= 1")
    try:
        model = model_from_name(args.model)
    except (ValueError, RuntimeError) as e:
        return fail("macs", e)
    try:
        dense, blocks = compare_macs(
            model, (H, W), bs, args.policy, args.hr_fraction, args.batch, args.seed
        )
    except (ValueError, RuntimeError, TypeError) as e:
        return fail("macs", f"{type(e).__name__}: {e}")
    tau = f" (tau {args.hr_fraction})" if args.policy in POLICIES_WITH_TAU else ""
    print(
        f"segblocks macs: model {args.model} (eval), input {args.batch}x3x{H}x{W}, block {bs} "
        f"(grid {H // bs}x{W // bs}), policy {args.policy}{tau}"
    )
    if not args.summary_only:
        print("\n== dense ==")
        print(dense.table())
        print("\n== block execution ==")
        print(blocks.table())
    else:
        print("\n== dense ==\n" + dense.summary())
        print("\n== block execution ==\n" + blocks.summary())
    d, b = dense.mean_per_image, blocks.mean_per_image
    print(
        f"\nper image: dense {d / 1e9:.4f} GMACs, blocks {b / 1e9:.4f} GMACs "
        f"(network {blocks.network / blocks.num_images / 1e9:.4f} + policy "
        f"{blocks.policy / blocks.num_images / 1e9:.4f}); ratio blocks/dense {b / d:.4f}"
    )
    return 0
