"""``segblocks demo``: train and compare SegBlocks on the built-in procedural street scenes.

:func:`run_demo` (the default demo). On 2 CPU cores in about 10 minutes, with no files or downloads:

1. trains a static SwiftNet-RN18 (the plain network: ``dense`` policy) and SegBlocks-RN18
   (learned policy, tau = 0.4, 64-px blocks) with the same recipe (the packaged
   ``procedural_tiny`` config: random scale 0.5-2, crop, jitter, flip, Adam + cosine, hybrid
   REINFORCE loss);
2. evaluates on held-out scenes: the static network at full resolution, the same network at
   0.625x resolution (the static reduced-resolution baseline; its training saw scales 0.5-2),
   and SegBlocks: mIoU, GMACs per image and CPU latency;
3. writes a report folder: ``report.md`` (table), ``results.json``, ``fig7_miou_vs_gmacs.png``,
   ``fig8_hr_histogram.png``, ``fig9_decisions_*.png``, and prints how often the policy picks
   blocks that contain thin objects (poles, signs, pedestrians) versus blocks that are only
   sky or road.

:func:`run_engine_demo` (``segblocks demo --engine``, under a minute): a timm ResNet-18 trunk
with random weights run densely and in blocks on a random image; prints (a) exactness (all-HR
block execution vs dense, all-LR vs dense on the 2x average-pooled image, relative error per
stage) and (b) conv GMACs, MAC ratio and latency vs dense for 20/40/60/100 % HR random masks.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["run_demo", "run_engine_demo"]

#: the packaged training config of the demo (``segblocks/configs/procedural_tiny.yaml``)
CONFIG_NAME = "procedural_tiny"
ENGINE_DEMO_FRACS = (0.2, 0.4, 0.6, 1.0)
SWEEP_BUDGETS = (0.2, 0.3, 0.4, 0.5, 0.6)  # fractions of HR blocks for the budget sweep
TRUNK_STRIDE = 32  # resnet18's last stage; LR blocks there must still be >= 1 pixel


def _overrides(out: Path, policy: str, epochs: int, seed: int) -> list[str]:
    extra = [] if policy == "learned" else ["policy_kwargs={}"]  # width etc. are policy-net only
    return [
        *extra,
        f"out_dir={out}",
        "overwrite=true",  # the report folder is regenerated on every run
        f"policy={policy}",
        f"epochs={epochs}",
        f"seed={seed}",
        "eval_at_end=false",
        "tensorboard=false",
        "log_every=8",
        "device=cpu",
    ]


def _thin_rates(model, dataset, normalize, block_size: int) -> dict:
    """HR rate of blocks with thin objects vs blocks that are only sky or road."""
    from segblocks.data import block_content

    thin_hr = thin_n = flat_hr = flat_n = 0
    with torch.inference_mode():
        for i in range(len(dataset)):
            img, lab = dataset[i]
            x, _ = normalize(img, lab)
            grid = model(x[None]).grid[0].cpu().numpy()
            c = block_content(lab, block_size)
            gh, gw = grid.shape
            thin, flat = c["thin"][:gh, :gw], c["only_sky_or_road"][:gh, :gw]
            thin_hr += int(grid[thin].sum())
            thin_n += int(thin.sum())
            flat_hr += int(grid[flat].sum())
            flat_n += int(flat.sum())
    return {
        "thin_blocks": thin_n,
        "thin_hr_rate": thin_hr / thin_n if thin_n else float("nan"),
        "sky_road_blocks": flat_n,
        "sky_road_hr_rate": flat_hr / flat_n if flat_n else float("nan"),
    }


def run_demo(
    out_dir="demo_report",
    epochs: int = 10,
    val_images: int = 16,
    seed: int = 0,
    val_size: tuple[int, int] = (256, 512),
    overrides: list[str] | None = None,
) -> dict:
    """Train, evaluate and report (see the module docstring). Returns the results dict.

    ``overrides`` are extra ``key=value`` training-config overrides (tests use tiny sizes).
    """
    from segblocks.data import PALETTE, ProceduralStreets
    from segblocks.data.transforms import Normalize
    from segblocks.evaluation import evaluate
    from segblocks.evaluation.visualize import (
        save_decision_figure,
        save_hr_histogram,
        save_miou_vs_gmacs,
    )
    from segblocks.models.inference import optimize_for_inference
    from segblocks.models.segblocks_model import SegBlocksModel
    from segblocks.training import load_config, train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    runs = {}
    for name, policy in (("static", "dense"), ("segblocks", "learned")):
        print(f"[demo] training {name} ({policy} policy, {epochs} epochs) ...", flush=True)
        ovr = _overrides(out / f"train_{name}", policy, epochs, seed) + list(overrides or [])
        cfg = load_config(CONFIG_NAME, ovr)
        runs[name] = (train(cfg), cfg)
        print(f"[demo] {name} trained ({time.time() - t0:.0f} s so far)", flush=True)

    cfg = runs["segblocks"][1]
    val = ProceduralStreets(val_images, *val_size, seed=seed, split="val")
    static = SegBlocksModel.from_checkpoint(runs["static"][0]["checkpoint"])
    seg = SegBlocksModel.from_checkpoint(runs["segblocks"][0]["checkpoint"])
    net = static.net.eval()
    norm = Normalize(net.input_mean, net.input_std)
    bs = cfg.block_size
    models = {
        "SwiftNet-RN18 (static, 256x512)": static,
        "SwiftNet-RN18 (static, 160x320)": SegBlocksModel(net, "dense", bs, scale=0.625).eval(),
        "SegBlocks-RN18 (learned, tau 0.4)": seg,
    }
    # Every model in the fast inference form (BN folded, activations fused, channels-last),
    # as segblocks eval / infer / bench run them: the latencies compare like with like.
    models = {
        name: optimize_for_inference(m, example_size=tuple(val_size)) for name, m in models.items()
    }
    seg = models["SegBlocks-RN18 (learned, tau 0.4)"]
    results = {}
    for name, model in models.items():
        print(f"[demo] evaluating {name} ...", flush=True)
        r = evaluate(model, val, normalize=norm, progress=False)
        results[name] = r
    thin = _thin_rates(seg, val, norm, cfg.block_size)

    rows = []
    for name, r in results.items():
        latency = 1000.0 / r.fps if r.fps else float("nan")
        rows.append(dict(name=name, miou=r.miou, gmacs=r.gmacs, latency_ms=latency))
    # One trained model, several budgets (issue 11): the policy's top-ranked blocks that fit.
    sweep = []
    for b in SWEEP_BUDGETS:
        print(f"[demo] evaluating SegBlocks at budget {b} of the blocks ...", flush=True)
        r = evaluate(seg, val, normalize=norm, progress=False, budget=b)
        latency = 1000.0 / r.fps if r.fps else float("nan")
        sweep.append(
            dict(
                name=f"{b:g}",
                group="SegBlocks tau 0.4, budgets",
                budget=b,
                miou=r.miou,
                gmacs=r.gmacs,
                latency_ms=latency,
            )
        )
    seg_res = results["SegBlocks-RN18 (learned, tau 0.4)"]
    save_miou_vs_gmacs(out / "fig7_miou_vs_gmacs.png", [*rows, *sweep])
    save_hr_histogram(out / "fig8_hr_histogram.png", seg_res.hr_fractions)
    with torch.inference_mode():
        for i in range(2):
            img, lab = val[i]
            o = seg(norm(img, lab)[0][None])
            save_decision_figure(
                out / f"fig9_decisions_{i}.png", img, o.logits[0].argmax(0), o.grid[0], PALETTE
            )

    lines = [
        "# SegBlocks demo on procedural street scenes",
        "",
        f"Trained {epochs} epochs (config {CONFIG_NAME}.yaml: 64 scenes, batch 4, 256x256 crops) "
        f"per model; evaluated on {val_images} held-out {val_size[0]}x{val_size[1]} scenes; CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; total "
        f"{time.time() - t0:.0f} s. Reproduce: `segblocks demo`.",
        "",
        "| model | mIoU | GMACs / image | CPU latency (ms) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['miou'] * 100:.1f} | {r['gmacs']:.2f} | {r['latency_ms']:.0f} |"
        )
    lines += [
        "",
        "The same SegBlocks model at inference budgets (top-ranked blocks, fraction of blocks):",
        "",
        "| budget | mIoU | GMACs / image | CPU latency (ms) |",
        "|---|---|---|---|",
    ]
    for r in sweep:
        lines.append(
            f"| {r['budget']:g} | {r['miou'] * 100:.1f} | {r['gmacs']:.2f} | "
            f"{r['latency_ms']:.0f} |"
        )
    lines += [
        "",
        f"SegBlocks HR fraction on the held-out scenes: {seg_res.mean_hr_fraction * 100:.1f} %.",
        f"HR rate of blocks containing thin objects (poles, signs, pedestrians): "
        f"{thin['thin_hr_rate'] * 100:.1f} % of {thin['thin_blocks']} blocks; of blocks that "
        f"are only sky or road: {thin['sky_road_hr_rate'] * 100:.1f} % of "
        f"{thin['sky_road_blocks']} blocks.",
        "",
        "Figures: fig7_miou_vs_gmacs.png, fig8_hr_histogram.png, fig9_decisions_*.png.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    payload = {
        "rows": rows,
        "budget_sweep": sweep,
        "thin_objects": thin,
        "segblocks": seg_res.to_dict(),
        "seconds": time.time() - t0,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    print("\n".join(lines))
    print(f"\nreport written to {out}/")
    return payload


# ---------------------------------------------------------------------------- block engine
def _rel_err(a, b) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_engine_demo(
    size: tuple[int, int] = (512, 1024), block_size: int = 128, seed: int = 0, runs: int = 3
) -> dict:
    """The block-engine check (see the module docstring); prints its report.

    Args:
        size: input ``(H, W)``, multiples of ``block_size``.
        block_size: block side, a multiple of 64 (LR blocks keep a pixel at stride 32).
        seed: seed of the weights, the image and the masks.
        runs: timed runs per row (medians, after one warm-up).

    Returns:
        ``{"worst_rel_err", "dense_macs", "rows": [{hr, n_hr, macs, dense_ms, block_ms}]}``.
        Raises ``ValueError`` for a block size or image size that does not fit.
    """
    import timm

    from segblocks.blocks import MarginProfile, block_combine, block_sample
    from segblocks.blocks.stats import BlockStats
    from segblocks.measuring import count_macs_dense
    from segblocks.policies.masks import random_mask

    try:
        from segblocks.blocks.fuse import fold_batchnorm
    except ImportError:
        fold_batchnorm = None

    H, W = size
    bs = block_size
    if bs % (2 * TRUNK_STRIDE):
        raise ValueError(
            f"--block-size {bs} must be a multiple of {2 * TRUNK_STRIDE}: ResNet-18 downsamples "
            f"by {TRUNK_STRIDE}, and low-res blocks need at least one pixel at the last stage"
        )
    if H % bs or W % bs:
        raise ValueError(f"--size {H}x{W} is not a multiple of the block size {bs}")
    gh, gw = H // bs, W // bs
    G = gh * gw

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

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
        f"{'yes' if folded else 'no'}); input 1x3x{H}x{W} (seed {seed}); block {bs} "
        f"(grid {gh}x{gw} = {G} blocks); torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), float32, channels_last, inference_mode"
    )

    with torch.inference_mode():
        dense_macs = count_macs_dense(model, x).total  # conv MACs (the trunk has no linear)
        dense = model(x)

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
            mask = random_mask(1, (gh, gw), n_hr, generator=gen)
            t0 = time.perf_counter()
            block_combine(model(block_sample(x, mask, bs, profile=prof))[-1])
            return time.perf_counter() - t0

        dense_run()  # warm-up
        print(f"\n(b) conv MACs and latency (median of {runs} runs after 1 warm-up; block latency")
        print("    = block_sample + trunk + block_combine of the last stage; new mask per run;")
        print("    dense and block runs alternate, each row has its own dense median)")
        print(f"  dense: {dense_macs / 1e9:.2f} GMACs")
        print(
            f"  {'HR %':>5} {'#HR':>4} {'GMACs':>7} {'MAC ratio':>9} {'dense ms':>9} "
            f"{'block ms':>9} {'speedup':>8} {'theory':>7}"
        )
        rows = []
        for f in ENGINE_DEMO_FRACS:
            n_hr = round(f * G)
            with BlockStats() as st:  # also the warm-up run: learns the margin profile
                block_run(n_hr)
            macs = st.macs["hr"] + st.macs["lr"]
            dense_t, block_t = [], []
            for _ in range(runs):
                dense_t.append(dense_run())
                block_t.append(block_run(n_hr))
            d, t = statistics.median(dense_t), statistics.median(block_t)
            rows.append(dict(hr=f, n_hr=n_hr, macs=macs, dense_ms=d * 1e3, block_ms=t * 1e3))
            print(
                f"  {f * 100:5.0f} {n_hr:4d} {macs / 1e9:7.2f} {macs / dense_macs:9.3f} "
                f"{d * 1e3:9.1f} {t * 1e3:9.1f} {d / t:8.3f} {dense_macs / macs:7.3f}"
            )
        print(
            "  (MAC ratio = block / dense conv MACs; speedup = dense ms / block ms; "
            "theory = 1 / MAC ratio)"
        )
    return {"worst_rel_err": worst, "dense_macs": dense_macs, "rows": rows}
