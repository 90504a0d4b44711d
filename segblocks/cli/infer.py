"""``segblocks infer``: coloured segmentation and HR decision overlay for image files."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_budget_arguments,
    add_model_arguments,
    check_budget,
    fail,
    input_normalize,
    load_model,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "infer",
        help="segment an image or a folder: coloured segmentation + HR decision overlay",
        description=(
            "Write <name>_seg.png and <name>_hr.png for each image (every format Pillow reads; "
            "other files are listed as skipped) and legend.csv (class id, name, colour). The "
            "colours and class names are those of the checkpoint's training dataset "
            "(procedural, Cityscapes, CamVid), or a generic palette. 16-bit images are scaled "
            "to 8 bits. Two inputs with one name (x.png, x.jpg) are refused."
        ),
    )
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("out_dir", help="output folder")
    add_model_arguments(p)
    add_budget_arguments(p)
    p.add_argument("--skip-bad", action="store_true", help="warn and skip unreadable images")
    p.set_defaults(func=run)


def model_palette(model):
    """``(palette, class names, description)`` for the model's classes: the palette of the
    dataset it was trained on (a trainer checkpoint records it), or a generic one."""
    from segblocks.data import NUM_CLASSES
    from segblocks.data.palettes import palette_for

    net = getattr(model, "net", model)
    k = int(getattr(net, "num_classes", 0) or 0)
    dataset = getattr(model, "dataset", None)
    if dataset is None and not hasattr(model, "class_names") and k == NUM_CLASSES:
        dataset = "procedural"  # a fresh model with the default --num-classes
    return palette_for(dataset, k, getattr(model, "class_names", None))


def run(args: argparse.Namespace) -> int:
    from segblocks.evaluation import infer

    def note(msg: str) -> None:
        print(f"segblocks infer: note: {msg}", file=sys.stderr)

    try:
        model = load_model(args)
        check_budget(args, model)
        palette, names, what = model_palette(model)
        outs = infer(
            model,
            args.input,
            args.out_dir,
            normalize=input_normalize(model),
            palette=palette,
            class_names=names,
            skip_bad=args.skip_bad,
            device=args.device,
            report=note,
            budget=args.budget,
        )
    except (ValueError, FileNotFoundError) as e:
        return fail("infer", e)
    if not outs:
        return fail("infer", f"no image in {args.input} could be read; nothing written")
    print(
        f"wrote {len(outs)} segmentation(s) and decision overlay(s) to {args.out_dir} "
        f"({what}, {len(names)} classes: legend.csv)"
    )
    return 0
