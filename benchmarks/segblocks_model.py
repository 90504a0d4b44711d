#!/usr/bin/env python
"""SegBlocks models vs their dense SwiftNets: GMACs, latency, memory, time per module.

SegBlocks-RN18 and SegBlocks-EffL1 (``segblocks.models.SegBlocksModel`` around
``swiftnet_rn18`` / ``swiftnet_effl1``, 19 classes) on a 1x3x1024x2048 image, block 128
(an 8x16 grid), compared with

- the dense SwiftNet at 1024x2048 (the reference of every speedup),
- SegBlocks with 20/40/60/100 % HR blocks: ``FixedMask`` policies, each a random but fixed set
  of exactly ``round(f * 128)`` HR blocks (the per-mask metadata, i.e. the block grid and the
  pad plans, is still rebuilt inside every forward, as the model builds a new grid per call),
- "SegBlocks + learned policy 40%": the same 40 % mask, but the policy first runs a
  ``segblocks.policies.LearnedPolicy(block_size=128)`` network on the image (an untrained one:
  thresholded at p > 0.5 it would give an all-LR or all-HR mask, so its decision is replaced by
  the fixed 40 % mask; the network is run for its cost, latency and MACs),
- static reduced-resolution baselines: the dense SwiftNet on a 768x1536 and a 672x1344 input
  (HxW; output at that size, resizing the image / logits is not timed).

Columns: GMACs (exact conv + linear MACs from ``segblocks.measuring.macs``, policy network
included), CPU latency (median over timed runs after warm-up; every run of a configuration is
preceded by a run of the dense SwiftNet at 1024x2048, so machine noise hits both alike), the
measured speedup (median dense time of the runs interleaved with that row / median row time),
the theoretical speedup (dense MACs / row MACs), their ratio, the peak memory of one forward and
the time per module as in paper Table 6 (policy, sample, pad, combine, rest = total - those),
from separate profiled runs with ``BlockStats`` active and forward hooks timing the policy call.

Everything runs under ``torch.inference_mode()``, channels-last, with eval batch norm folded
into the preceding convs and conv -> ReLU / ReLU6 pairs fused (``segblocks.blocks.fuse``:
``fold_batchnorm``, ``fuse_activations``, as ``optimize_for_inference`` does) for the dense and
the block model alike (the SegBlocks models wrap the very same folded SwiftNet; pre-activation
BNs of the SwiftNet decoder / SPP / head are left alone by the folding). EfficientNet-Lite1 uses its
packaged (offline) ImageNet backbone weights, everything else is randomly initialised.

``--dtype both`` (default) measures float32 and bfloat16 in the same run: every model is built
fresh per dtype (same seed, so the same weights; BN folded in float32, then weights and inputs
converted with ``.to(torch.bfloat16)``); speedups compare with the dense SwiftNet of the same
dtype, and the timing rounds alternate between the dtypes. The float32 results keep their JSON
keys (``models``, ``rn18_speedup_over_theory_40``, ...); the bfloat16 ones carry a ``_bf16``
suffix (``models_bf16``, ``rn18_speedup_over_theory_40_bf16``, ...). A model / dtype whose run
raises is recorded as ``{"error": traceback}`` and the run goes on.

``rn18_latency_ratio_vs_static_equal_gmacs`` (and ``effl1_...``): SegBlocks 40 % HR latency
(the FixedMask row, as ``rn18_speedup_over_theory_40``) / latency of the static
reduced-resolution SwiftNet with the nearest GMACs at or above it (768x1536 at the default size:
58.3 vs 56.9 GMACs for RN18), same dtype, same run; < 1 means SegBlocks is faster than a
static network of (at least) equal cost.

Usage::

    python benchmarks/segblocks_model.py --json results/segblocks_model.json  # ~15 min
    python benchmarks/segblocks_model.py --quick --dtype float32
    python benchmarks/segblocks_model.py --quick --size 256x512      # smoke test (sizes reduced)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import time

import torch

from segblocks.blocks.fuse import fold_batchnorm, fuse_activations
from segblocks.blocks.stats import BlockStats
from segblocks.measuring.macs import count_macs_dense
from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel
from segblocks.policies import FixedMask, LearnedPolicy, Policy, PolicyOutput
from segblocks.policies.masks import random_mask

SIZE = (1024, 2048)
BLOCK = 128
FRACS = (1.0, 0.2, 0.4, 0.6)  # all-HR first: its check and MACs come first in the table
LEARNED_FRAC = 0.4
REDUCED = ((768, 1536), (672, 1344))  # HxW of the static reduced-resolution baselines
NUM_CLASSES = 19
# (key, registry name, pretrained backbone): EffL1 weights ship with a pip package (offline)
ALL_MODELS = (
    ("rn18", "swiftnet_rn18", False),
    ("effl1", "swiftnet_effl1", True),
    # torchvision networks through segblocks.models.SegmentationNet (issue 10)
    ("lraspp_mbv3", "lraspp_mobilenet_v3_large", False),
    ("deeplabv3_rn50", "deeplabv3_resnet50", False),
)
MODELS = ALL_MODELS  # narrowed by --models
PAPER_GMACS = {"swiftnet_rn18": 104.1, "swiftnet_rn50": 206.3, "swiftnet_effl1": 24.9}
MODULES = ("policy", "sample", "pad", "combine")


# ---------------------------------------------------------------------------- helpers
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    DTYPE_SUFFIX,
    DTYPES,
    TUNED_MALLOC,
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

GMACS_KEYS = ("rn18_gmacs_dense", "rn50_gmacs_dense", "effl1_gmacs_dense")  # any dtype
HEADLINE = (
    "rn18_speedup_over_theory_40",
    "lraspp_mbv3_speedup_over_theory_40",
    "deeplabv3_rn50_speedup_over_theory_40",
    "rn18_block_ops_share_40",
    "effl1_speedup_over_theory_40",
    "rn18_all_hr_overhead",
    "effl1_all_hr_overhead",
    "rn18_latency_ratio_vs_static_equal_gmacs",
    "effl1_latency_ratio_vs_static_equal_gmacs",
)

# The memory measurement runs in a child process whose glibc maps every block >= 64 KiB
# separately and returns it on free (fixed thresholds, no dynamic growth), so that the resident
# set follows the live tensors and the peak of one forward is visible in VmHWM.
_MEMORY_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 16),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 17),
}
_ALL_MALLOC_KEYS = set(TUNED_MALLOC) | set(_MEMORY_MALLOC) | {"MALLOC_TOP_PAD_"}


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not HxW, e.g. 1024x2048") from None
    if h <= 0 or w <= 0 or h % BLOCK or w % BLOCK:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive multiples of {BLOCK}")
    return h, w


def reduced_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """The reduced-resolution inputs, scaled with ``--size`` (multiples of the stride 32)."""
    H, W = size
    out = []
    for h, w in REDUCED:
        rh = max(32, round(h / SIZE[0] * H / 32) * 32)
        rw = max(32, round(w / SIZE[1] * W / 32) * 32)
        out.append((rh, rw))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LearnedCostFixedMask(Policy):
    """Runs a :class:`LearnedPolicy` network on the image, then uses a fixed mask.

    An untrained policy network gives ``p ~ init_tau`` for every block, so its thresholded
    decision is all-LR or all-HR; this wrapper pays the network's cost (it is a ``Policy``
    submodule of the model, so ``segblocks.measuring.macs`` counts its convs as ``policy`` rows)
    and returns the benchmark's fixed mask.
    """

    def __init__(self, net: LearnedPolicy, mask: torch.Tensor):
        super().__init__()
        self.net = net
        self.fixed = FixedMask(mask)

    def decide(self, image, grid_shape):
        out = self.net.decide(image, grid_shape)
        fixed = self.fixed.decide(image, grid_shape)
        return PolicyOutput.from_mask(fixed.mask, probs=out.probs, scores=out.scores)


# ---------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def cpu_peak_increase(fn) -> int | None:
    """Bytes by which the peak RSS of ``fn()`` exceeds the RSS before it (None if unsupported)."""
    gc.collect()
    try:
        rss0 = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except (OSError, KeyError):
        return None
    out = fn()
    hwm = _status_kb("VmHWM")
    del out
    return max(0, hwm - rss0) * 1024


def cuda_peak_increase(fn, device) -> int:
    gc.collect()
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return peak - base


# ---------------------------------------------------------------------------- setup
def build(args, log, dtype: str) -> dict:
    """Models, inputs and the run functions of every configuration (same in the memory child).

    Fresh models for every call (the same seed, so the same weights for every ``dtype``): BN is
    folded in float32, then weights and inputs are converted to ``dtype``, before any run.
    """
    device = torch.device(args.device)
    dt = DTYPES[dtype]
    H, W = args.size
    gh, gw = H // BLOCK, W // BLOCK
    G = gh * gw
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x = torch.randn(1, 3, H, W, generator=gen)
    masks = {f: random_mask(1, (gh, gw), round(f * G), generator=gen) for f in FRACS}
    red = reduced_sizes(args.size)
    x_red = {hw: torch.randn(1, 3, *hw, generator=gen) for hw in red}
    cl = torch.channels_last
    x = x.to(device, dt).contiguous(memory_format=cl)
    x_red = {hw: v.to(device, dt).contiguous(memory_format=cl) for hw, v in x_red.items()}
    example = torch.randn(1, 3, 256, 512, generator=gen).to(device)

    models = {}
    for key, name, pretrained in MODELS:
        kw = {"num_classes": NUM_CLASSES}
        weights = "random"
        if pretrained:
            kw["pretrained_backbone"] = True
        try:
            net = create_model(name, **kw)
            if pretrained:
                weights = "ImageNet backbone (offline package)"
        except (RuntimeError, OSError) as e:  # weights unavailable: random init instead
            log(f"[{key}] pretrained backbone unavailable ({e}); random weights")
            kw.pop("pretrained_backbone", None)
            net = create_model(name, **kw)
        # the fast inference form of segblocks.models.inference, for dense and blocks alike
        net = fold_batchnorm(net.eval().to(device), example)
        net = fuse_activations(net, example, inplace=True).to(dt).to(memory_format=cl)
        pol = LearnedPolicy(block_size=BLOCK, init_tau=LEARNED_FRAC).eval().to(device)
        gsz = pol.input_size((gh, gw))
        pol.net = fold_batchnorm(pol.net, torch.randn(1, 3, *gsz, device=device))
        pol = pol.to(dt).to(memory_format=cl)
        seg = {f: SegBlocksModel(net, FixedMask(masks[f]), BLOCK).eval().to(device) for f in FRACS}
        learned = SegBlocksModel(net, LearnedCostFixedMask(pol, masks[LEARNED_FRAC]), BLOCK)
        learned = learned.eval().to(device)

        # configuration key -> label, kind, run function, model and input for the MACs
        cfgs = {}
        for f in FRACS:
            cfgs[f"seg{round(f * 100)}"] = {
                "label": f"SegBlocks {round(f * 100)}% HR",
                "kind": "seg",
                "frac": f,
                "model": seg[f],
                "run": lambda m=seg[f]: m(x).logits,
                "input": x,
            }
        cfgs["learned40"] = {
            "label": f"SegBlocks + learned policy {round(LEARNED_FRAC * 100)}%",
            "kind": "seg",
            "frac": LEARNED_FRAC,
            "model": learned,
            "run": lambda m=learned: m(x).logits,
            "input": x,
        }
        for hw in red:
            cfgs[f"dense{hw[0]}x{hw[1]}"] = {
                "label": f"dense net {hw[0]}x{hw[1]}",
                "kind": "reduced",
                "frac": None,
                "model": net,
                "run": lambda net=net, v=x_red[hw]: net(v),
                "input": x_red[hw],
            }
        models[key] = {
            "name": name,
            "weights": weights,
            "net": net,
            "seg": seg,
            "learned": learned,
            "policy_net": pol,
            "dense": lambda net=net: net(x),
            "policy_call": lambda pol=pol: pol(x, (gh, gw)),
            "cfgs": cfgs,
        }
    fr = {f: int(m.sum()) for f, m in masks.items()}
    return {
        "dtype": dtype,
        "device": device,
        "x": x,
        "grid": (gh, gw),
        "n_hr": fr,
        "models": models,
        "red": red,
    }


# ---------------------------------------------------------------------------- memory child
def memory_child(args, dtype: str) -> int:
    """Peak memory of one forward per configuration; prints JSON (run in a fresh process)."""
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    setup = build(args, log, dtype)
    device = setup["device"]
    res = {}
    with torch.inference_mode():
        for key, m in setup["models"].items():
            runs = {"dense": m["dense"], **{c: v["run"] for c, v in m["cfgs"].items()}}
            runs["policy_net"] = m["policy_call"]
            res[key] = {}
            for c, fn in runs.items():
                fn()  # warm-up: one-time allocations (weight reorders, plans) are not counted
                sync(device)
                if device.type == "cuda":
                    res[key][c] = cuda_peak_increase(fn, device)
                else:
                    res[key][c] = cpu_peak_increase(fn)
    print(json.dumps(res))
    return 0


def measure_memory(args, log, dtype: str) -> dict | None:
    if torch.device(args.device).type == "cuda":
        with torch.inference_mode():
            return json.loads(_run_memory_inline(args, dtype))
    env = {k: v for k, v in os.environ.items() if k not in _ALL_MALLOC_KEYS}
    env.update(_MEMORY_MALLOC)
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--memory-child",
        "--size",
        f"{args.size[0]}x{args.size[1]}",
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--dtype",
        dtype,
        "--models",
        args.models,
    ]
    log(f"[memory] child process ({dtype}): one warm-up + one measured forward per configuration")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        log(f"[memory] child failed ({p.returncode}):\n{p.stderr}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def _run_memory_inline(args, dtype: str) -> str:  # CUDA: caching allocator counters, same process
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        memory_child(args, dtype)
    return buf.getvalue().strip().splitlines()[-1]


# ---------------------------------------------------------------------------- benchmark
def profiled_run(model: SegBlocksModel, x, device) -> dict:
    """One forward with BlockStats active and the policy call and the SPP fallback timed."""
    t: dict[str, float] = {}
    hooks = []

    def at(name):
        def hook(*_):
            sync(device)
            t[name] = time.perf_counter()

        return hook

    # The network calls a dense module through dense_call (combine -> module -> re-split):
    # the module's own hooks bracket the module on the combined map, the combine before it is
    # in "combine", and the re-split ends where the next module call starts (a global
    # pre-hook, registered only from the dense module's end until that call). For SwiftNet's
    # SPP its first and last layers bracket the dense SPP itself.
    pol = model.policy
    hooks += [pol.register_forward_pre_hook(at("pol0")), pol.register_forward_hook(at("pol1"))]
    names = list(model.net.dense_modules)
    fb = model.net.get_submodule(names[0]) if names else None

    def next_call(*_):
        if "fb1" in t and "after" not in t:
            at("after")()
            nxt.remove()

    nxt = None

    def fb_end(*_):
        nonlocal nxt
        at("fb1")()
        if nxt is None:
            nxt = torch.nn.modules.module.register_module_forward_pre_hook(next_call)
            hooks.append(nxt)

    if fb is not None:
        hooks += [fb.register_forward_pre_hook(at("fb0")), fb.register_forward_hook(fb_end)]
    if hasattr(fb, "bottleneck") and hasattr(fb, "fuse"):
        hooks += [fb.bottleneck.register_forward_pre_hook(at("in0"))]
        hooks += [fb.fuse.register_forward_hook(at("in1"))]
    try:
        with BlockStats() as st:
            sync(device)
            t0 = time.perf_counter()
            model(x)
            sync(device)
            total = time.perf_counter() - t0
    finally:
        for h in hooks:
            h.remove()
    res = {
        "total": total,
        "policy": t["pol1"] - t["pol0"],
        "sample": st.times["sample"],
        "pad": st.times["pad"],
        "combine": st.times["combine"],
        # part of "rest": the SPP's dense fallback re-splits its output into blocks (not timed
        # by BlockStats); the combine before the SPP is in "combine"
        "spp_dense": t["in1"] - t["in0"] if "in1" in t else None,
        "spp_resplit": t["after"] - t["in1"] if "in1" in t and "after" in t else None,
        # the dense module and the re-split of its output (its input's combine not included)
        "dense_fallback": t["after"] - t["fb0"] if "after" in t else 0.0,
    }
    res["rest"] = total - sum(res[k] for k in MODULES)
    return res


def check_and_macs(setup: dict, key: str, m: dict) -> dict:
    """All-HR check against the dense SwiftNet and exact MACs of every configuration."""
    x = setup["x"]
    H, W = x.shape[-2:]
    gh, gw = setup["grid"]
    net = m["net"]
    dense_macs = count_macs_dense(net, x).total
    r = {
        "model": m["name"],
        "dtype": setup["dtype"],
        "backbone_weights": m["weights"],
        "dense": {"macs": dense_macs, "gmacs": dense_macs / 1e9},
        "configs": {},
    }
    d_out = net(x)
    for _ in range(2):  # second call: the learned in-place fast path
        y = m["seg"][1.0](x).logits
    r["allhr_rel_err"] = rel_err(y, d_out)
    r["allhr_max_abs_err"] = (y.float() - d_out.float()).abs().max().item()
    del d_out, y
    for c, cfg in m["cfgs"].items():
        rep = count_macs_dense(cfg["model"], cfg["input"])
        cr = {
            "label": cfg["label"],
            "kind": cfg["kind"],
            "input": list(cfg["input"].shape),
            "macs": rep.total,
            "gmacs": rep.total / 1e9,
            "policy_macs": rep.policy,
            "network_macs": rep.network,
            "theory": dense_macs / rep.total,
        }
        if cfg["kind"] == "seg":
            cr["macs_hr"], cr["macs_lr"], cr["macs_dense_layers"] = rep.hr, rep.lr, rep.dense
            f = cfg["frac"]
            cr["hr_frac"] = f
            cr["n_hr"] = setup["n_hr"][f]
            cr["n_blocks"] = gh * gw
        r["configs"][c] = cr
    pm = m["policy_net"].macs((H, W))
    assert r["configs"]["learned40"]["policy_macs"] == pm, (
        r["configs"]["learned40"]["policy_macs"],
        pm,
    )
    assert r["configs"]["seg100"]["macs"] == dense_macs, (
        f"{key}: all-HR SegBlocks MACs {r['configs']['seg100']['macs']} != dense {dense_macs}"
    )
    r["policy_net"] = {
        "macs": pm,
        "gmacs": pm / 1e9,
        "input": list(m["policy_net"].input_size((gh, gw))),
    }
    return r


def static_equal_gmacs(r: dict, seg: str = "seg40") -> dict | None:
    """``seg`` row vs the static reduced-resolution row with the nearest GMACs >= its GMACs."""
    s = r["configs"][seg]
    cands = [
        (cr["gmacs"], c)
        for c, cr in r["configs"].items()
        if cr["kind"] == "reduced" and cr["gmacs"] >= s["gmacs"]
    ]
    if not cands:
        return None
    _, c = min(cands)
    red = r["configs"][c]
    return {
        "segblocks": seg,
        "static": c,
        "segblocks_gmacs": s["gmacs"],
        "static_gmacs": red["gmacs"],
        "segblocks_median_s": s["median_s"],
        "static_median_s": red["median_s"],
        # the headline figure: median latency / median latency
        "latency_ratio": s["median_s"] / red["median_s"],
        "latency_ratio_min": s["min_s"] / red["min_s"],
        # both rows normalised by the dense runs interleaved with them (drift-robust)
        "latency_ratio_dense_normalised": red["speedup"] / s["speedup"],
    }


def bench(args, log, dtypes, guard) -> dict:
    """``{dtype: {model key: result}}``; the timing rounds alternate between the dtypes."""
    setups = {}
    for dt in dtypes:
        s = guard(f"build/{dt}", lambda dt=dt: build(args, log, dt))
        if s is not None:
            setups[dt] = s
    H, W = args.size
    gh, gw = H // BLOCK, W // BLOCK
    device = torch.device(args.device)
    if setups:
        log(
            f"1x3x{H}x{W}, block {BLOCK} (grid {gh}x{gw}), HR blocks "
            f"{next(iter(setups.values()))['n_hr']}, dtypes {list(setups)}"
        )

    def clock(fn):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    runs = [(dt, key, m) for dt, s in setups.items() for key, m in s["models"].items()]
    gkey = lambda dt, key: f"{key}/{dt}"
    out: dict = {dt: {} for dt in setups}
    times = {(dt, key): {c: [] for c in m["cfgs"]} for dt, key, m in runs}
    dense_t = {(dt, key): {c: [] for c in m["cfgs"]} for dt, key, m in runs}
    pol_t = {(dt, key): [] for dt, key, _ in runs}

    def one_round(dt, key, m, warm):
        # every configuration preceded by a dense run of the same model and dtype
        for c, cfg in m["cfgs"].items():
            td = clock(m["dense"])
            tc = clock(cfg["run"])
            if not warm:
                dense_t[dt, key][c].append(td)
                times[dt, key][c].append(tc)
        tp = clock(m["policy_call"])
        if not warm:
            pol_t[dt, key].append(tp)
        return td, c, tc, tp

    def profile(dt, key, m):
        for c, cr in out[dt][key]["configs"].items():
            if cr["kind"] != "seg":
                continue
            model = m["cfgs"][c]["model"]
            pruns = [profiled_run(model, setups[dt]["x"], device) for _ in range(args.profile_runs)]
            # keys a model does not have (SwiftNet's SPP timings on other networks) stay None
            prof = {
                k: None if pruns[0][k] is None else median([p[k] for p in pruns]) for k in pruns[0]
            }
            prof["shares"] = {k: prof[k] / prof["total"] for k in (*MODULES, "rest")}
            ops = sum(prof[k] for k in MODULES)
            prof["block_ops_s"] = ops
            prof["block_ops_share"] = ops / prof["total"]
            prof["runs"] = pruns
            cr["profile"] = prof
        return True

    with torch.inference_mode():
        # ---------------------------------------------------------------- MACs + checks
        for dt, key, m in runs:
            r = guard(gkey(dt, key), lambda dt=dt, key=key, m=m: check_and_macs(setups[dt], key, m))
            if r is not None:
                out[dt][key] = r
                log(
                    f"[{key} {dt}] dense {r['dense']['gmacs']:.2f} GMACs; all-HR rel. err "
                    f"{r['allhr_rel_err']:.2e}"
                )

        # ---------------------------------------------------------------- timing
        n_rounds = args.warmup + args.runs
        for r in range(n_rounds):
            warm = r < args.warmup
            # rounds over all dtypes, models and configurations, so that slow phases of the
            # machine spread over every row instead of hitting a few rows
            for dt, key, m in runs:
                got = guard(gkey(dt, key), lambda dt=dt, key=key, m=m: one_round(dt, key, m, warm))
                if got is not None:
                    td, c, tc, tp = got
                    log(
                        f"  round {r + 1}/{n_rounds}{' (warm-up)' if warm else ''} [{key} {dt}]: "
                        f"dense {td:.3f}s, last {c} {tc:.3f}s, policy net {tp * 1e3:.1f}ms"
                    )

        # ---------------------------------------------------------------- profiled runs
        for dt, key, m in runs:
            if guard(gkey(dt, key), lambda dt=dt, key=key, m=m: profile(dt, key, m)) is None:
                continue
            log(f"[{key} {dt}] profiled runs done")

    for dt, key, m in runs:
        if not guard.ok(gkey(dt, key)):
            out[dt][key] = {"model": m["name"], "dtype": dt, "error": guard.errors[gkey(dt, key)]}
            continue
        r = out[dt][key]
        all_d = [t for c in times[dt, key] for t in dense_t[dt, key][c]]
        r["dense"].update({"median_s": median(all_d), "min_s": min(all_d), "times_s": all_d})
        pt = pol_t[dt, key]
        r["policy_net"].update({"median_s": median(pt), "min_s": min(pt), "times_s": pt})
        for c, cr in r["configs"].items():
            tt, dd = times[dt, key][c], dense_t[dt, key][c]
            med, dmed = median(tt), median(dd)
            cr.update(
                {
                    "median_s": med,
                    "min_s": min(tt),
                    "times_s": tt,
                    "dense_median_s": dmed,
                    "dense_times_s": dd,
                    "speedup": dmed / med,
                    "speedup_paired_median": median([d / t for d, t in zip(dd, tt, strict=True)]),
                    "speedup_min": min(dd) / min(tt),
                    "ratio": dmed / med / cr["theory"],
                }
            )
        r["static_equal_gmacs"] = static_equal_gmacs(r)
    for dt in dtypes:
        if dt not in setups:
            out[dt] = {"error": guard.errors[f"build/{dt}"]}
    return out


# ---------------------------------------------------------------------------- printing
def print_model(key: str, r: dict, mem: dict | None, out) -> None:
    p = lambda s="": print(s, file=out)
    if "error" in r:
        p(f"== {r['model']}, {r['dtype']}: FAILED ==")
        p(r["error"].rstrip())
        return
    d = r["dense"]
    pn = r["policy_net"]
    p(f"== {r['model']} ({r['backbone_weights']} weights), {NUM_CLASSES} classes, {r['dtype']} ==")
    p(
        f"all-HR SegBlocks vs dense SwiftNet logits: rel. err {r['allhr_rel_err']:.2e} "
        f"(max abs {r['allhr_max_abs_err']:.2e})"
    )
    p(
        f"policy network alone (LearnedPolicy(block_size={BLOCK}), input resized to "
        f"{pn['input'][0]}x{pn['input'][1]}): {pn['gmacs']:.3f} GMACs, "
        f"{pn['median_s'] * 1e3:.1f} ms median"
        + (
            f", peak +{mem['policy_net'] / 2**20:.0f} MB"
            if mem and mem.get("policy_net") is not None
            else ""
        )
    )
    hdr = (
        f"{'configuration':<32} {'GMACs':>6} {'ms':>7} {'dense ms':>8} {'speedup':>7} "
        f"{'theory':>6} {'ratio':>5} {'peak MB':>7} | {'policy':>6} {'sample':>6} {'pad':>6} "
        f"{'combine':>7} {'rest':>6} {'ops %':>5}"
    )
    p(hdr)
    p("-" * len(hdr))

    def mb(c):
        v = mem.get(c) if mem else None
        return f"{v / 2**20:7.0f}" if v is not None else f"{'n/a':>7}"

    dense_label = f"SwiftNet (dense, {r['dense_input'][2]}x{r['dense_input'][3]})"
    p(
        f"{dense_label:<32} "
        f"{d['gmacs']:6.2f} {d['median_s'] * 1e3:7.1f} {d['median_s'] * 1e3:8.1f} {1:7.3f} "
        f"{1:6.3f} {1:5.2f} {mb('dense')} |"
    )
    for c, cr in r["configs"].items():
        line = (
            f"{cr['label']:<32} {cr['gmacs']:6.2f} {cr['median_s'] * 1e3:7.1f} "
            f"{cr['dense_median_s'] * 1e3:8.1f} {cr['speedup']:7.3f} {cr['theory']:6.3f} "
            f"{cr['ratio']:5.2f} {mb(c)} |"
        )
        pr = cr.get("profile")
        if pr:
            line += (
                f" {pr['policy'] * 1e3:6.1f} {pr['sample'] * 1e3:6.1f} {pr['pad'] * 1e3:6.1f} "
                f"{pr['combine'] * 1e3:7.1f} {pr['rest'] * 1e3:6.1f} "
                f"{pr['block_ops_share'] * 100:5.1f}"
            )
        p(line)
    profiled = [cr for cr in r["configs"].values() if cr.get("profile")]
    if profiled and profiled[0]["profile"].get("spp_dense") is not None:
        p("rest of the SegBlocks rows: of which dense SPP / SPP re-split into blocks (ms):")
        p(
            "  "
            + "; ".join(
                f"{cr['label'].replace('SegBlocks ', '')}: "
                f"{cr['profile']['spp_dense'] * 1e3:.1f} / "
                f"{cr['profile']['spp_resplit'] * 1e3:.1f}"
                for cr in profiled
            )
        )
    elif profiled:
        p("rest of the SegBlocks rows: of which dense-fallback modules and re-split (ms):")
        p(
            "  "
            + "; ".join(
                f"{cr['label'].replace('SegBlocks ', '')}: "
                f"{cr['profile']['dense_fallback'] * 1e3:.1f}"
                for cr in profiled
            )
        )
    se = r.get("static_equal_gmacs")
    if se:
        p(
            f"SegBlocks 40% HR ({se['segblocks_gmacs']:.1f} GMACs) vs static {se['static']} "
            f"({se['static_gmacs']:.1f} GMACs): latency ratio {se['latency_ratio']:.3f} "
            f"(min-based {se['latency_ratio_min']:.3f}, dense-normalised "
            f"{se['latency_ratio_dense_normalised']:.3f}; < 1: SegBlocks faster)"
        )
    else:
        p("no static reduced-resolution row has GMACs >= SegBlocks 40% HR")


def headline(res: dict, models: dict, sfx: str) -> None:
    """The headline keys of one dtype (``sfx``: "" for float32, "_bf16")."""
    for key, _, _ in MODELS:
        r = models.get(key)
        if not r or "error" in r:
            continue
        cfg = r["configs"]
        res[f"{key}_speedup_over_theory_40{sfx}"] = cfg["seg40"]["ratio"]
        res[f"{key}_all_hr_overhead{sfx}"] = (
            cfg["seg100"]["median_s"] / cfg["seg100"]["dense_median_s"] - 1
        )
        se = r.get("static_equal_gmacs")
        if se:
            res[f"{key}_latency_ratio_vs_static_equal_gmacs{sfx}"] = se["latency_ratio"]
        if key == "rn18":
            res[f"rn18_block_ops_share_40{sfx}"] = cfg["seg40"]["profile"]["block_ops_share"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        if args.dtype not in DTYPES:
            raise SystemExit("--memory-child needs one --dtype")
        return memory_child(args, args.dtype)
    if argv is None and torch.device(args.device).type == "cpu":
        reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    out = sys.stdout
    dtypes = selected_dtypes(args)
    guard = Guard(log)
    machine = machine_info(device=args.device)
    H, W = args.size
    is_cuda = torch.device(args.device).type == "cuda"
    mem_method = (
        "torch.cuda.max_memory_allocated() - memory_allocated() before the run, after "
        "reset_peak_memory_stats(); one warm-up first"
        if is_cuda
        else "CPU: in a fresh child process per dtype (glibc with MALLOC_MMAP_THRESHOLD_=64KiB, "
        "MALLOC_TRIM_THRESHOLD_=128KiB so freed tensors leave the resident set), per "
        "configuration one warm-up forward, then VmHWM reset via /proc/self/clear_refs "
        "('5') and one forward; peak = VmHWM after - VmRSS before (input, weights and "
        "one-time caches excluded, output included)"
    )
    config = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": args.runs,
        "warmup": args.warmup,
        "profile_runs": args.profile_runs,
        "threads": args.threads,
        "seed": args.seed,
        "dtype": args.dtype,
        "dtypes": dtypes,
        "bfloat16": "fresh models per dtype (same seed); BN folded in float32, then weights and "
        "inputs converted with .to(torch.bfloat16)",
        "channels_last": True,
        "bn_folded": True,
        "inference_mode": True,
        "input": [1, 3, H, W],
        "block_size": BLOCK,
        "hr_fracs": list(FRACS),
        "reduced_inputs": [list(hw) for hw in reduced_sizes(args.size)],
        "num_classes": NUM_CLASSES,
        "memory_method": mem_method,
        "policy": "FixedMask: a random fixed mask with round(f * GH * GW) HR blocks per fraction; "
        "learned row: LearnedPolicy network run, then the 40% fixed mask used",
    }
    res: dict = {"config": config, "machine": machine}

    # GMACs of the three dense SwiftNets at the benchmark size (rn50: MACs only)
    gm = {}
    with torch.inference_mode():
        for name in ("swiftnet_rn18", "swiftnet_rn50", "swiftnet_effl1"):
            net = create_model(name, num_classes=NUM_CLASSES).eval()
            gm[name] = count_macs_dense(net, (1, 3, H, W)).total / 1e9
            del net
    res["dense_gmacs"] = {n: {"ours": v, "paper": PAPER_GMACS[n]} for n, v in gm.items()}
    with torch.inference_mode():
        for _, name, _ in MODELS:
            if name not in gm:
                net = create_model(name, num_classes=NUM_CLASSES).eval()
                gm[name] = count_macs_dense(net, (1, 3, H, W)).total / 1e9
                del net

    snap0 = cpu_snapshot()
    by_dtype = bench(args, log, dtypes, guard)
    load = foreign_load(snap0, cpu_snapshot())
    machine["load_during_run"] = load
    for dt, models in by_dtype.items():
        mem = None
        if not args.no_memory and "error" not in models:
            mem = measure_memory(args, log, dt)
        for key, r in models.items():
            if not isinstance(r, dict) or "error" in r:
                continue
            r["dense_input"] = [1, 3, H, W]
            r["peak_memory_bytes"] = mem.get(key) if mem else None
        for key, name, _ in MODELS:  # folded (benchmarked) and unfolded nets: same conv MACs
            r = models.get(key)
            if isinstance(r, dict) and "dense" in r:
                assert abs(r["dense"]["gmacs"] - gm[name]) < 1e-9, (key, dt, gm[name])

    res["rn18_gmacs_dense"] = gm["swiftnet_rn18"]
    res["rn50_gmacs_dense"] = gm["swiftnet_rn50"]
    res["effl1_gmacs_dense"] = gm["swiftnet_effl1"]
    for dt, models in by_dtype.items():
        sfx = DTYPE_SUFFIX[dt]
        res["models" + sfx] = models
        if "error" not in models:
            headline(res, models, sfx)
    res["rn18_block_ops_share_40_note"] = (
        "(policy + sample + pad + combine) / total of the profiled 40% FixedMask run (policy "
        "time ~0 there); the learned-policy row adds the policy network"
    )
    res["latency_ratio_vs_static_equal_gmacs_note"] = (
        "median latency of the SegBlocks 40% FixedMask row / median latency of the static "
        "reduced-resolution SwiftNet with the nearest GMACs at or above it (same dtype, same "
        "run); details per model in models[_bf16].<model>.static_equal_gmacs"
    )
    res["errors"] = guard.errors

    p = lambda s="": print(s, file=out)
    p("SegBlocks model benchmark (SegBlocks-RN18 / -EffL1 vs SwiftNet, paper Tables 5/6)")
    print_machine(p, machine, f"; device {args.device}")
    p(
        f"settings  : {' and '.join(dtypes)} (bfloat16 = weights and inputs "
        ".to(torch.bfloat16), fresh models per dtype), channels_last, inference_mode, eval BN "
        "folded into convs (backbones)"
    )
    p(
        f"input     : 1x3x{H}x{W}, block {BLOCK} (grid {H // BLOCK}x{W // BLOCK}), "
        f"{NUM_CLASSES} classes; fixed random masks with round(f*{(H // BLOCK) * (W // BLOCK)}) "
        "HR blocks (metadata rebuilt every forward)"
    )
    p(
        f"repetition: median of {args.runs} timed runs after {args.warmup} warm-up; every run "
        f"preceded by a dense SwiftNet {H}x{W} run of the same dtype; {args.profile_runs} "
        f"profiled run(s) per SegBlocks row; seed {args.seed}"
        + ("; rounds alternate between the dtypes" if len(dtypes) > 1 else "")
    )
    p(f"memory    : {mem_method}")
    p(f"date      : {config['date']}")
    print_noise(p, load, "the timing")
    p()
    p(f"dense GMACs at {H}x{W} (conv + linear, segblocks.measuring.macs) vs paper (1024x2048):")
    for n, v in res["dense_gmacs"].items():
        p(f"  {n:16s} {v['ours']:7.1f}   paper {v['paper']:6.1f}")
    for dt, models in by_dtype.items():
        if "error" in models:
            p()
            p(f"== {dt}: FAILED before any model ran ==")
            p(models["error"].rstrip())
            continue
        for key, r in models.items():
            p()
            print_model(key, r, r.get("peak_memory_bytes"), out)
    p()
    p(f"ms = median latency; dense ms = median of the dense {H}x{W} runs interleaved with that")
    p("row; speedup = dense ms / ms; theory = dense GMACs / row GMACs (policy net included);")
    p("ratio = speedup / theory; peak MB = peak RSS increase of one forward (see 'memory').")
    p("Per-module ms (paper Table 6) from separate profiled runs (BlockStats + hooks on the")
    p("policy): rest = total - policy - sample - pad - combine; it includes the SPP's dense")
    p("fallback re-split, shown below each table. ops % = (policy+sample+pad+combine) / total.")
    p()
    p("headline:")
    for k in GMACS_KEYS:
        p(f"  {k:42s} {res[k]:9.3f}")
    p("  measured in the same run (columns: dtype):")
    print_headline(p, res, HEADLINE, dtypes, width=42)
    p(f"  ({res['rn18_block_ops_share_40_note']})")
    p(f"  (latency_ratio_vs_static_equal_gmacs: {res['latency_ratio_vs_static_equal_gmacs_note']})")
    if guard.errors:
        p(f"FAILED: {', '.join(guard.errors)} (tracebacks above and in the JSON 'errors')")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        log(f"wrote {args.json}")
    return 1 if guard.errors else 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark SegBlocks-RN18 / -EffL1 against their dense SwiftNets and "
        "static reduced-resolution SwiftNets: GMACs, CPU latency, speedup vs theory, peak "
        "memory, time per module (paper Tables 5/6).",
    )
    add_run_arguments(ap, "BlockStats-profiled runs per SegBlocks row (default 2; quick 1)")
    ap.add_argument(
        "--size",
        type=parse_size,
        default=SIZE,
        metavar="HxW",
        help="input size (default 1024x2048; the reduced baselines scale with it). For smoke "
        "tests only: the paper comparison is at 1024x2048",
    )
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument(
        "--models",
        default=",".join(k for k, _, _ in ALL_MODELS),
        help="comma-separated subset of "
        + ",".join(k for k, _, _ in ALL_MODELS)
        + " (default all)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child run")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    add_dtype_argument(ap, "weights and input dtype")
    args = resolve_run_arguments(ap, ap.parse_args(argv))
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    known = [k for k, _, _ in ALL_MODELS]
    if not keys or any(k not in known for k in keys):
        ap.error(f"--models {args.models!r}: choose from {', '.join(known)}")
    global MODELS
    MODELS = tuple(m for m in ALL_MODELS if m[0] in keys)
    return args


if __name__ == "__main__":
    sys.exit(main())
