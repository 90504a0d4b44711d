"""``segblocks train``: joint training of network and policy from a YAML config."""

from __future__ import annotations

import argparse

from .common import fail


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train SegBlocks (network + policy) from a YAML config",
        description=(
            "Train the segmentation network and the policy jointly (hybrid REINFORCE loss, "
            "paper Eq. 13) from a YAML config with key=value overrides, e.g. "
            "'segblocks train --config configs/procedural_tiny.yaml epochs=2 tau=0.3'. "
            "Multi-process: torchrun --nproc_per_node=N -m segblocks train --config ... ; "
            "resume with resume=true; mixed precision with amp=true."
        ),
    )
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/procedural_tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segblocks.training import load_config, train

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        return fail("train", e)
    res = train(cfg)
    if res.get("val"):
        v = res["val"]
        print(f"val mIoU {v['miou']:.4f}  HR fraction {v['hr_fraction']:.3f}")
    print(f"checkpoint: {res['checkpoint']}  log: {res['log_csv']}")
    return 0
