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

Columns: GMACs (exact conv + linear MACs from ``segblocks.engine.macs``, policy network
included), CPU latency (median over timed runs after warm-up; every run of a configuration is
preceded by a run of the dense SwiftNet at 1024x2048, so machine noise hits both alike), the
measured speedup (median dense time of the runs interleaved with that row / median row time),
the theoretical speedup (dense MACs / row MACs), their ratio, the peak memory of one forward and
the time per module as in paper Table 6 (policy, sample, pad, combine, rest = total - those),
from separate profiled runs with ``BlockStats`` active and forward hooks timing the policy call.

Everything runs under ``torch.inference_mode()``, float32, channels-last, with eval batch norm
folded into the preceding convs (``segblocks.blocks.fuse.fold_batchnorm``) for the dense and the
block model alike (the SegBlocks models wrap the very same folded SwiftNet; pre-activation BNs of
the SwiftNet decoder / SPP / head are left alone by the folding). EfficientNet-Lite1 uses its
packaged (offline) ImageNet backbone weights, everything else is randomly initialised.

Usage::

    python benchmarks/segblocks_model.py --json results/segblocks_model.json  # several minutes
    python benchmarks/segblocks_model.py --quick
    python benchmarks/segblocks_model.py --quick --size 256x512      # smoke test (sizes reduced)
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time

import torch

from segblocks.blocks.fuse import fold_batchnorm
from segblocks.blocks.stats import BlockStats
from segblocks.engine.macs import count_macs_dense
from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel
from segblocks.policies import FixedMask, LearnedPolicy, Policy, PolicyOutput

SIZE = (1024, 2048)
BLOCK = 128
FRACS = (1.0, 0.2, 0.4, 0.6)  # all-HR first: its check and MACs come first in the table
LEARNED_FRAC = 0.4
REDUCED = ((768, 1536), (672, 1344))  # HxW of the static reduced-resolution baselines
NUM_CLASSES = 19
# (key, registry name, pretrained backbone): EffL1 weights ship with a pip package (offline)
MODELS = (("rn18", "swiftnet_rn18", False), ("effl1", "swiftnet_effl1", True))
PAPER_GMACS = {"swiftnet_rn18": 104.1, "swiftnet_rn50": 206.3, "swiftnet_effl1": 24.9}
MODULES = ("policy", "sample", "pad", "combine")


# ---------------------------------------------------------------------------- helpers
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    _TUNED_MALLOC,
    _reexec_with_malloc,
    add_run_arguments,
    allocator,
    cpu_model,
    cpu_snapshot,
    foreign_load,
    median,
    random_mask,
    resolve_run_arguments,
)

# The memory measurement runs in a child process whose glibc maps every block >= 64 KiB
# separately and returns it on free (fixed thresholds, no dynamic growth), so that the resident
# set follows the live tensors and the peak of one forward is visible in VmHWM.
_MEMORY_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 16),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 17),
}
_ALL_MALLOC_KEYS = set(_TUNED_MALLOC) | set(_MEMORY_MALLOC) | {"MALLOC_TOP_PAD_"}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


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
    submodule of the model, so ``segblocks.engine.macs`` counts its convs as ``policy`` rows)
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
def build(args, log) -> dict:
    """Models, inputs and the run functions of every configuration (same in the memory child)."""
    device = torch.device(args.device)
    H, W = args.size
    gh, gw = H // BLOCK, W // BLOCK
    G = gh * gw
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    x = torch.randn(1, 3, H, W, generator=gen)
    masks = {f: random_mask(gen, gh, gw, round(f * G)) for f in FRACS}
    red = reduced_sizes(args.size)
    x_red = {hw: torch.randn(1, 3, *hw, generator=gen) for hw in red}
    cl = torch.channels_last
    x = x.to(device).contiguous(memory_format=cl)
    x_red = {hw: v.to(device).contiguous(memory_format=cl) for hw, v in x_red.items()}
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
        net = fold_batchnorm(net.eval().to(device), example).to(memory_format=cl)
        pol = LearnedPolicy(block_size=BLOCK, init_tau=LEARNED_FRAC).eval().to(device)
        gsz = pol.input_size((gh, gw))
        pol.net = fold_batchnorm(pol.net, torch.randn(1, 3, *gsz, device=device))
        pol = pol.to(memory_format=cl)
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
                "label": f"SwiftNet {hw[0]}x{hw[1]}",
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
    return {"device": device, "x": x, "grid": (gh, gw), "n_hr": fr, "models": models, "red": red}


# ---------------------------------------------------------------------------- memory child
def memory_child(args) -> int:
    """Peak memory of one forward per configuration; prints JSON (run in a fresh process)."""
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    setup = build(args, log)
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


def measure_memory(args, log) -> dict | None:
    if torch.device(args.device).type == "cuda":
        with torch.inference_mode():
            return json.loads(_run_memory_inline(args))
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
    ]
    log("[memory] child process: one warm-up + one measured forward per configuration")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        log(f"[memory] child failed ({p.returncode}):\n{p.stderr}")
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def _run_memory_inline(args) -> str:  # CUDA: the caching allocator's counters, same process
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        memory_child(args)
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

    pol, fb = model.policy, model.spp
    hooks += [pol.register_forward_pre_hook(at("pol0")), pol.register_forward_hook(at("pol1"))]
    hooks += [fb.register_forward_pre_hook(at("fb0")), fb.register_forward_hook(at("fb1"))]
    inner = fb.module
    hooks += [inner.register_forward_pre_hook(at("in0")), inner.register_forward_hook(at("in1"))]
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
        "spp_dense": t["in1"] - t["in0"],
        "spp_resplit": t["fb1"] - t["in1"],
    }
    res["rest"] = total - sum(res[k] for k in MODULES)
    return res


def bench(args, log) -> dict:
    setup = build(args, log)
    device, x = setup["device"], setup["x"]
    H, W = args.size
    gh, gw = setup["grid"]
    log(f"1x3x{H}x{W}, block {BLOCK} (grid {gh}x{gw}), HR blocks {setup['n_hr']}")

    def clock(fn):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    out: dict = {}
    with torch.inference_mode():
        # ---------------------------------------------------------------- MACs + checks
        for key, m in setup["models"].items():
            net = m["net"]
            dense_macs = count_macs_dense(net, x).total
            r = {
                "model": m["name"],
                "backbone_weights": m["weights"],
                "dense": {"macs": dense_macs, "gmacs": dense_macs / 1e9},
                "configs": {},
            }
            d_out = net(x)
            for _ in range(2):  # second call: the learned in-place fast path
                y = m["seg"][1.0](x).logits
            r["allhr_rel_err"] = rel_err(y, d_out)
            r["allhr_max_abs_err"] = (y - d_out).abs().max().item()
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
                    cr["macs_hr"], cr["macs_lr"], cr["macs_dense_layers"] = (
                        rep.hr,
                        rep.lr,
                        rep.dense,
                    )
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
                f"{key}: all-HR SegBlocks MACs {r['configs']['seg100']['macs']} != dense "
                f"{dense_macs}"
            )
            r["policy_net"] = {
                "macs": pm,
                "gmacs": pm / 1e9,
                "input": list(m["policy_net"].input_size((gh, gw))),
            }
            log(
                f"[{key}] dense {dense_macs / 1e9:.2f} GMACs; all-HR rel. err "
                f"{r['allhr_rel_err']:.2e}"
            )
            out[key] = r

        # ---------------------------------------------------------------- timing
        times = {k: {c: [] for c in m["cfgs"]} for k, m in setup["models"].items()}
        dense_t = {k: {c: [] for c in m["cfgs"]} for k, m in setup["models"].items()}
        pol_t = {k: [] for k in setup["models"]}
        n_rounds = args.warmup + args.runs
        for r in range(n_rounds):
            warm = r < args.warmup
            # rounds over all configurations, so that slow phases of the machine spread over
            # every row instead of hitting a few rows
            for key, m in setup["models"].items():
                for c, cfg in m["cfgs"].items():
                    td = clock(m["dense"])
                    tc = clock(cfg["run"])
                    if not warm:
                        dense_t[key][c].append(td)
                        times[key][c].append(tc)
                tp = clock(m["policy_call"])
                if not warm:
                    pol_t[key].append(tp)
                log(
                    f"  round {r + 1}/{n_rounds}{' (warm-up)' if warm else ''} [{key}]: "
                    f"dense {td:.3f}s, last {c} {tc:.3f}s, policy net {tp * 1e3:.1f}ms"
                )

        # ---------------------------------------------------------------- profiled runs
        for key, m in setup["models"].items():
            for c, cr in out[key]["configs"].items():
                if cr["kind"] != "seg":
                    continue
                model = m["cfgs"][c]["model"]
                runs = [profiled_run(model, x, device) for _ in range(args.profile_runs)]
                prof = {k: median([p[k] for p in runs]) for k in runs[0]}
                prof["shares"] = {k: prof[k] / prof["total"] for k in (*MODULES, "rest")}
                ops = sum(prof[k] for k in MODULES)
                prof["block_ops_s"] = ops
                prof["block_ops_share"] = ops / prof["total"]
                prof["runs"] = runs
                cr["profile"] = prof
            log(f"[{key}] profiled runs done")

    for key in setup["models"]:
        r = out[key]
        all_d = [t for c in times[key] for t in dense_t[key][c]]
        r["dense"].update({"median_s": median(all_d), "min_s": min(all_d), "times_s": all_d})
        pt = pol_t[key]
        r["policy_net"].update({"median_s": median(pt), "min_s": min(pt), "times_s": pt})
        for c, cr in r["configs"].items():
            med, dmed = median(times[key][c]), median(dense_t[key][c])
            cr.update(
                {
                    "median_s": med,
                    "min_s": min(times[key][c]),
                    "times_s": times[key][c],
                    "dense_median_s": dmed,
                    "dense_times_s": dense_t[key][c],
                    "speedup": dmed / med,
                    "speedup_paired_median": median(
                        [d / t for d, t in zip(dense_t[key][c], times[key][c], strict=True)]
                    ),
                    "speedup_min": min(dense_t[key][c]) / min(times[key][c]),
                    "ratio": dmed / med / cr["theory"],
                }
            )
    return out


# ---------------------------------------------------------------------------- printing
def print_model(key: str, r: dict, mem: dict | None, out) -> None:
    p = lambda s="": print(s, file=out)
    d = r["dense"]
    pn = r["policy_net"]
    p(f"== {r['model']} ({r['backbone_weights']} weights), {NUM_CLASSES} classes ==")
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
    p("rest of the SegBlocks rows: of which dense SPP / SPP re-split into blocks (ms):")
    p(
        "  "
        + "; ".join(
            f"{cr['label'].replace('SegBlocks ', '')}: {cr['profile']['spp_dense'] * 1e3:.1f} / "
            f"{cr['profile']['spp_resplit'] * 1e3:.1f}"
            for cr in r["configs"].values()
            if cr.get("profile")
        )
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        return memory_child(args)
    if argv is None and torch.device(args.device).type == "cpu":
        _reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    out = sys.stdout
    machine = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "allocator": allocator(),
        "device": args.device,
    }
    H, W = args.size
    is_cuda = torch.device(args.device).type == "cuda"
    mem_method = (
        "torch.cuda.max_memory_allocated() - memory_allocated() before the run, after "
        "reset_peak_memory_stats(); one warm-up first"
        if is_cuda
        else "CPU: in a fresh child process (glibc with MALLOC_MMAP_THRESHOLD_=64KiB, "
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
        "dtype": "float32",
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

    snap0 = cpu_snapshot()
    models = bench(args, log)
    load = foreign_load(snap0, cpu_snapshot())
    machine["load_during_run"] = load
    mem = None if args.no_memory else measure_memory(args, log)
    for key, r in models.items():
        r["dense_input"] = [1, 3, H, W]
        r["peak_memory_bytes"] = mem.get(key) if mem else None
    res["models"] = models
    for key, name, _ in MODELS:  # folded (benchmarked) and unfolded nets: same conv MACs
        assert abs(models[key]["dense"]["gmacs"] - gm[name]) < 1e-9, (key, gm[name])

    res["rn18_gmacs_dense"] = gm["swiftnet_rn18"]
    res["rn50_gmacs_dense"] = gm["swiftnet_rn50"]
    res["effl1_gmacs_dense"] = gm["swiftnet_effl1"]
    res["rn18_speedup_over_theory_40"] = models["rn18"]["configs"]["seg40"]["ratio"]
    res["rn18_block_ops_share_40"] = models["rn18"]["configs"]["seg40"]["profile"][
        "block_ops_share"
    ]
    res["rn18_block_ops_share_40_note"] = (
        "(policy + sample + pad + combine) / total of the profiled 40% FixedMask run (policy "
        "time ~0 there); the learned-policy row adds the policy network"
    )
    res["effl1_speedup_over_theory_40"] = models["effl1"]["configs"]["seg40"]["ratio"]
    res["rn18_all_hr_overhead"] = (
        models["rn18"]["configs"]["seg100"]["median_s"]
        / models["rn18"]["configs"]["seg100"]["dense_median_s"]
        - 1
    )
    res["effl1_all_hr_overhead"] = (
        models["effl1"]["configs"]["seg100"]["median_s"]
        / models["effl1"]["configs"]["seg100"]["dense_median_s"]
        - 1
    )

    p = lambda s="": print(s, file=out)
    p("SegBlocks model benchmark (SegBlocks-RN18 / -EffL1 vs SwiftNet, paper Tables 5/6)")
    p(
        f"machine   : {machine['platform']}; CPU {machine['cpu']} "
        f"({machine['logical_cpus']} logical); threads {machine['threads']}; device {args.device}"
    )
    p(
        f"software  : python {machine['python']}, torch {machine['torch']}, "
        f"allocator {machine['allocator']}"
    )
    p("settings  : float32, channels_last, inference_mode, eval BN folded into convs (backbones)")
    p(
        f"input     : 1x3x{H}x{W}, block {BLOCK} (grid {H // BLOCK}x{W // BLOCK}), "
        f"{NUM_CLASSES} classes; fixed random masks with round(f*{(H // BLOCK) * (W // BLOCK)}) "
        "HR blocks (metadata rebuilt every forward)"
    )
    p(
        f"repetition: median of {args.runs} timed runs after {args.warmup} warm-up; every run "
        f"preceded by a dense SwiftNet {H}x{W} run; {args.profile_runs} profiled run(s) per "
        f"SegBlocks row; seed {args.seed}"
    )
    p(f"memory    : {mem_method}")
    p(f"date      : {config['date']}")
    if load is not None:
        p(
            f"noise     : during the timing other processes used "
            f"{load['other_processes_cores']:.2f} cores on average, hypervisor steal "
            f"{load['steal_cores']:.2f} cores (wall {load['wall_s']:.0f} s)"
        )
    p()
    p(f"dense GMACs at {H}x{W} (conv + linear, segblocks.engine.macs) vs paper (1024x2048):")
    for n, v in res["dense_gmacs"].items():
        p(f"  {n:16s} {v['ours']:7.1f}   paper {v['paper']:6.1f}")
    for key, r in models.items():
        p()
        print_model(key, r, r["peak_memory_bytes"], out)
    p()
    p(f"ms = median latency; dense ms = median of the dense {H}x{W} runs interleaved with that")
    p("row; speedup = dense ms / ms; theory = dense GMACs / row GMACs (policy net included);")
    p("ratio = speedup / theory; peak MB = peak RSS increase of one forward (see 'memory').")
    p("Per-module ms (paper Table 6) from separate profiled runs (BlockStats + hooks on the")
    p("policy): rest = total - policy - sample - pad - combine; it includes the SPP's dense")
    p("fallback re-split, shown below each table. ops % = (policy+sample+pad+combine) / total.")
    p()
    p("headline:")
    for k in (
        "rn18_gmacs_dense",
        "rn50_gmacs_dense",
        "effl1_gmacs_dense",
        "rn18_speedup_over_theory_40",
        "rn18_block_ops_share_40",
        "effl1_speedup_over_theory_40",
        "rn18_all_hr_overhead",
        "effl1_all_hr_overhead",
    ):
        p(f"  {k:32s} {res[k]:.3f}")
    p(f"  ({res['rn18_block_ops_share_40_note']})")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        log(f"wrote {args.json}")
    return 0


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
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child run")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return resolve_run_arguments(ap, ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
