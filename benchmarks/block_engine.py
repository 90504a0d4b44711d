#!/usr/bin/env python
"""Block-engine benchmark: measured vs theoretical (conv-MAC) speedup of block execution.

Two parts (select one with ``--only``):

trunk
    timm ResNet-18 trunk (``features_only``, random weights, eval) on a 1x3x1024x2048 image,
    block size 128 (an 8x16 grid). Dense latency, all-HR block latency and 20/40/60 % HR
    latency. *Block time* = ``block_sample`` + trunk + ``block_combine`` of the last stage's
    feature; *dense time* = dense trunk only. Every timed block run draws a new random mask
    with exactly ``round(frac * 128)`` HR blocks, so building the per-mask metadata (grid,
    pad plans) is part of the timing. Dense and block runs are interleaved
    (dense, block A, dense, block B, ...) so machine noise hits both alike; figures are medians.
    Theoretical speedup = dense conv MACs / block conv MACs (``BlockStats``); the share of
    sample/pad/combine comes from *separate* profiled runs with ``BlockStats`` active (its
    hooks add a little overhead), computed as block-op time / total time of that same run.

basicblock
    One timm ``BasicBlock(64, 64)`` (eval) on a 1x64x256x512 input: 50 % HR at block sizes
    4..64 (paper Fig. 13a) and block 16 at 25/50/75/100 % HR (Fig. 13b). Two block timings:
    ``full`` = block_sample + BasicBlock + block_combine (new mask inside the timing) and
    ``fwd`` = the BasicBlock forward on an already sampled block tensor (sampling done outside
    the timed region, new mask every run). The paper's Fig. 13 measures the residual block
    itself, so the headline ``basicblock_speedup_over_theory_b32`` uses ``fwd``.

Everything runs under ``torch.inference_mode()``, channels-last, with eval batch norm folded
into the convs when ``segblocks.blocks.fuse.fold_batchnorm`` exists (for the dense and the block
model alike). One ``MarginProfile`` per model is reused across runs so the engine's in-place
fast path is learned during warm-up.

``--dtype both`` (default) measures float32 and bfloat16 in the same run: for each dtype a fresh
model (same seed, so the same weights; BN folded in float32, then weights converted with
``.to(torch.bfloat16)``) and the same input converted alike; dense and block runs compare within
one dtype, and the rounds alternate between the dtypes so that load drifts hit both. The float32
figures keep their JSON keys (``trunk``, ``basicblock``, headline keys); the bfloat16 ones carry
a ``_bf16`` suffix (``trunk_bf16``, ``trunk_speedup_over_theory_40_bf16``, ...). A dtype whose
block execution raises is recorded as ``{"error": traceback}`` and the run goes on.

Usage::

    python benchmarks/block_engine.py                 # full (float32 + bfloat16, ~5 min)
    python benchmarks/block_engine.py --quick --json out.json
    python benchmarks/block_engine.py --quick --only basicblock --dtype bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import torch
from torch import nn

from segblocks.blocks import MarginProfile, block_combine, block_sample
from segblocks.blocks.macs import macs_per_output_element
from segblocks.blocks.stats import BlockStats
from segblocks.policies.masks import random_mask

try:
    from segblocks.blocks.fuse import fold_batchnorm
except ImportError:  # the fuse module is optional (added later)
    fold_batchnorm = None

TRUNK_SIZE = (1024, 2048)
TRUNK_BLOCK = 128
TRUNK_FRACS = (0.2, 0.4, 0.6)
BB_CHANNELS = 64
BB_SIZE = (256, 512)
BB_BLOCK_SIZES = (4, 8, 16, 32, 64)  # Fig. 13a, at 50 % HR
BB_FRAC_BLOCK = 16
BB_FRACS = (0.25, 0.5, 0.75, 1.0)  # Fig. 13b, at block 16


# ---------------------------------------------------------------------------- helpers
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    DTYPE_SUFFIX,
    DTYPES,
    Guard,
    add_dtype_argument,
    add_run_arguments,
    cpu_snapshot,
    foreign_load,
    machine_info,
    median,
    print_headline,
    print_machine,
    print_noise,
    reexec_with_malloc,
    rel_err,
    resolve_run_arguments,
    selected_dtypes,
)

HEADLINE = (
    "trunk_speedup_over_theory_40",
    "trunk_all_hr_overhead",
    "trunk_block_ops_share_40",
    "basicblock_speedup_over_theory_b32",
)


def dense_conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Conv2d MACs of a dense forward (``out_pixels * C_out * C_in/groups * kh * kw``)."""
    total = [0]

    def hook(mod, inp, out):
        total[0] += out.numel() * macs_per_output_element(mod)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        model(x)
    finally:
        for h in hs:
            h.remove()
    return total[0]


def prepare(model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> tuple[nn.Module, bool]:
    """Eval mode, BN folded (traced in float32 on a small ``example``), ``dtype``, channels-last.

    ``model`` must be fresh (never run in blocks): the conversion happens before any block run.
    """
    model = model.eval()
    folded = False
    if fold_batchnorm is not None:
        out = fold_batchnorm(model, example)
        model = out if out is not None else model
        folded = True
    return model.to(dtype).to(memory_format=torch.channels_last), folded


def clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------- trunk
def bench_trunk(args, gen, log, dtypes, guard) -> dict:
    """{dtype: result}; dense/block rounds alternate between the dtypes."""
    import timm

    H, W = TRUNK_SIZE
    bs = TRUNK_BLOCK
    gh, gw = H // bs, W // bs
    G = gh * gw
    x32 = torch.randn(1, 3, H, W, generator=gen)
    fracs = (1.0,) + tuple(TRUNK_FRACS)
    n_hr = {f: round(f * G) for f in fracs}

    def block_run(s, frac, mask=None):
        mask = random_mask(1, (gh, gw), n_hr[frac], generator=gen) if mask is None else mask
        # the timed region starts here: mask metadata, sample, trunk, combine
        t0 = time.perf_counter()
        xb = block_sample(s["x"], mask, bs, profile=s["prof"])
        outs = s["model"](xb)
        y = block_combine(outs[-1])
        return time.perf_counter() - t0, y

    def setup(dt):
        torch.manual_seed(args.seed)  # the same weights for every dtype
        model, folded = prepare(
            timm.create_model("resnet18", features_only=True, pretrained=False),
            torch.randn(1, 3, 128, 128),
            DTYPES[dt],
        )
        x = x32.to(DTYPES[dt]).contiguous(memory_format=torch.channels_last)
        s = {"model": model, "x": x, "prof": MarginProfile(), "folded": folded}
        with torch.inference_mode():
            s["dense_macs"] = dense_conv_macs(model, x)
            # sanity: all-HR block output equals the dense output
            d_out = model(x)
            _, y = block_run(s, 1.0, torch.ones(1, gh, gw, dtype=torch.bool))
            s["allhr_err"] = rel_err(y, d_out[-1])
        s["dense_t"] = {f: [] for f in fracs}  # dense runs paired with f
        s["block_t"] = {f: [] for f in fracs}
        s["paired"] = {f: [] for f in fracs}
        return s

    log(f"[trunk] 1x3x{H}x{W}, block {bs} (grid {gh}x{gw}), fracs {fracs}, dtypes {dtypes}")
    states = {dt: guard(f"trunk/{dt}", lambda dt=dt: setup(dt)) for dt in dtypes}

    def one_round(s, warm):
        for f in fracs:  # interleaved: dense, block f, dense, block f', ...
            td, _ = clock(lambda: s["model"](s["x"]))
            tb, _ = block_run(s, f)
            if not warm:
                s["dense_t"][f].append(td)
                s["block_t"][f].append(tb)
                s["paired"][f].append(td / tb)
        return td, tb

    def profile(s):
        # separate profiled runs (BlockStats hooks active) for MACs and op shares
        prof_res: dict[float, dict] = {}
        for f in fracs:
            shares = {k: [] for k in ("sample", "pad", "combine", "block_ops")}
            totals, macs = [], None
            for _ in range(args.profile_runs):
                with BlockStats() as st:
                    tb, _ = block_run(s, f)
                totals.append(tb)
                for k in ("sample", "pad", "combine"):
                    shares[k].append(st.times[k] / tb)
                shares["block_ops"].append(st.block_ops_time() / tb)
                m = (int(st.macs["hr"]), int(st.macs["lr"]))
                if macs is not None and m != macs:
                    raise AssertionError(
                        f"conv MACs differ between masks with the same HR count: {m} vs {macs}"
                    )
                macs = m
            prof_res[f] = {
                "profiled_total_s": median(totals),
                "shares": {k: median(v) for k, v in shares.items()},
                "macs_hr": macs[0],
                "macs_lr": macs[1],
            }
        allhr_macs = prof_res[1.0]["macs_hr"] + prof_res[1.0]["macs_lr"]
        assert allhr_macs == s["dense_macs"], (
            f"all-HR block conv MACs {allhr_macs} != dense conv MACs {s['dense_macs']}"
        )
        return prof_res

    with torch.inference_mode():
        for r in range(args.warmup + args.runs):
            warm = r < args.warmup
            for dt in dtypes:
                got = guard(f"trunk/{dt}", lambda dt=dt: one_round(states[dt], warm))
                if got is not None:
                    log(
                        f"  round {r + 1}/{args.warmup + args.runs}"
                        f"{' (warm-up)' if warm else ''} [{dt}]: dense {got[0]:.3f}s, "
                        f"last block {got[1]:.3f}s"
                    )
        for dt in dtypes:
            prof = guard(f"trunk/{dt}", lambda dt=dt: profile(states[dt]))
            if prof is not None:
                states[dt]["prof_res"] = prof

    results = {}
    for dt in dtypes:
        if not guard.ok(f"trunk/{dt}"):
            results[dt] = {"dtype": dt, "error": guard.errors[f"trunk/{dt}"]}
            continue
        s = states[dt]
        dense_t, block_t, paired, prof_res = s["dense_t"], s["block_t"], s["paired"], s["prof_res"]
        dense_macs = s["dense_macs"]
        all_dense = [t for f in fracs for t in dense_t[f]]
        configs = []
        for f in fracs:
            p = prof_res[f]
            bmacs = p["macs_hr"] + p["macs_lr"]
            med = median(block_t[f])
            dmed = median(dense_t[f])
            speedup = dmed / med
            theory = dense_macs / bmacs
            configs.append(
                {
                    "hr_frac": f,
                    "n_hr": n_hr[f],
                    "n_blocks": G,
                    "median_s": med,
                    "times_s": block_t[f],
                    "dense_median_s": dmed,
                    "dense_times_s": dense_t[f],
                    # min-based figures: on a shared machine noise only adds time
                    "min_s": min(block_t[f]),
                    "dense_min_s": min(dense_t[f]),
                    "speedup_min": min(dense_t[f]) / min(block_t[f]),
                    "ratio_min": min(dense_t[f]) / min(block_t[f]) / theory,
                    "speedup": speedup,
                    "speedup_paired_median": median(paired[f]),
                    "theory": theory,
                    "ratio": speedup / theory,
                    "macs_hr": p["macs_hr"],
                    "macs_lr": p["macs_lr"],
                    "macs_total": bmacs,
                    "profiled_total_s": p["profiled_total_s"],
                    "shares": p["shares"],
                }
            )
        results[dt] = {
            "dtype": dt,
            "input": [1, 3, H, W],
            "block_size": bs,
            "grid": [gh, gw],
            "bn_folded": s["folded"],
            "allhr_rel_err": s["allhr_err"],
            "dense": {
                "median_s": median(all_dense),
                "times_s": all_dense,
                "conv_macs": dense_macs,
            },
            "configs": configs,
        }
    return results


def print_trunk(res: dict, out) -> None:
    H, W = res["input"][2:]
    d = res["dense"]
    p = lambda s="": print(s, file=out)
    p(
        f"== ResNet-18 trunk, 1x3x{H}x{W}, block {res['block_size']} "
        f"(grid {res['grid'][0]}x{res['grid'][1]}), {res['dtype']} =="
    )
    p("block time = block_sample + trunk + block_combine(last stage); dense time = dense trunk")
    p("shares: separate profiled runs with BlockStats; op time / total time of the same run")
    p(
        f"dense: {d['median_s'] * 1e3:.1f} ms (median), conv {d['conv_macs'] / 1e9:.2f} GMACs; "
        f"all-HR vs dense rel. err {res['allhr_rel_err']:.2e}"
    )
    hdr = (
        f"{'HR %':>5} {'#HR':>4} {'GMACs':>6} {'dense ms':>9} {'block ms':>9} {'speedup':>8} "
        f"{'paired':>7} {'theory':>7} {'ratio':>6} | {'sample':>6} {'pad':>6} {'combine':>7} "
        f"{'ops':>6}"
    )
    p(hdr)
    p("-" * len(hdr))
    for c in res["configs"]:
        s = c["shares"]
        p(
            f"{c['hr_frac'] * 100:5.0f} {c['n_hr']:4d} {c['macs_total'] / 1e9:6.2f} "
            f"{c['dense_median_s'] * 1e3:9.1f} {c['median_s'] * 1e3:9.1f} {c['speedup']:8.3f} "
            f"{c['speedup_paired_median']:7.3f} {c['theory']:7.3f} {c['ratio']:6.3f} | "
            f"{s['sample'] * 100:5.1f}% {s['pad'] * 100:5.1f}% {s['combine'] * 100:6.1f}% "
            f"{s['block_ops'] * 100:5.1f}%"
        )
    p("dense ms = median of the dense runs interleaved with that row's block runs; speedup =")
    p("dense ms / block ms; paired = median over rounds of (dense / block) of adjacent runs;")
    p(
        "theory = dense conv MACs / block conv MACs; ratio = speedup / theory; "
        "ops = sample+pad+combine"
    )


# ---------------------------------------------------------------------------- basicblock
def bench_basicblock(args, gen, log, dtypes, guard) -> dict:
    """{dtype: result}; the rounds alternate between the dtypes."""
    from timm.models.resnet import BasicBlock

    C = BB_CHANNELS
    H, W = BB_SIZE
    x32 = torch.randn(1, C, H, W, generator=gen)
    cfgs = [(b, 0.5) for b in BB_BLOCK_SIZES]
    cfgs += [(BB_FRAC_BLOCK, f) for f in BB_FRACS if (BB_FRAC_BLOCK, f) not in cfgs]

    def n_hr(b, f):
        return round(f * (H // b) * (W // b))

    def new_mask(b, f):
        return random_mask(1, (H // b, W // b), n_hr(b, f), generator=gen)

    def full_run(s, b, f):
        mask = new_mask(b, f)
        t0 = time.perf_counter()
        y = block_combine(s["model"](block_sample(s["x"], mask, b, profile=s["prof"])))
        return time.perf_counter() - t0, y

    def fwd_run(s, b, f):
        xb = block_sample(s["x"], new_mask(b, f), b, profile=s["prof"])  # outside the timing
        t0 = time.perf_counter()
        y = s["model"](xb)
        return time.perf_counter() - t0, y

    def setup(dt):
        torch.manual_seed(args.seed)  # the same weights for every dtype
        model, folded = prepare(BasicBlock(C, C), torch.randn(1, C, 32, 32), DTYPES[dt])
        x = x32.to(DTYPES[dt]).contiguous(memory_format=torch.channels_last)
        s = {"model": model, "x": x, "prof": MarginProfile(), "folded": folded}
        with torch.inference_mode():
            s["dense_macs"] = dense_conv_macs(model, x)
            d_out = model(x)
            ones = torch.ones(1, H // 16, W // 16, dtype=torch.bool)
            allhr = block_combine(model(block_sample(x, ones, 16, profile=s["prof"])))
            s["allhr_err"] = rel_err(allhr, d_out)
        s["dense_t"] = {c: [] for c in cfgs}  # dense runs interleaved with config c
        s["full_t"] = {c: [] for c in cfgs}
        s["fwd_t"] = {c: [] for c in cfgs}
        return s

    log(f"[basicblock] 1x{C}x{H}x{W}, configs {cfgs}, dtypes {dtypes}")
    states = {dt: guard(f"basicblock/{dt}", lambda dt=dt: setup(dt)) for dt in dtypes}

    def one_round(s, warm):
        dense = lambda: s["model"](s["x"])
        for c in cfgs:
            td, _ = clock(dense)
            tf, _ = full_run(s, *c)
            td2, _ = clock(dense)
            tw, _ = fwd_run(s, *c)
            if not warm:
                s["dense_t"][c] += [td, td2]
                s["full_t"][c].append(tf)
                s["fwd_t"][c].append(tw)
        return td2, tf, tw

    def count_macs(s):
        macs = {}
        for c in cfgs:
            with BlockStats() as st:
                full_run(s, *c)
            macs[c] = (int(st.macs["hr"]), int(st.macs["lr"]))
        full_hr = (BB_FRAC_BLOCK, 1.0)
        if full_hr in macs:
            assert sum(macs[full_hr]) == s["dense_macs"], (
                f"all-HR block conv MACs {sum(macs[full_hr])} != dense conv MACs {s['dense_macs']}"
            )
        return macs

    with torch.inference_mode():
        # rounds over all configs (not config after config), so that slow phases of a shared
        # machine spread over every row instead of hitting a few rows
        for r in range(args.warmup + args.runs):
            warm = r < args.warmup
            for dt in dtypes:
                got = guard(f"basicblock/{dt}", lambda dt=dt: one_round(states[dt], warm))
                if got is not None:
                    log(
                        f"  round {r + 1}/{args.warmup + args.runs}"
                        f"{' (warm-up)' if warm else ''} [{dt}]: last dense {got[0] * 1e3:.1f} "
                        f"ms, full {got[1] * 1e3:.1f} ms, fwd {got[2] * 1e3:.1f} ms"
                    )
        for dt in dtypes:
            macs = guard(f"basicblock/{dt}", lambda dt=dt: count_macs(states[dt]))
            if macs is not None:
                states[dt]["macs"] = macs

    results = {}
    for dt in dtypes:
        if not guard.ok(f"basicblock/{dt}"):
            results[dt] = {"dtype": dt, "error": guard.errors[f"basicblock/{dt}"]}
            continue
        s = states[dt]
        dense_t, full_t, fwd_t, macs = s["dense_t"], s["full_t"], s["fwd_t"], s["macs"]
        all_dense = [t for c in cfgs for t in dense_t[c]]
        rows = []
        for c in cfgs:
            b, f = c
            dense_med = median(dense_t[c])
            bm = sum(macs[c])
            theory = s["dense_macs"] / bm
            mf, mw = median(full_t[c]), median(fwd_t[c])
            rows.append(
                {
                    "block_size": b,
                    "hr_frac": f,
                    "n_hr": n_hr(b, f),
                    "n_blocks": (H // b) * (W // b),
                    "macs_hr": macs[c][0],
                    "macs_lr": macs[c][1],
                    "macs_total": bm,
                    "theory": theory,
                    "dense_median_s": dense_med,
                    "dense_times_s": dense_t[c],
                    "full_median_s": mf,
                    "full_times_s": full_t[c],
                    "full_speedup": dense_med / mf,
                    "full_ratio": dense_med / mf / theory,
                    "fwd_median_s": mw,
                    "fwd_times_s": fwd_t[c],
                    "fwd_speedup": dense_med / mw,
                    "fwd_ratio": dense_med / mw / theory,
                    # min-based figures: on a shared machine noise only adds time
                    "dense_min_s": min(dense_t[c]),
                    "full_min_s": min(full_t[c]),
                    "fwd_min_s": min(fwd_t[c]),
                    "full_ratio_min": min(dense_t[c]) / min(full_t[c]) / theory,
                    "fwd_ratio_min": min(dense_t[c]) / min(fwd_t[c]) / theory,
                }
            )
        results[dt] = {
            "dtype": dt,
            "input": [1, C, H, W],
            "bn_folded": s["folded"],
            "allhr_rel_err_b16": s["allhr_err"],
            "dense": {
                "median_s": median(all_dense),
                "times_s": all_dense,
                "conv_macs": s["dense_macs"],
            },
            "configs": rows,
        }
    return results


def print_basicblock(res: dict, out) -> None:
    p = lambda s="": print(s, file=out)
    _, C, H, W = res["input"]
    d = res["dense"]
    p(f"== ResNet BasicBlock({C}, {C}), 1x{C}x{H}x{W} (paper Fig. 13), {res['dtype']} ==")
    p(
        "full = block_sample + BasicBlock + block_combine (new mask inside timing); "
        "fwd = BasicBlock forward on a pre-sampled block tensor (headline, as in Fig. 13)"
    )
    p(
        f"dense: {d['median_s'] * 1e3:.1f} ms (median), conv {d['conv_macs'] / 1e9:.2f} GMACs; "
        f"all-HR (b16) vs dense rel. err {res['allhr_rel_err_b16']:.2e}"
    )
    hdr = (
        f"{'block':>5} {'HR %':>5} {'GMACs':>6} {'theory':>7} {'dense ms':>9} | {'fwd ms':>8} "
        f"{'speedup':>8} {'ratio':>6} | {'full ms':>8} {'speedup':>8} {'ratio':>6}"
    )
    p(hdr)
    p("-" * len(hdr))
    for r in res["configs"]:
        p(
            f"{r['block_size']:5d} {r['hr_frac'] * 100:5.0f} {r['macs_total'] / 1e9:6.2f} "
            f"{r['theory']:7.3f} {r['dense_median_s'] * 1e3:9.1f} | "
            f"{r['fwd_median_s'] * 1e3:8.1f} {r['fwd_speedup']:8.3f} {r['fwd_ratio']:6.3f} | "
            f"{r['full_median_s'] * 1e3:8.1f} {r['full_speedup']:8.3f} {r['full_ratio']:6.3f}"
        )
    p(
        "dense ms = median of the dense runs interleaved with that row; speedup = dense ms / "
        "block ms;"
    )
    p("theory = dense conv MACs / block conv MACs; ratio = speedup / theory")


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark SegBlocks block execution: measured vs theoretical (conv MAC) "
        "speedup on a ResNet-18 trunk (1x3x1024x2048, block 128) and a single BasicBlock "
        "(paper Fig. 13), in float32 and/or bfloat16.",
    )
    add_run_arguments(
        ap, "BlockStats-profiled trunk runs per config for the op shares (default 2; quick 1)"
    )
    ap.add_argument("--only", choices=("trunk", "basicblock"), help="run one part only")
    add_dtype_argument(ap, "weights and input dtype")
    return resolve_run_arguments(ap, ap.parse_args(argv))


def print_failed(part: str, res: dict, out) -> None:
    print(f"== {part}, {res['dtype']}: FAILED ==", file=out)
    print(res["error"].rstrip(), file=out)


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    out = sys.stdout
    dtypes = selected_dtypes(args)
    guard = Guard(log)

    machine = machine_info()
    config = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": args.runs,
        "warmup": args.warmup,
        "profile_runs": args.profile_runs,
        "threads": args.threads,
        "seed": args.seed,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "dtypes": dtypes,
        "bfloat16": "fresh model per dtype (same seed); BN folded in float32, then weights and "
        "input converted with .to(torch.bfloat16)",
        "channels_last": True,
        "bn_folded": fold_batchnorm is not None,
        "inference_mode": True,
        "trunk": {
            "model": "timm resnet18 features_only, random weights",
            "input": [1, 3, *TRUNK_SIZE],
            "block_size": TRUNK_BLOCK,
            "hr_fracs": [1.0, *TRUNK_FRACS],
        },
        "basicblock": {
            "model": f"timm BasicBlock({BB_CHANNELS}, {BB_CHANNELS})",
            "input": [1, BB_CHANNELS, *BB_SIZE],
            "block_sizes_at_50": list(BB_BLOCK_SIZES),
            "fracs_at_block": BB_FRAC_BLOCK,
            "hr_fracs": list(BB_FRACS),
        },
        "only": args.only,
    }

    res: dict = {"config": config, "machine": machine}
    snap0 = cpu_snapshot()
    parts = {}
    if args.only in (None, "trunk"):
        parts["trunk"] = bench_trunk(args, gen, log, dtypes, guard)
    if args.only in (None, "basicblock"):
        parts["basicblock"] = bench_basicblock(args, gen, log, dtypes, guard)
    load = foreign_load(snap0, cpu_snapshot())
    machine["load_during_run"] = load

    # float32: the original keys ("trunk", "trunk_speedup_over_theory_40", ...); bfloat16: the
    # same keys with the "_bf16" suffix
    for part, by_dtype in parts.items():
        for dt, r in by_dtype.items():
            sfx = DTYPE_SUFFIX[dt]
            res[part + sfx] = r
            if "error" in r:
                continue
            if part == "trunk":
                by = {c["hr_frac"]: c for c in r["configs"]}
                res["trunk_speedup_over_theory_40" + sfx] = by[0.4]["ratio"]
                res["trunk_all_hr_overhead" + sfx] = (
                    by[1.0]["median_s"] / by[1.0]["dense_median_s"] - 1
                )
                res["trunk_block_ops_share_40" + sfx] = by[0.4]["shares"]["block_ops"]
            else:
                b32 = next(c for c in r["configs"] if c["block_size"] == 32 and c["hr_frac"] == 0.5)
                res["basicblock_speedup_over_theory_b32" + sfx] = b32["fwd_ratio"]
    res["errors"] = guard.errors

    p = lambda s="": print(s, file=out)
    p("SegBlocks block-engine benchmark")
    print_machine(p, machine)
    p(
        f"settings  : {' and '.join(dtypes)} (bfloat16 = weights and input .to(torch.bfloat16), "
        f"fresh model per dtype), channels_last, inference_mode, BN folded: "
        f"{'yes' if config['bn_folded'] else 'no'}"
    )
    p(
        f"repetition: median of {args.runs} timed runs after {args.warmup} warm-up; "
        f"{args.profile_runs} profiled run(s) per trunk config; seed {args.seed}; "
        f"new random mask every run; dense/block runs interleaved"
        + ("; rounds alternate between the dtypes" if len(dtypes) > 1 else "")
    )
    p(f"date      : {config['date']}")
    print_noise(p, load)
    for part, printer in (("trunk", print_trunk), ("basicblock", print_basicblock)):
        for r in parts.get(part, {}).values():
            p()
            if "error" in r:
                print_failed(part, r, out)
            else:
                printer(r, out)
    p()
    p("headline (measured in the same run; columns: dtype):")
    print_headline(p, res, HEADLINE, dtypes)
    if any(k.startswith("basicblock_speedup") for k in res):
        p("  (basicblock figure: block forward only, 50% HR, block 32, as in paper Fig. 13)")
    if guard.errors:
        p(f"FAILED: {', '.join(guard.errors)} (tracebacks above and in the JSON 'errors')")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        log(f"wrote {args.json}")
    return 1 if guard.errors else 0


if __name__ == "__main__":
    sys.exit(main())
