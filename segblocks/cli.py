"""``segblocks`` command-line interface.

Subcommands:
    demo    block-engine demonstration on a random-weight timm ResNet-18 trunk (offline):
            exactness of all-HR / all-LR block execution, conv MACs and latency vs dense.
    macs    exact per-layer MACs, dense and in block execution (segblocks.engine.macs).
    bench   latency and MACs of a SegBlocks model vs its dense network.
    train   joint training of network and policy from a YAML config.
    eval    mIoU, GMACs, FPS, memory, per-class HR %, HR histogram.
    infer   coloured segmentation and decision overlay for images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from segblocks.engine.macs import parse_size as _parse_size


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


def cmd_demo_main(args) -> int:
    if args.engine:
        return cmd_demo(args)
    import torch

    from segblocks.engine.demo import run_demo

    torch.set_num_threads(args.threads)
    run_demo(args.out, epochs=args.epochs, seed=args.seed)
    return 0


# ---------------------------------------------------------------------------- train / eval / infer
def _fail(cmd: str, e: Exception) -> int:
    print(f"segblocks {cmd}: error: {e}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    from segblocks.engine.config import load_config
    from segblocks.engine.trainer import train

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        return _fail("train", e)
    res = train(cfg)
    if res.get("val"):
        v = res["val"]
        print(f"val mIoU {v['miou']:.4f}  HR fraction {v['hr_fraction']:.3f}")
    print(f"checkpoint: {res['checkpoint']}  log: {res['log_csv']}")
    return 0


def _load_for_eval(args):
    """SegBlocksModel from a trainer checkpoint, or a fresh model of the registry."""
    from segblocks.models import create_model
    from segblocks.models.segblocks_model import SegBlocksModel

    if args.checkpoint:
        from segblocks.engine.trainer import load_segblocks

        model = load_segblocks(args.checkpoint)
        if args.policy:  # override the trained policy (e.g. all_hr for the static baseline)
            kw = {"tau": args.hr_fraction} if args.policy in ("random", "heuristic") else {}
            model = SegBlocksModel(model.net, args.policy, model.block_size, **kw)
        return model.eval()
    net = create_model(args.model, num_classes=args.num_classes)
    if args.policy == "dense":
        return net.eval()
    policy = args.policy or "all_hr"
    kw = {"tau": args.hr_fraction} if policy in ("random", "heuristic") else {}
    return SegBlocksModel(net, policy, args.block_size, **kw).eval()


def _eval_dataset(args):
    from segblocks.data import CamVid, Cityscapes, MapillaryVistas, ProceduralStreets

    if args.dataset == "procedural":
        h, w = _parse_size(args.size)
        return ProceduralStreets(args.max_images or 16, h, w, seed=args.seed, split=args.split)
    if not args.data_root:
        raise ValueError(f"--dataset {args.dataset} needs --data-root")
    cls = {"camvid": CamVid, "cityscapes": Cityscapes, "mapillary": MapillaryVistas}
    return cls[args.dataset](args.data_root, split=args.split)


def cmd_eval(args) -> int:
    from segblocks.data.transforms import Normalize
    from segblocks.engine.evaluate import evaluate

    try:
        model = _load_for_eval(args)
        ds = _eval_dataset(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        return _fail("eval", e)
    mean = getattr(getattr(model, "net", model), "input_mean", None)
    std = getattr(getattr(model, "net", model), "input_std", None)
    res = evaluate(
        model,
        ds,
        device=args.device,
        normalize=Normalize(mean, std) if mean else Normalize(),
        max_images=args.max_images,
        fps=not args.no_fps,
    )
    print(res.table())
    if args.json:
        res.save_json(args.json)
        print(f"results: {args.json}")
    if args.figures:
        from pathlib import Path

        from segblocks.engine.visualize import save_hr_histogram

        Path(args.figures).mkdir(parents=True, exist_ok=True)
        save_hr_histogram(Path(args.figures) / "hr_histogram.png", res.hr_fractions)
        print(f"figures: {args.figures}")
    return 0


def cmd_infer(args) -> int:
    from segblocks.data import PALETTE
    from segblocks.data.transforms import Normalize
    from segblocks.engine.infer import infer

    try:
        model = _load_for_eval(args)
        net = getattr(model, "net", model)
        mean, std = getattr(net, "input_mean", None), getattr(net, "input_std", None)
        norm = Normalize(mean, std) if mean else Normalize()
        outs = infer(
            model,
            args.input,
            args.out_dir,
            normalize=norm,
            palette=PALETTE,
            skip_bad=args.skip_bad,
            device=args.device,
        )
    except (ValueError, FileNotFoundError) as e:
        return _fail("infer", e)
    print(f"wrote {len(outs)} segmentation(s) and decision overlay(s) to {args.out_dir}")
    return 0


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="trainer checkpoint (segblocks train writes last.pt)")
    p.add_argument("--model", default="swiftnet_rn18", help="registry model without checkpoint")
    p.add_argument("--num-classes", type=int, default=9, help="classes without checkpoint (9)")
    p.add_argument(
        "--policy",
        choices=["dense", "all_hr", "all_lr", "random", "heuristic", "learned"],
        help="block policy (default: the checkpoint's; all_hr without checkpoint); 'dense' runs "
        "the plain SwiftNet",
    )
    p.add_argument("--hr-fraction", type=float, default=0.4, help="tau for random/heuristic")
    p.add_argument("--block-size", type=int, default=128, help="block side without checkpoint")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="segblocks",
        description="SegBlocks: block-based dynamic resolution for segmentation CNNs.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="train and compare SegBlocks on built-in procedural scenes (~10 min on 2 cores)",
        description=(
            "Default: train a static SwiftNet-RN18 and SegBlocks-RN18 (learned policy, tau 0.4) "
            "on the built-in procedural street scenes, evaluate them and a static reduced-"
            "resolution SwiftNet, and write a report folder (table, Figs. 7-9, thin-object HR "
            "rates). With --engine: run a timm ResNet-18 trunk (random weights, no download) "
            "densely and in blocks on a "
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
    demo.add_argument(
        "--engine",
        action="store_true",
        help="only the block-engine demonstration (exactness, MACs, latency; < 1 min)",
    )
    demo.add_argument("--out", default="demo_report", help="report folder (default demo_report)")
    demo.add_argument(
        "--epochs", type=_positive, default=10, help="training epochs per model (default 10)"
    )
    demo.set_defaults(func=cmd_demo_main)

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

    tr = sub.add_parser(
        "train",
        help="train SegBlocks (network + policy) from a YAML config",
        description=(
            "Train the segmentation network and the policy jointly (hybrid REINFORCE loss, "
            "paper Eq. 13) from a YAML config with key=value overrides, e.g. "
            "'segblocks train --config configs/procedural_tiny.yaml epochs=2 tau=0.3'. "
            "Multi-process: torchrun --nproc_per_node=N -m segblocks train --config ... ; "
            "resume with resume=true."
        ),
    )
    tr.add_argument("--config", required=True, help="YAML file, e.g. configs/procedural_tiny.yaml")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser(
        "eval",
        help="mIoU, GMACs, FPS, memory, per-class HR %% and HR histogram of a model",
        description=(
            "Evaluate a trained checkpoint (or a fresh registry model) on a dataset: mIoU and "
            "per-class IoU, average GMACs per image, FPS (warm-up on the first half), peak "
            "memory, per-class %% of pixels processed at high resolution and the histogram of "
            "HR blocks per image. Prints a table; --json writes all figures."
        ),
    )
    _model_arguments(ev)
    ev.add_argument(
        "--dataset",
        default="procedural",
        choices=["procedural", "camvid", "cityscapes", "mapillary"],
    )
    ev.add_argument("--data-root", help="dataset folder (not needed for procedural)")
    ev.add_argument("--split", default="val", help="split (default val)")
    ev.add_argument("--size", default="256x512", help="procedural image size HxW")
    ev.add_argument("--max-images", type=int, help="evaluate at most N images")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-fps", action="store_true", help="skip the FPS measurement")
    ev.add_argument("--json", help="write the results to this JSON file")
    ev.add_argument("--figures", help="write the HR histogram PNG into this folder")
    ev.set_defaults(func=cmd_eval)

    inf = sub.add_parser(
        "infer",
        help="segment an image or a folder: coloured segmentation + HR decision overlay",
        description="Write <name>_seg.png and <name>_hr.png for each image (png/jpg).",
    )
    inf.add_argument("input", help="an image file or a folder of images")
    inf.add_argument("out_dir", help="output folder")
    _model_arguments(inf)
    inf.add_argument("--skip-bad", action="store_true", help="warn and skip unreadable images")
    inf.set_defaults(func=cmd_infer)
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
