"""``segblocks bench``: latency and MACs of a SegBlocks model against its dense network.

A quick, self-contained measurement for one model and input size: the dense SwiftNet and the
SegBlocks model at a few HR fractions (random masks with exactly round(f x blocks) HR blocks,
a new mask every run), interleaved run by run so that machine noise hits both alike, medians
after warm-up. The fuller studies (block modules' time shares, static baselines, peak memory)
are ``benchmarks/block_engine.py`` and ``benchmarks/segblocks_model.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

__all__ = ["bench_model", "add_bench_arguments", "run_bench"]


def _random_mask(gen: torch.Generator, gh: int, gw: int, frac: float) -> torch.Tensor:
    n = gh * gw
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: int(frac * n + 0.5)]] = True
    return mask.view(1, gh, gw)


def bench_model(
    name: str = "swiftnet_rn18",
    size: tuple[int, int] = (1024, 2048),
    block_size: int = 128,
    fractions=(0.2, 0.4, 0.6, 1.0),
    runs: int = 5,
    warmup: int = 2,
    num_classes: int = 19,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{hr, gmacs, theory, dense_ms, block_ms, speedup, ratio}`` (first row: dense).

    CPU/GPU agnostic (runs where the default device is); float32, channels-last, BN folded
    into convs for both sides, ``torch.inference_mode``.
    """
    from segblocks.blocks import DenseFallback, block_combine
    from segblocks.blocks.fuse import fold_batchnorm
    from segblocks.engine.macs import count_macs_blocks, count_macs_dense
    from segblocks.models import create_model
    from segblocks.models.segblocks_model import SegBlocksModel

    H, W = size
    if H % block_size or W % block_size:
        raise ValueError(
            f"size {H}x{W} is not a multiple of block size {block_size}; pick e.g. "
            f"{-(-H // block_size) * block_size}x{-(-W // block_size) * block_size}"
        )
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = create_model(name, num_classes=num_classes).eval()
    net = fold_batchnorm(net, torch.randn(1, 3, 2 * block_size, 2 * block_size))
    net = net.to(memory_format=torch.channels_last)
    model = SegBlocksModel(net, "all_hr", block_size).eval()
    x = torch.randn(1, 3, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    gh, gw = H // block_size, W // block_size

    spp = DenseFallback(net.spp)

    def call(m, xb):
        return block_combine(m.decode(m.backbone(xb), spp=spp))

    dense_macs = count_macs_dense(net, x).total
    rows = [dict(hr=None, gmacs=dense_macs / 1e9, theory=1.0)]
    for f in fractions:
        mask = _random_mask(gen, gh, gw, f)
        macs = count_macs_blocks(net, x, mask=mask, block_size=block_size, call=call).total
        rows.append(dict(hr=f, gmacs=macs / 1e9, theory=dense_macs / macs))

    times = {i: [] for i in range(len(rows))}
    with torch.inference_mode():
        for r in range(warmup + runs):
            for i, row in enumerate(rows):
                if row["hr"] is None:
                    fn = lambda: net(x)  # noqa: E731
                else:
                    m = _random_mask(gen, gh, gw, row["hr"])
                    fn = lambda m=m: model(x, mask=m)  # noqa: E731
                t0 = time.perf_counter()
                fn()
                if x.is_cuda:
                    torch.cuda.synchronize()
                if r >= warmup:
                    times[i].append(time.perf_counter() - t0)
    dense_ms = statistics.median(times[0]) * 1e3
    for i, row in enumerate(rows):
        row["ms"] = statistics.median(times[i]) * 1e3
        row["speedup"] = dense_ms / row["ms"]
        row["ratio"] = row["speedup"] / row["theory"]
    return rows


def add_bench_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="swiftnet_rn18", help="registered model (default rn18)")
    ap.add_argument("--size", default="1024x2048", metavar="HxW", help="input size")
    ap.add_argument("--block-size", type=int, default=128, help="block side (default 128)")
    ap.add_argument(
        "--hr", default="0.2,0.4,0.6,1.0", help="comma-separated HR fractions (default 0.2-1.0)"
    )
    ap.add_argument("--runs", type=int, default=5, help="timed runs (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up runs (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)


def run_bench(args: argparse.Namespace) -> int:
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
        fracs = tuple(float(v) for v in args.hr.split(","))
    except ValueError:
        print(f"segblocks bench: error: bad --size {args.size!r} or --hr {args.hr!r}")
        return 2
    if any(not 0 <= f <= 1 for f in fracs) or args.runs < 1 or args.warmup < 0:
        print("segblocks bench: error: --hr values must be in [0, 1], --runs >= 1")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = bench_model(
            args.model, (h, w), args.block_size, fracs, args.runs, args.warmup, seed=args.seed
        )
    except ValueError as e:
        print(f"segblocks bench: error: {e}")
        return 2
    print(
        f"{args.model} at 1x3x{h}x{w}, block {args.block_size}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.runs} runs after {args.warmup} "
        "warm-up, dense and block runs interleaved, new random mask per run"
    )
    print(f"{'config':>10} {'GMACs':>8} {'ms':>9} {'speedup':>8} {'theory':>7} {'ratio':>6}")
    for r in rows:
        name = "dense" if r["hr"] is None else f"{r['hr'] * 100:.0f}% HR"
        print(
            f"{name:>10} {r['gmacs']:8.2f} {r['ms']:9.1f} {r['speedup']:8.3f} "
            f"{r['theory']:7.3f} {r['ratio']:6.2f}"
        )
    return 0
