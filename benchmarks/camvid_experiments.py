#!/usr/bin/env python
"""CamVid experiments of the paper (issue 19): controls and seeds, BlockPad, block size, policy.

One command trains what is missing, evaluates every run on ``val`` and writes the tables::

    python benchmarks/camvid_experiments.py --train --latency \\
        --json results/camvid_experiments.json --markdown results/camvid_experiments.md

Runs (:data:`RUNS`): a packaged config (``segblocks/configs/camvid/NAME.yaml``) plus overrides
(e.g. ``seed=1``). A run's checkpoint is ``checkpoints/camvid/NAME.pt`` (committed, half
precision) or ``runs/camvid/NAME/last.pt`` (trained here); ``--train`` trains the runs that have
neither and no results in the JSON, one after the other (``segblocks train``, ~15-25 min each
on a 2-core CPU), and skips the others. The checkpoints of the ablations, of the second seeds
and of the heuristic policies (``static_full``'s weights again) are not shipped (the repository
keeps its checkpoint folder under 100 MiB); their results stay in the JSON. Every model is
evaluated on the 101 ``val`` frames in float32 (mIoU, GMACs with the policy, % HR blocks, % of
the pixels of thin classes in HR blocks; block models also at exactly 40 % HR blocks, their
policy's top-ranked ones, so that ablations whose policies threshold to different shares compare
at equal cost); results are kept in the JSON and reused while the checkpoint is unchanged (its
size and modification time).

Latency (``--latency``, in one quiet run at the end; never while something trains):
``benchmarks/camvid_latency.py`` times every model of the tables in its fast eager form
(float32 and bfloat16, 480x360 frames, medians over interleaved rounds) and the medians become
the tables' ms columns.

Tables (:data:`TABLES`), as in the paper: controls and noise (mean and spread over seeds; a
difference counts only when it exceeds the spread), BlockPad (Table 9), block size (Table 8),
policy, and the long schedule's main table. ``--tables`` restricts the training, evaluation
and timing to some tables (``--tables long --latency`` times the long table's models side by
side in one run); every table is still written, the others from the results kept in the JSON.
Without the dataset the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "segblocks" / "configs" / "camvid"
#: every block model is also evaluated at exactly this share of HR blocks (its policy's
#: top-ranked blocks per image), so that ablations compare at equal cost
BUDGET = 0.4
#: CamVid classes thinner than a 32-px block in most frames (paper Table 2's "small" classes)
THIN = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")


@dataclass(frozen=True)
class Run:
    """A trained model: ``segblocks train --config CONFIG.yaml *overrides``."""

    name: str
    config: str
    label: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


RUNS = {
    r.name: r
    for r in (
        Run("static_full", "static_full", "static 1.0x (30 epochs)"),
        Run("static_full_ft", "static_full_ft", "static 1.0x +6 epochs, seed 0"),
        Run("static_full_ft_seed1", "static_full_ft", "static 1.0x +6 epochs, seed 1", ("seed=1",)),
        Run("static_08", "static_08", "static 0.8x, seed 0"),
        Run("static_08_seed1", "static_08", "static 0.8x, seed 1", ("seed=1",)),
        Run("static_06", "static_06", "static 0.6x"),
        Run("segblocks_tau04", "segblocks_tau04", "SegBlocks tau 0.4, seed 0"),
        Run("segblocks_tau04_seed1", "segblocks_tau04", "SegBlocks tau 0.4, seed 1", ("seed=1",)),
        Run("segblocks_tau02", "segblocks_tau02", "SegBlocks tau 0.2"),
        Run("heuristic_tau04", "heuristic_tau04", "heuristic tau 0.4"),
        Run("heuristic_tau02", "heuristic_tau02", "heuristic tau 0.2"),
        Run("ablation_pad_strided", "ablation_pad_strided", "BlockPad strided"),
        Run("ablation_pad_zero", "ablation_pad_zero", "BlockPad zero"),
        Run("ablation_block64", "ablation_block64", "block 64"),
        Run("ablation_block128", "ablation_block128", "block 128"),
        Run("ablation_width64", "ablation_width64", "policy width 64"),
        Run("ablation_random_tau04", "ablation_random_tau04", "random policy tau 0.4"),
    )
}

#: the longer schedule (issue 19, items 5-6): every model warm-starts from ``static_full`` (30
#: epochs from the ImageNet-initialised backbone) and trains 78 more epochs, validated every 6;
#: the training curves are plotted from their ``log.csv`` against the epochs since ImageNet
LONG = {
    "long_static_full": "static 1.0x",
    "long_static_08": "static 0.8x",
    "long_static_06": "static 0.6x",
    "long_segblocks_tau04": "SegBlocks tau 0.4",
    "long_segblocks_tau02": "SegBlocks tau 0.2",
}
#: epochs of the common warm start (``static_full``) before the long runs' own epochs
WARM_START_EPOCHS = 30
#: the long run whose model the warm start is (its curve starts there)
SAME_AS_START = "long_static_full"
RUNS.update((name, Run(name, name, f"{label}, 30 + 78 epochs")) for name, label in LONG.items())
#: the heuristic policy on the long static 1.0x network (no training: ``epochs: 0``)
LONG_HEURISTIC = {"long_heuristic_tau04": "0.4", "long_heuristic_tau02": "0.2"}
RUNS.update(
    (name, Run(name, name, f"heuristic tau {tau} on static 1.0x (30 + 78)"))
    for name, tau in LONG_HEURISTIC.items()
)
#: long run -> its second seed (``seed=1``): the model that matches static 0.8x in accuracy
LONG_SEEDS = {"long_segblocks_tau02": "long_segblocks_tau02_seed1"}
RUNS.update(
    (seed1, Run(seed1, name, f"{LONG[name]}, 30 + 78 epochs, seed 1", ("seed=1",)))
    for name, seed1 in LONG_SEEDS.items()
)
#: the block-size ablation's CPU choice (64) on the long static 1.0x network, heuristic policy
LONG_BLOCK64 = {f"long_heuristic_tau0{t}_block64": f"0.{t}" for t in (4, 3, 2)}
RUNS.update(
    (name, Run(name, name, f"heuristic tau {tau}, block 64, on static 1.0x (30 + 78)"))
    for name, tau in LONG_BLOCK64.items()
)

#: table -> rows; a row is (label, [runs]) and reports the mean (and spread) of its runs
TABLES = {
    "main": [
        ("static 1.0x (30 epochs)", ["static_full"]),
        ("static 0.8x (30 + 6)", ["static_08", "static_08_seed1"]),
        ("static 0.6x (30 + 6)", ["static_06"]),
        ("SegBlocks tau 0.4 (30 + 6)", ["segblocks_tau04", "segblocks_tau04_seed1"]),
        ("SegBlocks tau 0.2 (30 + 6)", ["segblocks_tau02"]),
    ],
    "long": [
        (f"{label} (30 + 78)", [name] + ([LONG_SEEDS[name]] if name in LONG_SEEDS else []))
        for name, label in LONG.items()
    ]
    + [(RUNS[name].label, [name]) for name in LONG_HEURISTIC],
    "long_block64": [
        ("static 0.8x (30 + 78)", ["long_static_08"]),
        ("heuristic tau 0.4, block 32", ["long_heuristic_tau04"]),
        ("heuristic tau 0.2, block 32", ["long_heuristic_tau02"]),
    ]
    + [(f"heuristic tau {tau}, block 64", [name]) for name, tau in LONG_BLOCK64.items()],
    "controls": [
        ("static 1.0x (30 epochs, the common warm start)", ["static_full"]),
        ("static 1.0x, +6 epochs (control)", ["static_full_ft", "static_full_ft_seed1"]),
        ("static 0.8x, +6 epochs", ["static_08", "static_08_seed1"]),
        ("SegBlocks tau 0.4, +6 epochs", ["segblocks_tau04", "segblocks_tau04_seed1"]),
    ],
    "blockpad": [
        ("avg (paper default)", ["segblocks_tau04", "segblocks_tau04_seed1"]),
        ("strided", ["ablation_pad_strided"]),
        ("zero (no BlockPad)", ["ablation_pad_zero"]),
    ],
    "block_size": [
        ("32 (12x15 grid)", ["segblocks_tau04", "segblocks_tau04_seed1"]),
        ("64 (6x8 grid, frame padded to 384x512)", ["ablation_block64"]),
        ("128 (3x4 grid, frame padded to 384x512)", ["ablation_block128"]),
    ],
    "policy": [
        ("learned, width 32", ["segblocks_tau04", "segblocks_tau04_seed1"]),
        ("learned, width 64 (paper)", ["ablation_width64"]),
        ("random, trained at tau 0.4", ["ablation_random_tau04"]),
        ("heuristic tau 0.4 (on static_full)", ["heuristic_tau04"]),
    ],
}
TITLES = {
    "main": "Main table, issue 8 schedule (30 epochs + 6 for the derived models)",
    "long": "Main table, long schedule (30 + 78 epochs for every model, the policy learned "
    "over all 78)",
    "long_block64": "Block 64 on the long static 1.0x network (heuristic policy, no training; "
    "the frame padded to 384x512)",
    "controls": "Controls and noise (tau 0.4 and the static networks, two seeds)",
    "blockpad": "BlockPad (paper Table 9), SegBlocks tau 0.4",
    "block_size": "Block size (paper Table 8), SegBlocks tau 0.4",
    "policy": "Policy at tau 0.4",
}


def checkpoint(name: str) -> Path | None:
    """The committed checkpoint of a run, else the ``last.pt`` of its finished training run
    (``metrics.json`` written; a run still training is not evaluated)."""
    shipped = ROOT / "checkpoints" / "camvid" / f"{name}.pt"
    if shipped.is_file():
        return shipped
    run = ROOT / "runs" / "camvid" / name
    if (run / "last.pt").is_file() and (run / "metrics.json").is_file():
        return run / "last.pt"
    return None


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


def train_missing(names: list[str], measured: dict, log) -> None:
    """``segblocks train`` for every run without a checkpoint or measured results (the JSON
    keeps the results of runs whose checkpoints are not shipped), one after the other."""
    for name in names:
        if checkpoint(name) is not None or name in measured:
            log(f"  {name}: checkpoint or results exist, not trained")
            continue
        run = RUNS[name]
        out = ROOT / "runs" / "camvid" / name
        cmd = [
            sys.executable,
            "-m",
            "segblocks",
            "train",
            "--config",
            str(CONFIGS / f"{run.config}.yaml"),
            f"out_dir={out}",
            *run.overrides,
        ]
        if (out / "last.pt").exists() or out.exists() and any(out.iterdir()):
            cmd.append("resume=true")  # an interrupted run continues
        log(f"  {name}: training ({' '.join(cmd[3:])})")
        t0 = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        log(f"  {name}: done in {(time.time() - t0) / 60:.0f} min")


def evaluate_runs(names: list[str], data_root: str, cache: dict, log) -> dict:
    """float32 ``val`` results of every run with a checkpoint (reused from ``cache`` while
    the checkpoint is unchanged)."""
    import torch

    from segblocks.data import CamVid
    from segblocks.data.transforms import Normalize
    from segblocks.evaluation import evaluate
    from segblocks.models.segblocks_model import SegBlocksModel

    val = CamVid(data_root, split="val")
    out = {}
    for name in names:
        path = checkpoint(name)
        old = cache.get(name)
        if old and "budget_miou" not in old and old.get("hr_percent", 100.0) < 100.0:
            old = None  # measured before the budget column existed
        if path is None:
            if old:  # measured when its checkpoint existed (ablations are not shipped)
                out[name] = old
            else:
                log(f"  {name}: no checkpoint (train it with --train)")
            continue
        if old and old.get("stamp") == _stamp(path):
            out[name] = old
            continue
        t0 = time.time()
        model = SegBlocksModel.from_checkpoint(path).float().eval()
        norm = Normalize(model.net.input_mean, model.net.input_std)
        r = evaluate(model, val, normalize=norm, fps=False, progress=False, dtype=torch.float32)
        hr = dict(zip(r.class_names, r.class_hr_percent, strict=True))
        out[name] = {
            "checkpoint": str(path.relative_to(ROOT)),
            "stamp": _stamp(path),
            "miou": r.miou,
            "iou": dict(zip(r.class_names, r.iou, strict=True)),
            "gmacs": r.gmacs,
            "gmacs_policy": r.gmacs_policy,
            "hr_percent": 100 * r.mean_hr_fraction,
            "class_hr_percent": hr,
            "thin_hr_percent": {c: hr[c] for c in THIN},
            "block_size": model.block_size,
        }
        if not model.dense:  # the same models at exactly BUDGET of the blocks: equal cost
            b = evaluate(model, val, normalize=norm, fps=False, progress=False, budget=BUDGET)
            out[name].update(budget_miou=b.miou, budget_gmacs=b.gmacs)
        log(
            f"  {name:24s} mIoU {100 * r.miou:5.2f}  GMACs {r.gmacs:5.3f}  "
            f"HR {100 * r.mean_hr_fraction:5.1f} %  ({time.time() - t0:.0f} s)"
        )
    return out


def measure_latency(names: list[str], args, log) -> dict:
    """``benchmarks/camvid_latency.py`` over the runs' checkpoints: ``{name: {dtype: ms}}``."""
    out_json = Path(args.workdir) / "camvid_experiments_latency.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "camvid_latency.py"),
        "--data-root",
        args.data_root,
        "--no-compile",
        "--no-960",
        "--no-export",
        "--frames",
        str(args.frames),
        "--rounds",
        str(args.rounds),
        "--json",
        str(out_json),
    ]
    for name in names:
        path = checkpoint(name)
        if path is not None:
            cmd += ["--checkpoint", f"{name}={path}"]
    log("  " + " ".join(cmd[1:]))
    subprocess.run(cmd, cwd=ROOT, check=True)
    res = json.loads(out_json.read_text())
    return {"medians_ms": res["medians_ms"], "machine": res.get("machine"), "argv": cmd[1:]}


def training_curves(path: Path, prev: dict, start: dict | None, log) -> dict:
    """Val mIoU against the epochs since the ImageNet-initialised backbone of the long runs
    that have a ``log.csv`` (finished or not; ``prev``: curves of the JSON, for runs whose
    folder is gone): ``{name: [[epoch, miou], ...]}``, plotted to ``path``. The static 1.0x
    curve starts at the warm start (``start``: the results of ``static_full``, the same
    network); the others at their first validation, since ``static_full`` is not their
    model (another resolution, or no policy yet)."""
    from segblocks.evaluation.visualize import read_val_curve, save_training_curves

    curves = dict(prev)
    for name in LONG:
        log_csv = ROOT / "runs" / "camvid" / name / "log.csv"
        if log_csv.is_file():
            own = [[WARM_START_EPOCHS + e, m] for e, m in read_val_curve(log_csv)]
            first = [[WARM_START_EPOCHS, start["miou"]]] if start and name == SAME_AS_START else []
            curves[name] = first + own
    if any(len(c) > 1 for c in curves.values()):
        save_training_curves(
            path,
            {LONG[n]: curves[n] for n in LONG if n in curves},  # the table's order
            xlabel=f"epoch (from ImageNet; the first {WARM_START_EPOCHS}: static_full)",
        )
        log(f"  training curves: {path}")
    else:
        log("  no long run has validated yet (configs camvid/long_*.yaml)")
    return curves


def _agg(vals: list[float]) -> tuple[float, float]:
    """(mean, spread = max - min) of a row's runs."""
    return sum(vals) / len(vals), (max(vals) - min(vals)) if len(vals) > 1 else 0.0


def row_stats(runs: list[str], results: dict, latency: dict) -> dict | None:
    got = [results[n] for n in runs if n in results]
    if not got:
        return None
    miou, spread = _agg([100 * g["miou"] for g in got])
    lat = {}
    for dt in ("float32", "bfloat16"):
        ms = [latency.get(n, {}).get(dt) for n in runs if n in results]
        lat[dt] = sum(ms) / len(ms) if ms and all(m is not None for m in ms) else None
    thin = {c: sum(g["thin_hr_percent"][c] for g in got) / len(got) for c in THIN}
    at = [100 * g["budget_miou"] for g in got if "budget_miou" in g]
    budget = (sum(at) / len(at)) if at and len(at) == len(got) else None
    return {
        "runs": [n for n in runs if n in results],
        "seeds": len(got),
        "miou": miou,
        "miou_spread": spread,
        "miou_each": [100 * g["miou"] for g in got],
        "gmacs": sum(g["gmacs"] for g in got) / len(got),
        "hr_percent": sum(g["hr_percent"] for g in got) / len(got),
        "thin_hr_percent": thin,
        "budget_miou": budget,
        "ms": lat,
    }


def all_tables(results: dict, latency: dict) -> dict:
    """Every table of :data:`TABLES` as ``{key: [(label, row_stats or None), ...]}``."""
    return {
        key: [(label, row_stats(runs, results, latency)) for label, runs in rows]
        for key, rows in TABLES.items()
    }


def markdown(tables: dict, spread: float) -> str:
    def ms(v):
        return "-" if v is None else f"{v:.1f}"

    out = []
    for key, rows in tables.items():
        out += [f"### {TITLES[key]}", ""]
        head = (
            f"| | mIoU (each run) | GMACs | HR % | mIoU at {100 * BUDGET:.0f} % HR | fp32 ms "
            "| bf16 ms |"
        )
        if key == "block_size":
            head += " HR % of " + ", ".join(THIN) + " |"
        out += [head, "|---" * (head.count("|") - 1) + "|"]
        for label, s in rows:
            if s is None:
                out.append(f"| {label} | not trained | | | | | |")
                continue
            each = ", ".join(f"{v:.1f}" for v in s["miou_each"])
            m = f"{s['miou']:.1f}" + (
                f" ({each}; spread {s['miou_spread']:.1f})" if s["seeds"] > 1 else ""
            )
            at = "-" if s.get("budget_miou") is None else f"{s['budget_miou']:.1f}"
            line = (
                f"| {label} | {m} | {s['gmacs']:.2f} | {s['hr_percent']:.1f} | {at} | "
                f"{ms(s['ms']['float32'])} | {ms(s['ms']['bfloat16'])} |"
            )
            if key == "block_size":
                line += " " + " / ".join(f"{s['thin_hr_percent'][c]:.0f}" for c in THIN) + " |"
            out.append(line)
        out.append("")
    out.append(
        f"Noise: the largest spread between two seeds of one model is {spread:.1f} mIoU; "
        "a difference between rows smaller than that is not a result."
    )
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "datasets" / "camvid"))
    ap.add_argument("--train", action="store_true", help="train the runs without a checkpoint")
    ap.add_argument("--latency", action="store_true", help="time the models (a quiet machine!)")
    ap.add_argument("--frames", type=int, default=8, help="latency: val frames (default 8)")
    ap.add_argument("--rounds", type=int, default=6, help="latency: timed rounds (default 6)")
    ap.add_argument(
        "--curves",
        default=str(ROOT / "results" / "camvid_training_curves.png"),
        help="where the training curves of the long runs are drawn",
    )
    ap.add_argument(
        "--tables",
        nargs="+",
        choices=list(TABLES),
        default=list(TABLES),
        help="the tables whose runs are trained, evaluated and timed (default all); the "
        "others are written from the results kept in the JSON",
    )
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "camvid"))
    ap.add_argument("--json", default=str(ROOT / "results" / "camvid_experiments.json"))
    ap.add_argument("--markdown", default=str(ROOT / "results" / "camvid_experiments.md"))
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    if not (Path(args.data_root) / "val").is_dir():
        log(f"no CamVid under {args.data_root} (--data-root): nothing to do")
        return 0
    names = list(dict.fromkeys(n for t in args.tables for _, runs in TABLES[t] for n in runs))
    prev = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    if args.train:
        log("train:")
        train_missing(names, prev.get("runs", {}), log)
    log("evaluate (val, float32):")
    results = evaluate_runs(names, args.data_root, prev.get("runs", {}), log)
    latency = (prev.get("latency") or {}).get("medians_ms", {})
    lat_info = prev.get("latency")
    if args.latency:
        os.makedirs(args.workdir, exist_ok=True)
        log("latency (benchmarks/camvid_latency.py):")
        lat_info = measure_latency([n for n in names if checkpoint(n)], args, log)
        # runs without a checkpoint here keep the medians measured when they had one
        lat_info["medians_ms"] = latency = {**latency, **lat_info["medians_ms"]}
    log("training curves (long schedule):")
    known = {**prev.get("runs", {}), **results}
    curves = training_curves(
        Path(args.curves), prev.get("training_curves", {}), known.get("static_full"), log
    )
    # every table is written: the ones not selected from the results the JSON keeps, so that
    # e.g. ``--tables long --latency`` times the long table side by side and loses no other
    tables = all_tables(known, latency)
    spread = max(
        (s["miou_spread"] for rows in tables.values() for _, s in rows if s and s["seeds"] > 1),
        default=0.0,
    )
    result = {
        "runs": known,
        "latency": lat_info,
        "tables": {
            k: [{"label": lab, **(s or {})} for lab, s in rows] for k, rows in tables.items()
        },
        "max_seed_spread_miou": spread,
        "training_curves": curves,
        "argv": sys.argv,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.markdown).write_text(markdown(tables, spread))
    log(markdown(tables, spread))
    log(f"results: {args.json}, {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
