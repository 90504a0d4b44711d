#!/usr/bin/env python
"""CamVid results (issue 8): accuracy, cost and CPU latency of the trained models on ``val``.

Models: the checkpoints of the configs in ``configs/camvid/`` (``segblocks train --config
configs/camvid/NAME.yaml`` writes ``runs/camvid/NAME/last.pt``), or the half-precision exports
in ``checkpoints/camvid/`` (``--checkpoints checkpoints/camvid``). Every model is a
``SegBlocksModel``: the static networks use the ``dense`` policy (the plain SwiftNet-EffL1 on
the frame replicate-padded to 480x384, resized by the policy's scale), the others run in
32-px blocks. Missing checkpoints are skipped (listed in the output).

Phases:

1. accuracy, float32, every ``val`` image (:func:`segblocks.evaluation.evaluate`): mIoU,
   per-class IoU, GMACs per image (policy included, exact accounting), % HR blocks and per-class
   % of pixels in HR blocks (paper Table 2);
2. latency, float32 and bfloat16 (``--dtype``): ``--latency-images`` val frames; after a
   warm-up pass, every round times every model on every frame (one forward pass each, batch 1,
   the policy included, ``inference_mode``), the models in an order rotated from round to round
   so that load drifts hit all alike; per model the median over rounds and frames;
3. figures: mIoU vs GMACs, mIoU vs latency (float32 and bfloat16), decision overlays (paper
   Fig. 9) of the block models on ``--overlay-frames`` val frames.

Usage::

    python benchmarks/camvid.py --data-root ../shared/datasets/camvid \\
        --json results/camvid.json --figures results/camvid
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DTYPES, cpu_snapshot, foreign_load, machine_info  # noqa: E402

#: (name, label, group) in table order; the checkpoint is DIR/NAME/last.pt or DIR/NAME.pt
MODELS = (
    ("static_full", "static 1.0x", "static"),
    ("static_08", "static 0.8x", "static"),
    ("static_06", "static 0.6x", "static"),
    ("segblocks_tau04", "SegBlocks tau 0.4", "SegBlocks"),
    ("segblocks_tau02", "SegBlocks tau 0.2", "SegBlocks"),
    ("heuristic_tau04", "heuristic tau 0.4", "heuristic"),
    ("heuristic_tau02", "heuristic tau 0.2", "heuristic"),
)


def checkpoint_path(roots: Path | list[Path], name: str) -> Path | None:
    """``ROOT/NAME/last.pt`` or ``ROOT/NAME.pt`` in the first of ``roots`` that has one."""
    for root in [roots] if isinstance(roots, Path) else roots:
        for p in (root / name / "last.pt", root / f"{name}.pt"):
            if p.is_file():
                return p
    return None


#: shown for a missing model; the heuristic checkpoints are the static network's weights with a
#: weightless policy, not shipped (``epochs: 0`` rebuilds one in about a minute)
MISSING_HINT = (
    "segblocks train --config camvid/NAME writes runs/camvid/NAME/last.pt (the heuristic "
    "ones: epochs 0, ~1 min); add runs/camvid to --checkpoints"
)


def _load(path: Path, dtype: torch.dtype):
    from segblocks.models.segblocks_model import SegBlocksModel

    return SegBlocksModel.from_checkpoint(path).to(dtype=dtype).eval()


def accuracy(models: dict, val, norm) -> dict:
    from segblocks.evaluation import evaluate

    out = {}
    for name, path in models.items():
        t0 = time.perf_counter()
        r = evaluate(_load(path, torch.float32), val, normalize=norm, fps=False, progress=False)
        out[name] = r
        print(
            f"  {name:18s} mIoU {100 * r.miou:5.1f}  GMACs {r.gmacs:6.3f}  "
            f"HR {100 * r.mean_hr_fraction:5.1f} %  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return out


def latency(models: dict, frames: list, dtype_name: str, rounds: int) -> dict:
    """Median ms per frame of every model, interleaved round by round."""
    dtype = DTYPES[dtype_name]
    nets = {n: _load(p, dtype) for n, p in models.items()}
    xs = [f.to(dtype) for f in frames]
    times: dict[str, list[float]] = {n: [] for n in nets}
    names = list(nets)
    with torch.inference_mode():
        for n in names:  # warm-up: plans, caches, oneDNN primitives
            for x in xs:
                nets[n](x)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                for x in xs:
                    t0 = time.perf_counter()
                    nets[n](x)
                    times[n].append(1000 * (time.perf_counter() - t0))
    return {n: {"median_ms": statistics.median(t), "samples": len(t)} for n, t in times.items()}


def overlays(models: dict, val, norm, frames: list[int], out: Path, palette) -> list[str]:
    from segblocks.evaluation.visualize import save_decision_figure

    written = []
    for name, path in models.items():
        model = _load(path, torch.float32)
        if model.dense:
            continue
        with torch.inference_mode():
            for i in frames:
                img, lab = val[i]
                o = model(norm(img, lab)[0][None])
                p = out / f"fig9_{name}_{i:03d}.png"
                save_decision_figure(
                    p,
                    img,
                    o.logits[0].argmax(0),
                    o.grid[0],
                    palette,
                    title=f"{name}, val frame {i}",
                    block_size=model.block_size,
                )
                written.append(str(p))
    return written


def markdown(result: dict) -> str:
    """The tables of ``results/camvid.md``: summary, per-class IoU, per-class HR %."""
    rows = [(n, v) for n, v in result["models"].items() if "miou" in v]
    if not rows:
        return ""

    def ms(v, key):
        return f"{v[key]:.0f}" if v.get(key) is not None else "-"

    out = [
        "| model | mIoU | GMACs / image (policy) | HR blocks % | fp32 ms | bf16 ms |",
        "|---|---|---|---|---|---|",
    ]
    for _, v in rows:
        out.append(
            f"| {v['label']} | {100 * v['miou']:.1f} | {v['gmacs']:.2f} ({v['gmacs_policy']:.3f}) "
            f"| {v['hr_percent']:.1f} | {ms(v, 'latency_ms_float32')} | "
            f"{ms(v, 'latency_ms_bfloat16')} |"
        )
    classes = list(rows[0][1]["iou"])
    for title, key in (("IoU %", "iou"), ("% of pixels in HR blocks", "class_hr_percent")):
        out += ["", f"{title}:", "", "| model | " + " | ".join(classes) + " |"]
        out.append("|---" * (len(classes) + 1) + "|")
        for _, v in rows:
            vals = [v[key][c] for c in classes]
            scale = 100.0 if key == "iou" else 1.0
            cells = [f"{scale * x:.1f}" if x == x else "-" for x in vals]
            out.append(f"| {v['label']} | " + " | ".join(cells) + " |")
    sweep = result.get("budget_sweep")
    if sweep and sweep.get("rows"):
        out += ["", f"Budget sweep of {sweep['model']} (top-ranked blocks per image):", ""]
        out += ["| budget | mIoU | GMACs / image | HR blocks % |", "|---|---|---|---|"]
        for r in sweep["rows"]:
            out.append(
                f"| {r['budget']} | {100 * r['miou']:.1f} | {r['gmacs']:.2f} | "
                f"{r['hr_percent']:.1f} |"
            )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default="../shared/datasets/camvid")
    ap.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        default=[Path("runs/camvid")],
        help="folders of the checkpoints, searched in order (e.g. checkpoints/camvid runs/camvid)",
    )
    ap.add_argument("--models", nargs="+", help="subset of the model names")
    ap.add_argument("--dtype", choices=(*DTYPES, "both"), default="both")
    ap.add_argument("--latency-images", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--overlay-frames", type=int, nargs="*", default=[5, 40, 90])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument(
        "--sweep-model", default="segblocks_tau04", help="model evaluated over --sweep-budgets"
    )
    ap.add_argument(
        "--sweep-budgets",
        nargs="*",
        default=["0.1", "0.2", "0.3", "0.4", "0.5"],
        help="budgets of the budget sweep (issue 11): the one model, top-ranked blocks",
    )
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--figures", help="folder for the PNG figures")
    ap.add_argument("--markdown", help="write the result tables (Markdown) here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from segblocks.data import CamVid
    from segblocks.data.palettes import CAMVID_PALETTE
    from segblocks.data.transforms import Normalize

    root = args.checkpoints
    wanted = [m for m in MODELS if not args.models or m[0] in args.models]
    found = {n: checkpoint_path(root, n) for n, _, _ in wanted}
    missing = [n for n, p in found.items() if p is None]
    models = {n: p for n, p in found.items() if p is not None}
    if missing:
        print(f"skipped (no checkpoint under {' '.join(map(str, root))}): {', '.join(missing)}")
        print(f"  ({MISSING_HINT})")
    if not models:
        ap.error(f"no checkpoints found under {' '.join(map(str, root))}")
    val = CamVid(args.data_root, split="val")
    first = _load(next(iter(models.values())), torch.float32)
    norm = Normalize(first.net.input_mean, first.net.input_std)
    info = machine_info()
    snap0 = cpu_snapshot()

    result: dict = {"machine": info, "models": {}, "missing": missing, "argv": sys.argv}
    labels = {n: (lab, grp) for n, lab, grp in MODELS}
    if not args.skip_accuracy:
        print(f"accuracy on val ({len(val)} images), float32:", flush=True)
        acc = accuracy(models, val, norm)
        for n, r in acc.items():
            d = r.to_dict()
            result["models"][n] = {
                "label": labels[n][0],
                "group": labels[n][1],
                "checkpoint": str(models[n]),
                "miou": r.miou,
                "iou": dict(zip(r.class_names, r.iou, strict=True)),
                "gmacs": r.gmacs,
                "gmacs_policy": r.gmacs_policy,
                "hr_percent": 100 * r.mean_hr_fraction,
                "class_hr_percent": dict(zip(r.class_names, r.class_hr_percent, strict=True)),
                "pixel_accuracy": d.get("pixel_accuracy"),
            }
        sweep = args.sweep_model if args.sweep_model in models else None
        if sweep and args.sweep_budgets:
            from segblocks.evaluation import evaluate
            from segblocks.evaluation.evaluate import budget_sweep

            print(f"budget sweep of {sweep}:", flush=True)
            model = _load(models[sweep], torch.float32)

            def run_eval(b):
                return evaluate(model, val, normalize=norm, fps=False, progress=False, budget=b)

            def show(row):
                print(
                    f"  budget {row['budget']:>8}: mIoU {100 * row['miou']:5.1f}  GMACs "
                    f"{row['gmacs']:6.3f}"
                )

            rows = budget_sweep(args.sweep_budgets, run_eval, on_row=show)
            result["budget_sweep"] = {"model": sweep, "rows": rows}
    frames = []
    for i in range(min(args.latency_images, len(val))):
        img, lab = val[(i * len(val)) // max(1, args.latency_images)]
        frames.append(norm(img, lab)[0][None])
    dtypes = list(DTYPES) if args.dtype == "both" else [args.dtype]
    for dt in dtypes:
        print(f"latency {dt} ({len(frames)} frames x {args.rounds} rounds):", flush=True)
        lat = latency(models, frames, dt, args.rounds)
        for n, v in lat.items():
            print(f"  {n:18s} {v['median_ms']:7.1f} ms", flush=True)
            result["models"].setdefault(n, {"label": labels[n][0], "group": labels[n][1]})
            result["models"][n][f"latency_ms_{dt}"] = v["median_ms"]
    snap1 = cpu_snapshot()
    result["foreign_load"] = foreign_load(snap0, snap1) if snap0 and snap1 else None

    if args.figures:
        from segblocks.evaluation.visualize import save_miou_vs_cost

        fig = Path(args.figures)
        fig.mkdir(parents=True, exist_ok=True)
        rows = [
            {"name": v["label"], "group": v["group"], **v}
            for v in result["models"].values()
            if "miou" in v
        ]
        sweep_rows = [
            {"name": r["budget"], "group": f"{result['budget_sweep']['model']} budgets", **r}
            for r in (result.get("budget_sweep") or {}).get("rows", [])
        ]
        written = [
            str(save_miou_vs_cost(fig / "miou_vs_gmacs.png", rows + sweep_rows, "gmacs", "GMACs"))
        ]
        for dt in dtypes:
            key = f"latency_ms_{dt}"
            if rows and all(key in r for r in rows):
                written.append(
                    str(
                        save_miou_vs_cost(
                            fig / f"miou_vs_latency_{dt}.png",
                            rows,
                            key,
                            f"CPU latency per frame, {dt} (ms)",
                        )
                    )
                )
        written += overlays(models, val, norm, args.overlay_frames, fig, CAMVID_PALETTE)
        result["figures"] = written
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(result))
        print(f"tables: {args.markdown}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
