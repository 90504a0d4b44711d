#!/usr/bin/env python
"""Training-step benchmark: SegBlocks vs the dense SwiftNet (forward + loss + backward + Adam).

Setting (the paper's CamVid recipe, ``configs/camvid_rn18.yaml``): SwiftNet-RN18
(``swiftnet_rn18``) and SwiftNet-EffL1 (``swiftnet_effl1``) built with
``create_model(name, num_classes=11, output_stride=16)`` (random weights), batch 8 of 352x352
random crops (random normal images, random labels in ``[0, 11)``), block 32, training mode.
Variants per model, each its own model and optimiser built from the same seed:

dense
    the SwiftNet itself; loss = the task cross-entropy.
all_hr
    ``SegBlocksModel(net, policy="all_hr", block_size=32)``; loss = the task cross-entropy
    (``HybridLoss`` without policy term, as the trainer computes it for fixed policies).
tau04
    ``SegBlocksModel(net, policy="learned", block_size=32)`` with the hybrid REINFORCE loss
    ``HybridLoss(tau=0.4, gamma=10, beta=4, block_size=32)``: the policy network samples its
    blocks (Bernoulli, training mode) and is trained with the network. tau is the loss's
    target; the policy starts at its default ``init_tau`` (0.5) as in the trainer
    (``--policy-init-tau`` changes it), so an untrained policy gives ~50 % HR blocks: the
    realised HR fraction is reported next to the times.

The step is the trainer's: forward (under ``torch.autocast("cpu", dtype=torch.bfloat16)`` for
bfloat16; float32 master weights either way), ``criterion(out.logits.float(), label, out)``,
``zero_grad``, ``loss.backward()``, Adam ``step()`` (two groups as the trainer: backbone lr and
weight decay x 0.25). Timed: the whole step, and forward+loss / backward / optimiser separately.

Repetition: warm-up steps, then the median of the timed steps. Every round runs one step of
every (model, dtype, variant) on the same fresh batch, in an order rotated from round to round,
so that load drifts of a shared machine hit every variant alike. Ratios: median SegBlocks step /
median dense step of the same model and dtype (also the median of the per-round ratios).

Headline JSON keys: ``{rn18,effl1}_train_step_ratio_{all_hr,tau04}`` (float32) and the same
with ``_bf16`` (bfloat16 autocast). A variant that raises is recorded as an error string (table
and JSON ``errors``) and the other variants go on.

Usage::

    python benchmarks/train_step.py --json results/train_step.json      # full (~10-15 min)
    python benchmarks/train_step.py --quick --models rn18 --dtype float32  # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from types import SimpleNamespace

import torch

from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel
from segblocks.training.losses import HybridLoss

MODELS = {"rn18": "swiftnet_rn18", "effl1": "swiftnet_effl1"}
VARIANTS = ("dense", "all_hr", "tau04")
VARIANT_LABELS = {
    "dense": "dense SwiftNet",
    "all_hr": "SegBlocks all-HR",
    "tau04": "SegBlocks learned, tau 0.4",
}
NUM_CLASSES = 11
OUTPUT_STRIDE = 16
BATCH = 8
CROP = 352
BLOCK = 32
TAU = 0.4
GAMMA, BETA = 10.0, 4.0
LR, WEIGHT_DECAY, BACKBONE_LR_MULT = 4e-4, 1e-4, 0.25  # configs/camvid_rn18.yaml
RUNS = {"runs": (5, 2), "warmup": (2, 1)}  # (full, --quick)

from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    DTYPE_SUFFIX,
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
    resolve_run_arguments,
    selected_dtypes,
)

HEADLINE = tuple(f"{m}_train_step_ratio_{v}" for m in MODELS for v in VARIANTS[1:])


def build_variant(args, model_key: str, variant: str) -> dict:
    """A fresh model, criterion and optimiser (same seed: same initial weights everywhere)."""
    torch.manual_seed(args.seed)
    net = create_model(MODELS[model_key], num_classes=NUM_CLASSES, output_stride=OUTPUT_STRIDE)
    if variant == "dense":
        model = net
    elif variant == "all_hr":
        model = SegBlocksModel(net, policy="all_hr", block_size=BLOCK)
    else:
        kw = {} if args.policy_init_tau is None else {"init_tau": args.policy_init_tau}
        model = SegBlocksModel(net, policy="learned", block_size=BLOCK, **kw)
    model = model.train()
    if args.memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    criterion = HybridLoss(TAU, gamma=GAMMA, beta=BETA, criterion="ce", block_size=BLOCK)
    # the trainer's two groups: backbone (lr, weight decay x 0.25) and the rest
    bb = {id(p) for p in net.backbone_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if id(p) in bb],
            "lr": LR * BACKBONE_LR_MULT,
            "weight_decay": WEIGHT_DECAY * BACKBONE_LR_MULT,
        },
        {"params": [p for p in params if id(p) not in bb], "lr": LR, "weight_decay": WEIGHT_DECAY},
    ]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]])
    return {
        "model": model,
        "criterion": criterion,
        "optimizer": optimizer,
        "segblocks": variant != "dense",
        "params": sum(p.numel() for p in params),
        "steps": [],  # (total, forward+loss, backward, optimiser) per timed step
        "hr": [],  # realised HR fraction per step (all steps, warm-up included)
        "loss": [],
        "timed_hr": [],
    }


def train_step(v: dict, image, label, bf16: bool) -> tuple[tuple[float, ...], float, float]:
    """One training step; ``((total, fwd, bwd, opt) seconds, mean HR fraction, loss)``."""
    model, criterion, optimizer = v["model"], v["criterion"], v["optimizer"]
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(image)
    if v["segblocks"]:
        logits = out.logits
    else:  # the dense network: the task loss only (what HybridLoss does without log_probs)
        logits = out
        out = SimpleNamespace(grid=torch.ones(image.shape[0], 1, 1, dtype=torch.bool))
    res = criterion(logits.float(), label, out)
    t1 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    res.loss.backward()
    t2 = time.perf_counter()
    optimizer.step()
    t3 = time.perf_counter()
    return (t3 - t0, t1 - t0, t2 - t1, t3 - t2), res.hr_fraction.mean().item(), res.loss.item()


def summarise(v: dict, dense: dict | None) -> dict:
    steps = v["steps"]
    tot = [s[0] for s in steps]
    r = {
        "median_s": median(tot),
        "min_s": min(tot),
        "times_s": tot,
        "forward_loss_median_s": median([s[1] for s in steps]),
        "backward_median_s": median([s[2] for s in steps]),
        "optimizer_median_s": median([s[3] for s in steps]),
        "hr_fraction_timed_mean": sum(v["timed_hr"]) / len(v["timed_hr"]),
        "hr_fraction_per_step": v["hr"],
        "loss_per_step": v["loss"],
        "parameters": v["params"],
    }
    if not v["segblocks"]:
        r["hr_fraction_timed_mean"] = None
        r["hr_fraction_per_step"] = None
    if dense is not None and v is not dense and dense["steps"]:
        d = [s[0] for s in dense["steps"]]
        r["ratio_vs_dense"] = r["median_s"] / median(d)
        r["ratio_vs_dense_min"] = r["min_s"] / min(d)
        # per round: this variant's step / the dense step of the same round and batch
        if len(d) == len(tot):
            r["ratio_vs_dense_paired_median"] = median([t / s for t, s in zip(tot, d, strict=True)])
    return r


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark SegBlocks training steps (forward, hybrid loss, backward, Adam) "
        "against the dense SwiftNet-RN18 / -EffL1: batch 8, 352x352, block 32, output stride "
        "16, float32 and bfloat16 autocast.",
    )
    add_run_arguments(ap, None, RUNS)
    add_dtype_argument(ap, "float32, or bfloat16 autocast (float32 weights)")
    ap.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated subset of {','.join(MODELS)} (default: all)",
    )
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all; the ratios need "
        "dense)",
    )
    ap.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="model weights and input batch layout (default channels_last, as the other "
        "benchmarks; the trainer's default is contiguous, channels_last: true in a config)",
    )
    ap.add_argument(
        "--policy-init-tau",
        type=float,
        help="initial HR probability of the learned policy (default: LearnedPolicy's 0.5, as "
        "the trainer)",
    )
    args = resolve_run_arguments(ap, ap.parse_args(argv), RUNS)
    for name, allowed in (("models", MODELS), ("variants", VARIANTS)):
        got = [s.strip() for s in getattr(args, name).split(",") if s.strip()]
        bad = [g for g in got if g not in allowed]
        if bad or not got:
            ap.error(f"--{name}: {bad or 'empty'}; choose from {', '.join(allowed)}")
        setattr(args, name, [a for a in allowed if a in got])
    return args


def print_table(p, results: dict, dtypes, models, variants) -> None:
    cell_w = 40
    hdr1 = f"{'':6} {'variant':<27}" + "".join(f" | {d:^{cell_w}}" for d in dtypes)
    hdr2 = f"{'model':6} {'':<27}" + "".join(
        f" | {'step ms':>8} {'x dense':>7} {'fwd':>6} {'bwd':>6} {'opt':>4} {'HR %':>4}"
        for _ in dtypes
    )
    p(hdr1)
    p(hdr2)
    p("-" * len(hdr2))
    for m in models:
        for v in variants:
            line = f"{m:6} {VARIANT_LABELS[v]:<27}"
            for d in dtypes:
                r = results[m][d].get(v)
                if r is None:
                    line += f" | {'':{cell_w}}"
                elif "error" in r:
                    line += f" | {'ERROR (see below)':<{cell_w}}"
                else:
                    ratio = r.get("ratio_vs_dense")
                    hr = r.get("hr_fraction_timed_mean")
                    line += (
                        f" | {r['median_s'] * 1e3:8.0f} "
                        + (f"{ratio:7.3f}" if ratio is not None else f"{'':7}")
                        + f" {r['forward_loss_median_s'] * 1e3:6.0f}"
                        f" {r['backward_median_s'] * 1e3:6.0f}"
                        f" {r['optimizer_median_s'] * 1e3:4.0f} "
                        + (f"{hr * 100:4.0f}" if hr is not None else f"{'-':>4}")
                    )
            p(line)


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    out = sys.stdout
    dtypes = selected_dtypes(args)
    guard = Guard(log)
    machine = machine_info()
    cl = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    config = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": args.threads,
        "seed": args.seed,
        "torch": torch.__version__,
        "dtype": args.dtype,
        "dtypes": dtypes,
        "bfloat16": 'torch.autocast("cpu", dtype=torch.bfloat16) around the forward; float32 '
        "weights, loss computed on logits.float()",
        "models": {m: MODELS[m] for m in args.models},
        "variants": {v: VARIANT_LABELS[v] for v in args.variants},
        "model_kwargs": {"num_classes": NUM_CLASSES, "output_stride": OUTPUT_STRIDE},
        "weights": "random init",
        "batch": BATCH,
        "crop": [CROP, CROP],
        "input": "torch.randn images, labels torch.randint(0, 11); a new batch every round",
        "block_size": BLOCK,
        "tau": TAU,
        "gamma": GAMMA,
        "beta": BETA,
        "criterion": "ce",
        "policy_init_tau": args.policy_init_tau,
        "optimizer": f"Adam, lr {LR} (backbone x {BACKBONE_LR_MULT}), weight decay "
        f"{WEIGHT_DECAY} (backbone x {BACKBONE_LR_MULT})",
        "memory_format": args.memory_format,
        "step": "forward (autocast for bf16) + HybridLoss(logits.float()) + zero_grad + "
        "backward + optimizer.step",
    }

    # (model, dtype, variant) -> state; built up front (fresh per dtype, same seed)
    entries = [(m, d, v) for m in args.models for d in dtypes for v in args.variants]
    states: dict = {}
    for e in entries:
        st = guard("/".join(e), lambda e=e: build_variant(args, e[0], e[2]))
        if st is not None:
            states[e] = st
    log(
        f"{BATCH}x3x{CROP}x{CROP}, block {BLOCK}, {len(entries)} variants: "
        + ", ".join("/".join(e) for e in entries)
    )

    gen = torch.Generator().manual_seed(args.seed)
    snap0 = cpu_snapshot()
    n_rounds = args.warmup + args.runs
    for r in range(n_rounds):
        warm = r < args.warmup
        image = torch.randn(BATCH, 3, CROP, CROP, generator=gen).contiguous(memory_format=cl)
        label = torch.randint(0, NUM_CLASSES, (BATCH, CROP, CROP), generator=gen)
        k = r % len(entries)
        msg = []
        for e in entries[k:] + entries[:k]:  # rotated order: no variant always first / last
            st = states.get(e)
            if st is None:
                continue
            got = guard(
                "/".join(e),
                lambda st=st, e=e: train_step(st, image, label, e[1] == "bfloat16"),
            )
            if got is None:
                continue
            times, hr, loss = got
            st["hr"].append(hr)
            st["loss"].append(loss)
            if not warm:
                st["steps"].append(times)
                st["timed_hr"].append(hr)
            msg.append(
                f"{'/'.join(e)} {times[0]:.2f}s" + (f" HR {hr:.2f}" if e[2] != "dense" else "")
            )
        log(f"  round {r + 1}/{n_rounds}{' (warm-up)' if warm else ''}: " + ", ".join(msg))
    load = foreign_load(snap0, cpu_snapshot())
    machine["load_during_run"] = load

    results: dict = {m: {d: {} for d in dtypes} for m in args.models}
    table = []
    for m, d, v in entries:
        key = f"{m}/{d}/{v}"
        if not guard.ok(key):
            results[m][d][v] = {"error": guard.errors[key]}
            row = {"error": guard.errors[key].splitlines()[0]}
        else:
            dense = states.get((m, d, "dense"))
            if dense is not None and not guard.ok(f"{m}/{d}/dense"):
                dense = None
            results[m][d][v] = summarise(states[(m, d, v)], dense)
            rr = results[m][d][v]
            row = {
                "step_ms": rr["median_s"] * 1e3,
                "ratio_vs_dense": rr.get("ratio_vs_dense"),
                "forward_loss_ms": rr["forward_loss_median_s"] * 1e3,
                "backward_ms": rr["backward_median_s"] * 1e3,
                "optimizer_ms": rr["optimizer_median_s"] * 1e3,
                "hr_fraction": rr["hr_fraction_timed_mean"],
            }
        table.append({"model": m, "dtype": d, "variant": v, **row})

    res: dict = {"config": config, "machine": machine, "table": table, "results": results}
    for m in args.models:
        for d in dtypes:
            for v in args.variants[1:] if args.variants[0] == "dense" else ():
                ratio = results[m][d][v].get("ratio_vs_dense")
                if ratio is not None:
                    res[f"{m}_train_step_ratio_{v}{DTYPE_SUFFIX[d]}"] = ratio
    res["train_step_ratio_note"] = (
        "median SegBlocks training step / median dense SwiftNet step, same model and dtype, "
        "same run (bf16: autocast); tau04 = learned policy with the hybrid loss at tau 0.4, its "
        "realised HR fraction in table[].hr_fraction"
    )
    res["errors"] = guard.errors

    p = lambda s="": print(s, file=out)
    p("SegBlocks training-step benchmark (SegBlocks vs dense SwiftNet)")
    print_machine(p, machine)
    p(
        f"settings  : {' and '.join(dtypes)} (bfloat16 = autocast, float32 weights), "
        f"{args.memory_format}, train mode; batch {BATCH}x3x{CROP}x{CROP} random, "
        f"{NUM_CLASSES} classes, output stride {OUTPUT_STRIDE}, block {BLOCK}, random weights"
    )
    p(
        f"step      : forward + HybridLoss (tau {TAU}, gamma {GAMMA:g}, beta {BETA:g}; task CE "
        f"only without a learned policy) + backward + Adam (lr {LR:g}, backbone x "
        f"{BACKBONE_LR_MULT:g})"
    )
    p(
        f"repetition: median of {args.runs} timed steps after {args.warmup} warm-up; one step "
        f"of every variant per round on the same batch, order rotated each round; seed {args.seed}"
    )
    p(f"date      : {config['date']}")
    print_noise(p, load)
    p()
    print_table(p, results, dtypes, args.models, args.variants)
    p()
    p("step ms = median of the whole step; x dense = median step / median dense step (same")
    p("model and dtype); fwd = forward + loss, bwd = zero_grad + backward, opt = Adam step")
    p("(medians, ms);")
    p(
        "HR % = realised high-res block fraction of the timed steps (learned policy: "
        f"sampled; untrained, init_tau {args.policy_init_tau or 0.5:g}, target tau {TAU})"
    )
    for key, err in guard.errors.items():
        p(f"ERROR {key}: {err.splitlines()[0]}")
    p()
    p("headline (measured in the same run; columns: dtype):")
    print_headline(p, res, HEADLINE, dtypes, width=32)
    if guard.errors:
        p(f"FAILED: {', '.join(guard.errors)} (tracebacks on stderr and in the JSON 'errors')")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        log(f"wrote {args.json}")
    return 1 if guard.errors else 0


if __name__ == "__main__":
    sys.exit(main())
