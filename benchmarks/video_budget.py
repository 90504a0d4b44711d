#!/usr/bin/env python
"""Budgeted video inference (issue 17, item 5): how many frames of a CamVid video overrun a
millisecond budget held by ``segblocks infer VIDEO OUT --budget Xms``.

Setting: one committed CamVid checkpoint (``--model``, default ``segblocks_tau04``:
SwiftNet-EffL1, learned policy, 32-px blocks) run as ``segblocks infer`` runs a video by
default: its AOTInductor package for the frame size (``--engine compiled``; compiled once and
cached, :func:`segblocks.deploy.cache.compiled_model`), or with ``--engine eager`` the fast
eager form (:func:`segblocks.models.inference.optimize_for_inference`); float32, ``--threads``
intra-op threads (default 2), batch 1. Steps, in one run:

1. the video: ``--video PATH``, or the first ``--frames`` (default 100) CamVid ``val`` frames
   in file-name order (consecutive frames of the recorded sequences, 480x360) encoded with
   PyAV (H.264 CRF 18, else MPEG-4) at 10 fps into ``--work-dir``;
2. a latency calibration of what runs (the same engine) at the padded frame size (384x480),
   as ``segblocks calibrate`` makes it (``--counts`` HR counts, ``--runs`` timed runs each), or
   ``--calibration FILE``;
3. the budget: ``--position`` (default 0.5) of the way from the calibrated all-LR to the
   all-HR latency, or ``--budget-ms``;
4. :func:`segblocks.evaluation.video.infer_stream` on the video with that budget (what
   ``segblocks infer`` runs): overlay video, ``frames.csv`` and the per-frame latency of the
   model's forward.

JSON (``--json PATH``) keys: ``video_frames_over_budget_share`` (frames whose forward took
longer than the budget / frames) and ``video_worst_excess_ratio`` (the slowest frame's
latency / budget - 1; negative when every frame was under the budget), plus the budget, the
calibration, per-frame latencies, mean HR % and GMACs, the machine and the load of other
processes during the run. Without the dataset (and no ``--video``) the script says so and
exits 0.

Usage::

    python benchmarks/video_budget.py --json results/video_budget.json   # 100 frames, ~3 min
    python benchmarks/video_budget.py --frames 5 --quick                  # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    MALLOC_MODES,
    cpu_snapshot,
    foreign_load,
    machine_info,
    print_machine,
    print_noise,
    reexec_with_malloc,
)
from camvid import MODELS, checkpoint_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FPS = 10


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data-root",
        default=str(ROOT.parent / "shared" / "datasets" / "camvid"),
        help="CamVid folder (default ../shared/datasets/camvid next to the repository)",
    )
    ap.add_argument(
        "--checkpoints",
        default=str(ROOT / "checkpoints" / "camvid"),
        help="folder of the checkpoints (default: the committed checkpoints/camvid)",
    )
    ap.add_argument(
        "--model",
        default="segblocks_tau04",
        choices=[n for n, _, grp in MODELS if grp != "static"],
        help="a SegBlocks checkpoint (default segblocks_tau04)",
    )
    ap.add_argument("--video", help="use this video instead of making one from CamVid val")
    ap.add_argument("--frames", type=int, default=100, help="CamVid frames / max frames (100)")
    ap.add_argument("--work-dir", help="where the video and outputs go (default: a temp folder)")
    ap.add_argument("--calibration", help="a segblocks calibrate file instead of calibrating")
    ap.add_argument("--counts", type=int, help="calibration HR counts (default 6; quick 3)")
    ap.add_argument("--runs", type=int, help="calibration runs per count (default 7; quick 2)")
    ap.add_argument("--warmup", type=int, default=2, help="calibration warm-up rounds (2)")
    ap.add_argument(
        "--position",
        type=float,
        default=0.5,
        help="budget between the all-LR (0) and all-HR (1) latency (default 0.5)",
    )
    ap.add_argument("--budget-ms", type=float, help="the budget in ms (overrides --position)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke test: a short calibration")
    ap.add_argument(
        "--engine",
        choices=("compiled", "eager"),
        default="compiled",
        help="the AOTInductor package (default, as segblocks infer runs videos) or the eager model",
    )
    ap.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    ap.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="tuned",
        help="allocator (as the other benchmarks; the script restarts itself)",
    )
    args = ap.parse_args(argv)
    if args.counts is None:
        args.counts = 3 if args.quick else 6
    if args.runs is None:
        args.runs = 2 if args.quick else 7
    if args.frames < 1 or args.threads < 1 or args.counts < 2 or args.runs < 1 or args.warmup < 0:
        ap.error("--frames, --threads and --runs must be >= 1, --counts >= 2, --warmup >= 0")
    if not 0.0 <= args.position <= 1.0:
        ap.error("--position must be in [0, 1]")
    return args


def make_video(data: Path, n: int, path: Path) -> tuple[Path, int]:
    """The first ``n`` CamVid ``val`` frames (file-name order) as a video at 10 fps."""
    import av
    import numpy as np
    from PIL import Image

    from segblocks.evaluation.video import VideoWriter

    files = sorted((data / "val").glob("*.png"))[:n]
    with Image.open(files[0]) as im:
        w, h = im.size
    writer = VideoWriter(av, path, w, h, Fraction(FPS), crf=18)
    try:
        for f in files:
            with Image.open(f) as im:
                writer.write(np.asarray(im.convert("RGB").resize((w, h))))
    finally:
        writer.close()
    return path, len(files)


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    p = lambda s="": print(s, flush=True)  # noqa: E731
    try:
        import av
    except ImportError:
        p("PyAV is not installed (pip install 'segblocks[video]'): nothing measured")
        return 0
    data = Path(args.data_root)
    if args.video is None and not (data / "val").is_dir():
        p(
            f"CamVid not found at {data} (no val/ folder) and no --video: nothing measured. "
            "Give the dataset with --data-root or a video with --video."
        )
        return 0
    ckpt = checkpoint_path(Path(args.checkpoints), args.model)
    if ckpt is None:
        p(f"no checkpoint {args.model} under {args.checkpoints}: nothing measured")
        return 2

    from segblocks.cli.common import input_normalize
    from segblocks.cli.infer import model_palette
    from segblocks.evaluation.video import infer_stream
    from segblocks.measuring.calibrate import LatencyCalibration, calibrate
    from segblocks.models.inference import optimize_for_inference
    from segblocks.models.segblocks_model import SegBlocksModel

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="video_budget_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.video:
        video = Path(args.video)
        p(f"video     : {video}")
    else:
        video, n = make_video(data, args.frames, work / "camvid_val.mp4")
        p(f"video     : {video} ({n} CamVid val frames, {FPS} fps)")

    model = optimize_for_inference(SegBlocksModel.from_checkpoint(ckpt).eval(), inplace=True)
    bs = model.block_size
    with av.open(str(video)) as c:
        s = c.streams.video[0]
        H, W = s.height, s.width
    size = (-(-H // bs) * bs, -(-W // bs) * bs)
    run = model
    if args.engine == "compiled":
        from segblocks.deploy.cache import compiled_model

        run = compiled_model(
            model, ckpt, (H, W), report=lambda m: print(f"note: {m}", file=sys.stderr)
        )
    machine = machine_info()
    print_machine(p, machine)
    snap0 = cpu_snapshot()
    model_id = f"checkpoint:{ckpt.name}"  # what segblocks calibrate --checkpoint records
    if args.calibration:
        cal = LatencyCalibration.load(
            args.calibration, size=size, block_size=bs, threads=args.threads
        )
    else:
        cal = calibrate(
            run,
            model_id,
            size,
            counts=args.counts,
            runs=args.runs,
            warmup=args.warmup,
            progress=False,
        )
        cal.save(work / "calibration.json")
    model.latency_calibration = run.latency_calibration = cal
    B = (size[0] // bs) * (size[1] // bs)
    lo, hi = cal.intercept_ms, cal.intercept_ms + cal.per_block_ms * B
    budget = args.budget_ms if args.budget_ms is not None else lo + args.position * (hi - lo)
    p(
        f"calibration: {cal.intercept_ms:.1f} ms + {cal.per_block_ms:.3f} ms x HR blocks "
        f"({B} blocks at {size[0]}x{size[1]}): all-LR {lo:.1f} ms, all-HR {hi:.1f} ms; "
        f"budget {budget:.1f} ms"
    )
    palette, names, _ = model_palette(model)
    summary = infer_stream(
        model,
        video,
        work / "out",
        normalize=input_normalize(model),
        palette=palette,
        class_names=names,
        max_frames=args.frames,
        budget=f"{budget}ms",
        report=lambda m: print(f"note: {m}", file=sys.stderr),
        progress=False,
        prepare=lambda _size: run,
    )
    load = foreign_load(snap0, cpu_snapshot())
    machine["load_during_run"] = load
    for line in summary.lines():
        p(line)
    print_noise(p, load)
    p(
        "same as: segblocks calibrate --checkpoint "
        f"{shlex.quote(str(ckpt))} --size {H}x{W} --engine {args.engine} "
        f"--threads {args.threads} --out cal.json && segblocks infer {shlex.quote(str(video))} "
        f"OUT --checkpoint {shlex.quote(str(ckpt))} --engine {args.engine} --budget "
        f"{budget:.1f}ms --calibration cal.json"
    )
    res = {
        "video_frames_over_budget_share": summary.over_budget_share,
        "video_worst_excess_ratio": summary.worst_excess_ratio,
        "budget_ms": budget,
        "frames": summary.frames,
        "skipped": summary.skipped,
        "frames_over_budget": summary.over_budget,
        "mean_latency_ms": summary.mean_latency_ms,
        "latency_ms": summary.latency_ms,
        "mean_hr_percent": sum(summary.hr_percent) / summary.frames,
        "mean_gmacs": sum(summary.gmacs) / summary.frames,
        "calibration": {
            "intercept_ms": cal.intercept_ms,
            "per_block_ms": cal.per_block_ms,
            "residual_ms": cal.residual_ms,
            "points": cal.points,
            "all_lr_ms": lo,
            "all_hr_ms": hi,
        },
        "outputs": {"video": str(summary.video), "csv": str(summary.csv)},
        "machine": machine,
        "config": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model,
            "checkpoint": str(ckpt),
            "video": str(video),
            "frame_size": [H, W],
            "padded_size": list(size),
            "block_size": bs,
            "position": None if args.budget_ms is not None else args.position,
            "counts": args.counts,
            "runs": args.runs,
            "warmup": args.warmup,
            "threads": args.threads,
            "quick": args.quick,
            "engine": args.engine,
            "command": " ".join(shlex.quote(a) for a in sys.argv),
        },
    }
    p(
        json.dumps(
            {k: res[k] for k in ("video_frames_over_budget_share", "video_worst_excess_ratio")}
        )
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
