"""``segblocks infer``: coloured segmentation and HR decision overlay for image files; one
overlay video and ``frames.csv`` for a video file or (``--stream``) a folder of frames."""

from __future__ import annotations

import argparse
import sys

from .common import (
    add_budget_arguments,
    add_engine_argument,
    add_model_arguments,
    check_budget,
    eager_reason,
    exported_path,
    fail,
    input_normalize,
    model_from_args,
    positive_int,
    run_engine,
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
            "to 8 bits. Two inputs with one name (x.png, x.jpg) are refused. A video file "
            "(.mp4 .mkv .avi .mov .webm .m4v .mpg .mpeg; needs PyAV: pip install "
            "'segblocks[video]') or, with --stream, a folder of numbered frames is segmented "
            "frame by frame into <name>_overlay.mp4 (class colours over the frame, HR blocks "
            "outlined) and frames.csv (frame, latency_ms, hr_percent, gmacs, and the excess "
            "over --budget); undecodable frames are skipped with a note."
        ),
    )
    p.add_argument(
        "input",
        help="an image file, a folder of images, a video file or (--stream) a folder "
        "of numbered frames",
    )
    p.add_argument("out_dir", help="output folder")
    add_model_arguments(p)
    add_budget_arguments(p)
    add_engine_argument(p, "videos and --stream folders")
    p.add_argument("--skip-bad", action="store_true", help="warn and skip unreadable images")
    p.add_argument(
        "--stream",
        action="store_true",
        help="the input folder is one stream of frames (natural order: frame_2 before "
        "frame_10) -> one overlay video; a file is read as a video whatever its suffix",
    )
    p.add_argument(
        "--fps",
        type=positive_float,
        help="frame rate of the overlay video (default: the input video's; 10 for frames)",
    )
    p.add_argument(
        "--max-frames", type=positive_int, help="stop a video / stream after N segmented frames"
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed forwards of the first frame before timing a video / stream (default 1)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return v


def model_palette(model):
    """``(palette, class names, description)`` for the model's classes: the palette of the
    dataset it was trained on (a trainer checkpoint records it), or a generic one."""
    from segblocks.data import NUM_CLASSES
    from segblocks.data.palettes import palette_for

    net = getattr(model, "net", model)
    k = int(getattr(net, "num_classes", 0) or 0)
    dataset = getattr(model, "dataset", None)
    names = getattr(model, "class_names", None)
    if dataset is None and names is None and k == NUM_CLASSES:
        dataset = "procedural"  # a fresh model with the default --num-classes
    palette, names, what = palette_for(dataset, k, names)
    own = [tuple(c) for c in getattr(model, "palette", None) or ()]
    if len(own) == k and own != palette:  # a palette of its own, stored in the checkpoint
        palette, what = own, "the checkpoint's palette"
    return palette, names, what


def is_stream(args: argparse.Namespace) -> bool:
    """Whether ``args.input`` is segmented as a stream: a video file, or ``--stream``."""
    from pathlib import Path

    from segblocks.evaluation.video import is_video

    p = Path(args.input)
    return bool(args.stream) or (p.is_file() and is_video(p))


def _shared_options(args: argparse.Namespace, model, note) -> tuple[dict, str]:
    """The options images and streams are segmented with (``infer`` and ``infer_stream``
    take the same ones), and the palette's description."""
    palette, names, what = model_palette(model)
    options = dict(
        normalize=input_normalize(model),
        palette=palette,
        class_names=names,
        device=args.device,
        budget=args.budget,
        report=note,
    )
    return options, what


def run_stream(args: argparse.Namespace, note) -> int:
    from segblocks.evaluation.video import infer_stream

    try:
        model = model_from_args(args)
        why_eager = eager_reason(args, model)
        check_budget(args, model, engine=run_engine(args, model))
        options, _ = _shared_options(args, model, note)
        prepare = None
        if why_eager is None:

            def prepare(size):
                from segblocks.deploy.cache import compiled_model

                compiled = compiled_model(model, args.checkpoint, size, report=note)
                compiled.latency_calibration = model.latency_calibration
                return compiled

        elif args.engine == "auto" and args.checkpoint and exported_path(args) is None:
            note(f"running the eager model ({why_eager})")
        summary = infer_stream(
            model,
            args.input,
            args.out_dir,
            fps=args.fps,
            max_frames=args.max_frames,
            progress=args.progress,
            warmup=args.warmup,
            prepare=prepare,
            **options,
        )
    except (ValueError, FileNotFoundError) as e:
        return fail("infer", e)
    print("\n".join(summary.lines()))
    return 0


def run(args: argparse.Namespace) -> int:
    from segblocks.evaluation import infer

    def note(msg: str) -> None:
        print(f"segblocks infer: note: {msg}", file=sys.stderr)

    if is_stream(args):
        return run_stream(args, note)
    if args.fps is not None or args.max_frames is not None:
        return fail(
            "infer",
            "--fps and --max-frames apply to a video file or a --stream folder of frames, "
            f"not to {args.input}",
        )
    try:
        model = model_from_args(args)
        # still images run the eager model (a compile takes longer than most image sets)
        check_budget(args, model, engine=getattr(model, "kind", "eager"))
        options, what = _shared_options(args, model, note)
        outs = infer(model, args.input, args.out_dir, skip_bad=args.skip_bad, **options)
    except (ValueError, FileNotFoundError) as e:
        return fail("infer", e)
    if not outs:
        return fail("infer", f"no image in {args.input} could be read; nothing written")
    print(
        f"wrote {len(outs)} segmentation(s) and decision overlay(s) to {args.out_dir} "
        f"({what}, {len(options['class_names'])} classes: legend.csv)"
    )
    return 0
