"""``segblocks`` command-line interface.

Subcommands:
    demo    block-engine demonstration on a random-weight timm ResNet-18 trunk (offline):
            exactness of all-HR / all-LR block execution, conv MACs and latency vs dense.
    macs    exact per-layer MACs, dense and in block execution (segblocks.engine.macs).
    bench   latency and MACs of a SegBlocks model vs its dense network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 512x1024") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


# ---------------------------------------------------------------------------- demo
DEMO_FRACS = (0.2, 0.4, 0.6, 1.0)
TRUNK_STRIDE = 32  # resnet18's last stage; LR blocks there must still be >= 1 pixel


def _rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _random_mask(gen, gh: int, gw: int, n_hr: int):
    """``[1, gh, gw]`` bool mask with exactly ``n_hr`` HR cells at random positions."""
    import torch

    flat = torch.zeros(gh * gw, dtype=torch.bool)
    flat[torch.randperm(gh * gw, generator=gen)[:n_hr]] = True
    return flat.view(1, gh, gw)


def cmd_demo(args) -> int:
    import timm
    import torch
    import torch.nn.functional as F
    from torch import nn

    from segblocks.blocks import MarginProfile, block_combine, block_sample
    from segblocks.blocks.stats import BlockStats

    try:
        from segblocks.blocks.fuse import fold_batchnorm
    except ImportError:
        fold_batchnorm = None

    H, W = args.size
    bs = args.block_size
    if bs % (2 * TRUNK_STRIDE):
        print(
            f"segblocks demo: error: --block-size {bs} must be a multiple of {2 * TRUNK_STRIDE}: "
            f"ResNet-18 downsamples by {TRUNK_STRIDE}, and low-res blocks need at least one pixel "
            "at the last stage",
            file=sys.stderr,
        )
        return 2
    if H % bs or W % bs:
        print(
            f"segblocks demo: error: --size {H}x{W} is not a multiple of the block size {bs}",
            file=sys.stderr,
        )
        return 2
    gh, gw = H // bs, W // bs
    G = gh * gw

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    model = timm.create_model("resnet18", features_only=True, pretrained=False).eval()
    folded = fold_batchnorm is not None
    if folded:
        model = fold_batchnorm(model) or model
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
    prof = MarginProfile()

    print("SegBlocks block-engine demo")
    print(
        f"model: timm resnet18 trunk (features_only, random weights, eval, BN folded: "
        f"{'yes' if folded else 'no'}); input 1x3x{H}x{W} (seed {args.seed}); block {bs} "
        f"(grid {gh}x{gw} = {G} blocks); torch {torch.__version__}, {args.threads} thread(s), "
        "float32, channels_last, inference_mode"
    )

    with torch.inference_mode():
        # conv MACs of the dense network
        dense_macs = [0]

        def hook(mod, inp, out):
            n, co, ho, wo = out.shape
            k = mod.weight.shape[1] * mod.weight.shape[2] * mod.weight.shape[3]
            dense_macs[0] += n * ho * wo * co * k

        hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
        try:
            dense = model(x)
        finally:
            for h in hooks:
                h.remove()
        dense_macs = dense_macs[0]

        # (a) exactness
        print("\n(a) exactness (relative L2 error per stage)")
        all_hr = model(block_sample(x, torch.ones(1, gh, gw, dtype=torch.bool), bs, profile=prof))
        xp = F.avg_pool2d(x, 2)
        dense_lr = model(xp)
        all_lr = model(block_sample(x, torch.zeros(1, gh, gw, dtype=torch.bool), bs, profile=prof))
        print(
            f"  {'stage':>5} {'stride':>6} {'channels':>8}  {'all-HR vs dense':>16}  "
            f"{'all-LR vs dense(pool2(x))':>26}"
        )
        worst = 0.0
        for i, (d, bh, dl, bl) in enumerate(zip(dense, all_hr, dense_lr, all_lr, strict=True)):
            e_hr = _rel_err(block_combine(bh), d)
            # LR blocks hold the 2x pooled map; pooling the nearest-upsampled combine undoes it
            e_lr = _rel_err(F.avg_pool2d(block_combine(bl), 2), dl)
            worst = max(worst, e_hr, e_lr)
            print(f"  {i:5d} {H // d.shape[-2]:6d} {d.shape[1]:8d}  {e_hr:16.2e}  {e_lr:26.2e}")
        print(
            f"  worst: {worst:.2e} ({'exact to float32 rounding' if worst < 1e-4 else 'MISMATCH'})"
        )
        del all_hr, dense_lr, all_lr, dense

        # (b) MACs and latency
        def dense_run():
            t0 = time.perf_counter()
            model(x)
            return time.perf_counter() - t0

        def block_run(n_hr):
            mask = _random_mask(gen, gh, gw, n_hr)
            t0 = time.perf_counter()
            block_combine(model(block_sample(x, mask, bs, profile=prof))[-1])
            return time.perf_counter() - t0

        runs = 3
        dense_run()  # warm-up
        print(f"\n(b) conv MACs and latency (median of {runs} runs after 1 warm-up; block latency")
        print("    = block_sample + trunk + block_combine of the last stage; new mask per run;")
        print("    dense and block runs alternate, each row has its own dense median)")
        print(f"  dense: {dense_macs / 1e9:.2f} GMACs")
        print(
            f"  {'HR %':>5} {'#HR':>4} {'GMACs':>7} {'MAC ratio':>9} {'dense ms':>9} "
            f"{'block ms':>9} {'speedup':>8} {'theory':>7}"
        )
        for f in DEMO_FRACS:
            n_hr = round(f * G)
            with BlockStats() as st:  # also the warm-up run: learns the margin profile
                block_run(n_hr)
            macs = st.macs["hr"] + st.macs["lr"]
            dense_t, block_t = [], []
            for _ in range(runs):
                dense_t.append(dense_run())
                block_t.append(block_run(n_hr))
            d, t = statistics.median(dense_t), statistics.median(block_t)
            print(
                f"  {f * 100:5.0f} {n_hr:4d} {macs / 1e9:7.2f} {macs / dense_macs:9.3f} "
                f"{d * 1e3:9.1f} {t * 1e3:9.1f} {d / t:8.3f} {dense_macs / macs:7.3f}"
            )
        print(
            "  (MAC ratio = block / dense conv MACs; speedup = dense ms / block ms; "
            "theory = 1 / MAC ratio)"
        )
    return 0


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="segblocks",
        description="SegBlocks: block-based dynamic resolution for segmentation CNNs.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="block-engine demonstration on a random-weight ResNet-18 (offline, < 1 min)",
        description=(
            "Run a timm ResNet-18 trunk (random weights, no download) densely and in blocks on a "
            "random image. Prints (a) exactness: all-HR block execution vs dense and all-LR vs "
            "dense on the 2x average-pooled image, relative error per stage; (b) for "
            "20/40/60/100% HR random masks: conv GMACs and MAC ratio vs dense, measured latency "
            "(median of 3) "
            "and speedup vs dense."
        ),
    )
    demo.add_argument(
        "--block-size",
        type=_positive,
        default=128,
        help="block side in input pixels, a multiple of 64 (default 128)",
    )
    demo.add_argument(
        "--size",
        type=_parse_size,
        default=(512, 1024),
        metavar="HxW",
        help="input image size, multiples of the block size (default 512x1024)",
    )
    demo.add_argument(
        "--threads", type=_positive, default=2, help="torch intra-op threads (default 2)"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed for image and masks (default 0)")
    demo.set_defaults(func=cmd_demo)

    from segblocks.engine.macs import add_macs_arguments, run_macs

    macs = sub.add_parser(
        "macs",
        help="exact per-layer MACs of a model, dense and in block execution",
        description=(
            "Count conv and linear multiply-accumulates per layer and per image, densely and in "
            "block execution (HR and LR blocks separately, policy net separately and in the "
            "total), and print them as a table."
        ),
    )
    add_macs_arguments(macs)
    macs.set_defaults(func=run_macs)

    from segblocks.engine.bench import add_bench_arguments, run_bench

    bench = sub.add_parser(
        "bench",
        help="latency and MACs of a SegBlocks model vs its dense network",
        description=(
            "Time the dense SwiftNet and the SegBlocks model at several HR fractions (random "
            "masks, new mask per run, interleaved runs, medians) and print GMACs, latency, "
            "measured and theoretical speedup. Fuller studies: benchmarks/*.py."
        ),
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=run_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "func", None) is None:
        ap.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
