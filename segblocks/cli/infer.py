"""``segblocks infer``: coloured segmentation and HR decision overlay for image files."""

from __future__ import annotations

import argparse

from .common import add_model_arguments, fail, input_normalize, load_model


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="segment an image or a folder: coloured segmentation + HR decision overlay",
        description="Write <name>_seg.png and <name>_hr.png for each image (png/jpg).",
    )
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("out_dir", help="output folder")
    add_model_arguments(p)
    p.add_argument("--skip-bad", action="store_true", help="warn and skip unreadable images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segblocks.data import PALETTE
    from segblocks.evaluation import infer

    try:
        model = load_model(args)
        outs = infer(
            model,
            args.input,
            args.out_dir,
            normalize=input_normalize(model),
            palette=PALETTE,
            skip_bad=args.skip_bad,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as e:
        return fail("infer", e)
    print(f"wrote {len(outs)} segmentation(s) and decision overlay(s) to {args.out_dir}")
    return 0
