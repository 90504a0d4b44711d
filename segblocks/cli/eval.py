"""``segblocks eval``: mIoU, GMACs, FPS, memory, per-class HR % and HR histogram of a model."""

from __future__ import annotations

import argparse

from .common import (
    add_budget_arguments,
    add_dtype_argument,
    add_model_arguments,
    check_budget,
    fail,
    input_normalize,
    model_from_args,
    parse_size,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="mIoU, GMACs, FPS, memory, per-class HR %% and HR histogram of a model",
        description=(
            "Evaluate a trained checkpoint (or a fresh registry model) on a dataset: mIoU and "
            "per-class IoU, average GMACs per image, FPS (warm-up on the first half), peak "
            "memory, per-class %% of pixels processed at high resolution and the histogram of "
            "HR blocks per image. Prints a table; --json writes all figures."
        ),
    )
    add_model_arguments(p)
    p.add_argument(
        "--dataset",
        default="procedural",
        choices=["procedural", "camvid", "cityscapes", "mapillary"],
    )
    p.add_argument("--data-root", help="dataset folder (not needed for procedural)")
    p.add_argument("--split", default="val", help="split (default val)")
    p.add_argument("--size", default="256x512", help="procedural image size HxW")
    p.add_argument("--max-images", type=int, help="evaluate at most N images")
    p.add_argument("--seed", type=int, default=0)
    add_dtype_argument(p)
    p.add_argument("--no-fps", action="store_true", help="skip the FPS measurement")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--figures", help="write the HR histogram PNG into this folder")
    add_budget_arguments(p)
    p.add_argument(
        "--budget-sweep",
        help="comma-separated budgets (e.g. 0.1,0.2,0.3,0.4,0.6 or 1.5gmacs,2gmacs): evaluate the "
        "one model at each; --json gets mIoU vs GMACs and latency, --figures the plots",
    )
    p.set_defaults(func=run)


def _dataset(args: argparse.Namespace):
    """``--dataset``'s ``--split`` (:func:`segblocks.data.create_dataset`)."""
    from segblocks.data import create_dataset, dataset_needs_root

    if args.dataset == "procedural":
        h, w = parse_size(args.size)
        n = args.max_images or 16
        return create_dataset(
            "procedural", split=args.split, num_images=n, height=h, width=w, seed=args.seed
        )
    if dataset_needs_root(args.dataset) and not args.data_root:
        raise ValueError(f"--dataset {args.dataset} needs --data-root")
    return create_dataset(args.dataset, args.data_root, split=args.split)


def run(args: argparse.Namespace) -> int:
    import torch

    from segblocks.evaluation import evaluate

    try:
        ds = _dataset(args)
        model = model_from_args(args, num_classes=getattr(ds, "num_classes", None))
    except (ValueError, FileNotFoundError, KeyError) as e:
        return fail("eval", e)
    k_model = getattr(getattr(model, "net", model), "num_classes", None)
    k_data = getattr(ds, "num_classes", None)
    if k_model and k_data and int(k_model) != int(k_data):
        trained = getattr(model, "dataset", None)
        what = f"checkpoint {args.checkpoint}" if args.checkpoint else "the model"
        fix = f" (--dataset {trained})" if trained and trained != args.dataset else ""
        if not args.checkpoint:
            fix = f" (--num-classes {k_data} for a fresh model)"
        return fail(
            "eval",
            f"{what} predicts {k_model} classes but --dataset {args.dataset} has {k_data}; "
            f"evaluate on the dataset the model was trained on{fix}",
        )
    if args.budget and args.budget_sweep:
        return fail("eval", "give --budget or --budget-sweep, not both")
    budgets = [b.strip() for b in (args.budget_sweep or "").split(",") if b.strip()]
    try:
        check_budget(args, model, budgets)
    except ValueError as e:
        return fail("eval", e)

    def run_eval(budget=None):
        return evaluate(
            model,
            ds,
            device=args.device,
            normalize=input_normalize(model),
            max_images=args.max_images,
            fps=not args.no_fps,
            dtype=getattr(torch, args.dtype),
            budget=budget,
        )

    try:
        if budgets:
            return _sweep(args, budgets, run_eval)
        res = run_eval(args.budget)
    except ValueError as e:
        return fail("eval", e)
    print(res.table())
    if args.json:
        res.save_json(args.json)
        print(f"results: {args.json}")
    if args.figures:
        from pathlib import Path

        from segblocks.evaluation.visualize import save_hr_histogram

        Path(args.figures).mkdir(parents=True, exist_ok=True)
        save_hr_histogram(Path(args.figures) / "hr_histogram.png", res.hr_fractions)
        print(f"figures: {args.figures}")
    return 0


def _sweep(args: argparse.Namespace, budgets: list[str], run_eval) -> int:
    """Evaluate one model at each budget; print and save mIoU vs GMACs / latency."""
    import json
    from pathlib import Path

    from segblocks.evaluation.evaluate import budget_sweep

    def show(row: dict) -> None:
        ms = row["latency_ms"]
        ms = f"{ms:7.1f} ms" if ms is not None else "      - ms"
        print(
            f"budget {row['budget']:>10}: mIoU {100 * row['miou']:5.1f}  GMACs "
            f"{row['gmacs']:6.3f}  HR {row['hr_percent']:5.1f} %  {ms}",
            flush=True,
        )

    rows = budget_sweep(budgets, run_eval, on_row=show)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"budget_sweep": rows}, indent=2))
        print(f"results: {args.json}")
    if args.figures:
        from segblocks.evaluation.visualize import save_miou_vs_cost

        fig = Path(args.figures)
        for r in rows:
            r["group"] = "budget sweep"
        save_miou_vs_cost(fig / "budget_miou_vs_gmacs.png", rows, "gmacs", "GMACs per image")
        if all(r["latency_ms"] is not None for r in rows):
            save_miou_vs_cost(fig / "budget_miou_vs_latency.png", rows, "latency_ms", "ms")
        print(f"figures: {args.figures}")
    return 0
