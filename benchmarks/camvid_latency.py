#!/usr/bin/env python
"""CamVid latency (issue 16): SegBlocks against the static networks, same fast eager form.

Models: the committed CamVid checkpoints (``checkpoints/camvid/``, ``--checkpoints`` for
another folder; ``DIR/NAME.pt`` or ``DIR/NAME/last.pt``): static SwiftNet-EffL1 at 1.0x, 0.8x
and 0.6x input scale, SegBlocks with the learned policy at tau 0.4 and 0.2, and the heuristic
policy at tau 0.4 and 0.2. Missing checkpoints are skipped (listed in the output).

Form: every model goes through :func:`segblocks.models.inference.optimize_for_inference`
(eval, batch norm folded into the convs of the network and of the learned policy's network,
channels-last weights), a fresh copy per dtype (float32 and bfloat16, ``--dtype``), so static
and SegBlocks models run in the same eager form a user gets from ``segblocks infer``.

Data: ``--frames`` ``val`` frames of CamVid (480x360, spread over the split), normalised with
the networks' statistics; the models pad them to 480x384 themselves (32-px blocks: a 12x15
grid). Without the dataset the script says so and exits 0.

Rows:

- every model on the 480x360 frames, per dtype;
- reference (``--no-compile`` skips, float32 only): the static 1.0x and 0.8x networks under
  ``torch.compile`` (the whole model, compiled on its first call, outside the timing);
- deployed (``--no-export`` skips): SegBlocks tau 0.4 as a ``torch.export`` program and as an
  AOTInductor package (``segblocks export --format pt2 | aoti``, exported / compiled here
  before the timing, per dtype), loaded with ``segblocks.load_exported``; float32 frames in
  (the programs' interface), computing in the row's dtype;
- 768x960 (``--no-960`` skips): the same models on the frames upsampled bilinearly to 768x960
  (the paper's CamVid scale). The SegBlocks models run in 64-px blocks (a 12x15 grid again):
  the same network, and a copy of the policy with ``block_size=64`` (the learned policy's conv
  stack then sees the same 384x480 input as at block 32); the static models are unchanged.

Repetition: ``--warmup`` rounds, then ``--rounds`` timed rounds; in every round every row runs
every frame once (batch 1, ``torch.inference_mode``, the policy included), the rows in an order
rotated from round to round so that load drifts of a shared machine hit all alike. Per row the
median over all timed forwards. Ratios: SegBlocks median / static median, same dtype and size.

JSON (``--json PATH``): ``camvid_latency_ratio_tau04_vs_static_full``,
``camvid_latency_ratio_tau04_vs_static08``, ``camvid_latency_ratio_tau02_vs_static06`` (float32),
the same with ``_bf16``, ``camvid960_latency_ratio_tau04_vs_static08`` (768x960, block 64,
float32), ``camvid_latency_ratio_tau04_exported_vs_eager`` and
``camvid_latency_ratio_tau04_aoti_vs_eager`` (deployed / eager tau 0.4, float32; ``_bf16``
likewise); ``None`` when not measured. Also the per-row medians (``medians_ms``), GMACs and HR %
(``rows``), the machine, the configuration and the command line.

Usage::

    python benchmarks/camvid_latency.py --json results/camvid_latency.json   # full, ~15 min
    python benchmarks/camvid_latency.py --quick --dtype fp32                  # smoke test
    python benchmarks/camvid_latency.py --models static_08 segblocks_tau04 --no-compile \
        --no-960 --no-export --profile static_08 segblocks_tau04   # where the time goes

``--profile NAME ...``: after the timing, one pass of each named row under ``torch.profiler``;
the top operators by self CPU time per frame are printed and kept in the JSON (``profile``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    DTYPE_SUFFIX,
    DTYPES,
    MALLOC_MODES,
    Guard,
    cpu_snapshot,
    foreign_load,
    machine_info,
    median,
    print_headline,
    print_machine,
    print_noise,
    reexec_with_malloc,
)
from camvid import MISSING_HINT, MODELS, checkpoint_path  # noqa: E402

MODELS_BY_NAME = {n for n, _, _ in MODELS}

ROOT = Path(__file__).resolve().parents[1]
FRAME = (360, 480)  # CamVid frames, H x W
PADDED = (384, 480)  # padded to 32-px blocks by the models
SIZE_960 = (768, 960)  # upsampled frames (a multiple of 64: no padding)
BLOCK_960 = 64
#: the torch.compile reference rows. Not the 0.8x network: Inductor had not finished compiling
#: it after 10 minutes (2026-12-06; its SPP pools a 307x384 frame's stride-16 map with
#: adaptive average pooling at non-integer ratios), where the 1.0x network compiles in ~15 s.
COMPILED = ("static_full",)

#: headline key -> (SegBlocks row, static row); float32 and, with ``_bf16``, bfloat16
RATIOS = {
    "camvid_latency_ratio_tau04_vs_static_full": ("segblocks_tau04", "static_full"),
    "camvid_latency_ratio_tau04_vs_static08": ("segblocks_tau04", "static_08"),
    "camvid_latency_ratio_tau02_vs_static06": ("segblocks_tau02", "static_06"),
}
#: deployed SegBlocks tau 0.4 / the eager model, per dtype (``_bf16``)
RATIOS_DEPLOYED = {
    "camvid_latency_ratio_tau04_exported_vs_eager": ("exported/segblocks_tau04", "segblocks_tau04"),
    "camvid_latency_ratio_tau04_aoti_vs_eager": ("aoti/segblocks_tau04", "segblocks_tau04"),
}
#: the models that get deployed rows
DEPLOYED = ("segblocks_tau04",)
#: 768x960, block 64, float32 only
RATIOS_960 = {
    "camvid960_latency_ratio_tau04_vs_static08": ("960/segblocks_tau04", "960/static_08"),
}
#: not headline figures: eager SegBlocks against the compiled static networks (float32)
RATIOS_COMPILED = {
    "tau04_vs_static_full_compiled": ("segblocks_tau04", "compiled/static_full"),
    "tau04_vs_static08_compiled": ("segblocks_tau04", "compiled/static_08"),
}
DTYPE_ALIASES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
SHORT = {"float32": "fp32", "bfloat16": "bf16"}


# ---------------------------------------------------------------------------- pure helpers
def parse_dtypes(text: str) -> list[str]:
    """``"fp32,bf16"`` (also ``float32``, ``bfloat16``, ``both``) -> ``["float32", "bfloat16"]``
    in that order, without repeats; ``ValueError`` for anything else."""
    got = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        names = list(DTYPES) if part == "both" else [DTYPE_ALIASES.get(part)]
        if names[0] is None:
            raise ValueError(f"unknown dtype {part!r}; use fp32, bf16 or both (comma-separated)")
        got += [n for n in names if n not in got]
    if not got:
        raise ValueError("no dtype given; use e.g. --dtype fp32,bf16")
    return [d for d in DTYPES if d in got]


def rotated(seq: list, r: int) -> list:
    """``seq`` started at item ``r % len(seq)`` (the order of round ``r``)."""
    if not seq:
        return []
    k = r % len(seq)
    return seq[k:] + seq[:k]


def ratio(medians: dict, num: str, den: str, dtype: str) -> float | None:
    """``medians[num][dtype] / medians[den][dtype]``, ``None`` if either is missing."""
    a = (medians.get(num) or {}).get(dtype)
    b = (medians.get(den) or {}).get(dtype)
    if a is None or b is None or b <= 0:
        return None
    return a / b


def headline(medians: dict) -> dict:
    """The JSON keys of issue 16 from ``{row: {dtype: median ms}}`` (``None`` when not
    measured). Rows: model names at 480x360, ``960/NAME`` at 768x960."""
    out = {}
    for d in DTYPES:
        for key, (a, b) in (RATIOS | RATIOS_DEPLOYED).items():
            out[key + DTYPE_SUFFIX[d]] = ratio(medians, a, b, d)
    for key, (a, b) in RATIOS_960.items():
        out[key] = ratio(medians, a, b, "float32")
    return out


def reference_ratios(medians: dict) -> dict:
    """Eager SegBlocks / compiled static (float32), ``None`` when not measured."""
    return {k: ratio(medians, a, b, "float32") for k, (a, b) in RATIOS_COMPILED.items()}


def has_amx(machine: dict) -> bool:
    return any(f.startswith("amx") for f in machine.get("bf16_isa") or [])


# ---------------------------------------------------------------------------- models
def with_block_size(model, block_size: int):
    """``model`` run in blocks of ``block_size``: a new ``SegBlocksModel`` around the same
    network, with a shallow copy of the policy whose ``block_size`` is changed (the learned
    policy's; the heuristic has none). The static (dense-policy) model is returned as is.
    ``ValueError`` when the network does not allow that block size."""
    from segblocks.models.segblocks_model import SegBlocksModel

    if model.dense:
        return model
    policy = model.policy
    if hasattr(policy, "block_size"):
        policy = copy.copy(policy)  # shares the (folded) policy network's modules
        policy.block_size = block_size
    out = SegBlocksModel(
        model.net,
        policy,
        block_size,
        pad_to_block=model.pad_to_block,
        input_pad=model.input_pad,
        pad_mode=model.sample.pad_mode,
        combine=model.combine,
    )
    return out.eval()


def load_fast(path: Path, dtypes: list[str]) -> dict:
    """``{dtype: fast model}`` of one checkpoint: loaded once, a fresh optimised copy per dtype
    (folding in float32, then cast)."""
    from segblocks.models.inference import optimize_for_inference
    from segblocks.models.segblocks_model import SegBlocksModel

    base = SegBlocksModel.from_checkpoint(path).float().eval()
    return {d: optimize_for_inference(base, dtype=DTYPES[d], example_size=PADDED) for d in dtypes}


def read_frames(root: Path, n: int, norm) -> list[torch.Tensor]:
    """``n`` normalised ``val`` frames ``[1, 3, 360, 480]`` spread over the split."""
    from segblocks.data import CamVid

    val = CamVid(root, split="val")
    n = min(n, len(val))
    frames = []
    for i in range(n):
        img, lab = val[(i * len(val)) // max(1, n)]
        frames.append(norm(img, lab)[0][None].contiguous())
    return frames


# ---------------------------------------------------------------------------- timing
class Row:
    """One timed configuration: a model on a list of frames in one dtype."""

    def __init__(self, key, name, label, dtype, model, frames, size, block_size):
        self.key, self.name, self.label, self.dtype = key, name, label, dtype
        self.model, self.frames, self.size, self.block_size = model, frames, size, block_size
        self.times: list[float] = []
        self.hr_blocks: list[int] | None = None  # HR blocks per frame (first pass)
        self.num_blocks: int | None = None

    def run(self, timed: bool) -> None:
        hr = []
        for x in self.frames:
            t0 = time.perf_counter()
            out = self.model(x)
            t = 1000 * (time.perf_counter() - t0)
            if timed:
                self.times.append(t)
            if self.hr_blocks is None:
                hr.append(int(out.grid[0].sum()))
                self.num_blocks = int(out.grid[0].numel())
        if self.hr_blocks is None:
            self.hr_blocks = hr


def build_rows(args, ckpts: dict, frames: list, dtypes: list[str], log, guard) -> list[Row]:
    labels = {n: lab for n, lab, _ in MODELS} | {n: n for n in ckpts if n not in MODELS_BY_NAME}
    frames_960 = [
        F.interpolate(x, size=SIZE_960, mode="bilinear", align_corners=False) for x in frames
    ]
    cast = {
        (size, d): [x.to(DTYPES[d]) for x in fs]
        for size, fs in (("480", frames), ("960", frames_960))
        for d in dtypes
    }
    rows: list[Row] = []
    compiled: list[Row] = []
    rows_dep: list[Row] = []
    rows_960: list[Row] = []
    for name, path in ckpts.items():
        fast = guard(f"load/{name}", lambda p=path: load_fast(p, dtypes))
        if fast is None:
            continue
        for d in dtypes:
            m = fast[d]
            rows.append(Row(name, name, labels[name], d, m, cast[("480", d)], FRAME, m.block_size))
            if args.run_960:
                try:
                    m64 = with_block_size(m, BLOCK_960)
                except ValueError as e:
                    log(f"{name}: no 768x960 row, block {BLOCK_960} not possible ({e})")
                    continue
                rows_960.append(
                    Row(
                        f"960/{name}",
                        name,
                        f"{labels[name]}" + ("" if m.dense else f", block {BLOCK_960}"),
                        d,
                        m64,
                        cast[("960", d)],
                        SIZE_960,
                        m64.block_size,
                    )
                )
        if args.export and name in DEPLOYED:
            rows_dep += deployed_rows(
                name, labels[name], path, dtypes, frames, args.workdir, log, guard
            )
        if args.compile and name in COMPILED:
            if "float32" not in dtypes:
                log(f"torch.compile reference of {name}: skipped (float32 not selected)")
                continue
            row = compile_row(name, labels[name], fast["float32"], cast[("480", "float32")], log)
            if row is not None:
                compiled.append(row)
    return rows + rows_dep + compiled + rows_960


def deployed_rows(name, label, path, dtypes, frames, workdir: Path, log, guard) -> list[Row]:
    """Rows of ``name`` as an exported program and as an AOTInductor package, per dtype
    (written to ``workdir``, loaded back as a user would)."""
    from segblocks.deploy import load_exported, package_aoti, save_exported
    from segblocks.models.segblocks_model import SegBlocksModel

    base = SegBlocksModel.from_checkpoint(path).float().eval()
    rows = []
    for kind, save in (("exported", save_exported), ("aoti", package_aoti)):
        for d in dtypes:
            out = workdir / f"{name}_{kind}_{SHORT[d]}.pt2"
            t0 = time.perf_counter()
            ok = guard(
                f"{kind}/{name}/{d}",
                lambda save=save, out=out, d=d: save(base, out, FRAME, dtype=DTYPES[d]),
            )
            if ok is None:
                continue
            log(f"{kind} {name} {d}: {time.perf_counter() - t0:.0f} s")
            model = load_exported(out)
            what = "torch.export program" if kind == "exported" else "AOTInductor package"
            rows.append(
                Row(f"{kind}/{name}", name, f"{label}, {what}", d, model, frames, FRAME, 32)
            )
    return rows


def compile_row(name, label, model, frames, log) -> Row | None:
    """``torch.compile`` of the fast model, compiled (first call) here; ``None`` with a
    message when compiling or running it fails."""
    t0 = time.perf_counter()
    try:
        # The network is compiled, not the wrapper (the input padding / resize stays eager, as
        # in every other row).
        cm = copy.copy(model)
        cm._modules = dict(model._modules)  # a shallow copy shares the submodule table
        cm.net = torch.compile(model.net)
        with torch.inference_mode():
            cm(frames[0])
    except Exception as e:  # reported; the reference row is optional
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        log(
            f"torch.compile reference of {name}: skipped, compile failed ({type(e).__name__}: "
            f"{first[:200]})"
        )
        return None
    log(f"torch.compile of {name}: {time.perf_counter() - t0:.0f} s")
    return Row(
        f"compiled/{name}", name, f"{label}, torch.compile", "float32", cm, frames, FRAME, None
    )


def time_rows(rows: list[Row], warmup: int, rounds: int, log, guard) -> None:
    with torch.inference_mode():
        for r in range(warmup + rounds):
            t0 = time.perf_counter()
            for row in rotated(rows, r):
                guard(f"{row.key}/{row.dtype}", lambda row=row: row.run(timed=r >= warmup))
            what = "warm-up" if r < warmup else "timed"
            log(f"  round {r + 1}/{warmup + rounds} ({what}): {time.perf_counter() - t0:.1f} s")


def profile_rows(rows: list[Row], names: list[str], top: int) -> dict:
    """Where the time of the named rows goes: ``torch.profiler`` over one pass of each row's
    frames, after the timing (the profiler's overhead stays out of the medians). Per row key
    and dtype: the profiled wall time and the ``top`` operators by self CPU time, each as
    ``[name, ms per frame, calls per frame]`` (an op's self time excludes the ops it calls;
    intra-op threads count once, as wall time on the calling thread)."""
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    with torch.inference_mode():
        for row in rows:
            if row.key not in names:
                continue
            row.run(timed=False)
            t0 = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                row.run(timed=False)
            wall = 1000 * (time.perf_counter() - t0)
            n = len(row.frames)
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            out.setdefault(row.key, {})[row.dtype] = {
                "wall_ms_per_frame": wall / n,
                "self_ms_per_frame": sum(e.self_cpu_time_total for e in events) / 1000 / n,
                "top_ops": [
                    [e.key, e.self_cpu_time_total / 1000 / n, e.count / n] for e in events[:top]
                ],
            }
    return out


def print_profile(p, prof: dict, top: int) -> None:
    for key, per_dtype in prof.items():
        for dt, v in per_dtype.items():
            p(
                f"profile of {key}, {SHORT[dt]} (one pass under torch.profiler: "
                f"{v['wall_ms_per_frame']:.1f} ms per frame; top {top} ops by self time):"
            )
            for name, ms, calls in v["top_ops"]:
                share = 100 * ms / v["self_ms_per_frame"] if v["self_ms_per_frame"] else 0.0
                p(f"    {name[:52]:52s} {ms:7.2f} ms {share:5.1f} %  {calls:6.1f} calls")


def gmacs(row: Row) -> float | None:
    """GMACs per frame (policy included) at the row's padded size and mean HR blocks."""
    m = getattr(row.model, "_orig_mod", row.model)
    if not row.hr_blocks:
        return None
    bs = m.block_size
    hp, wp = (-(-s // bs) * bs for s in row.size)
    cost = m.mac_cost(hp, wp)
    return cost(sum(row.hr_blocks) / len(row.hr_blocks))


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data-root",
        default=str(ROOT.parent / "shared" / "datasets" / "camvid"),
        help="CamVid folder (default ../shared/datasets/camvid next to the repository)",
    )
    ap.add_argument(
        "--checkpoints",
        nargs="+",
        type=Path,
        default=[ROOT / "checkpoints" / "camvid"],
        help="folders of the checkpoints, searched in order (default: the committed "
        "checkpoints/camvid)",
    )
    ap.add_argument("--models", nargs="+", help="subset of the model names")
    ap.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="an extra model row from a checkpoint file (repeatable; e.g. an ablation run: "
        "ablation_pad_zero=runs/camvid/ablation_pad_zero/last.pt)",
    )
    ap.add_argument(
        "--dtype", default="fp32,bf16", help="comma-separated: fp32, bf16 (default both)"
    )
    ap.add_argument("--frames", type=int, help="val frames (default 8; quick 2)")
    ap.add_argument("--rounds", type=int, help="timed rounds (default 12; quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up rounds (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="no compile rows")
    ap.add_argument("--no-960", dest="run_960", action="store_false", help="no 768x960 rows")
    ap.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="no rows of the exported program / AOTInductor package (exporting and compiling "
        "take ~1-2 min per dtype)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        help="where the exported artifacts are written (default: a temporary folder)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 frames, 2 rounds, no compile, no 768x960 (--frames / --rounds "
        "still override)",
    )
    ap.add_argument(
        "--profile",
        nargs="+",
        default=[],
        metavar="NAME",
        help="after the timing, profile these rows (model names, e.g. static_08 "
        "segblocks_tau04) with torch.profiler and print their top operators by self time",
    )
    ap.add_argument("--profile-top", type=int, default=12, help="operators listed (default 12)")
    ap.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    ap.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="tuned",
        help="allocator: 'tuned' glibc keeping freed memory (default), 'default' stock glibc, "
        "'tcmalloc' preloaded; the script restarts itself to apply it",
    )
    args = ap.parse_args(argv)
    try:
        args.dtypes = parse_dtypes(args.dtype)
    except ValueError as e:
        ap.error(f"--dtype: {e}")
    if args.frames is None:
        args.frames = 2 if args.quick else 8
    if args.rounds is None:
        args.rounds = 2 if args.quick else 12
    if args.quick:
        args.compile = args.run_960 = args.export = False
    if args.frames < 1 or args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--frames, --rounds and --threads must be >= 1, --warmup >= 0")
    if args.models:
        bad = [m for m in args.models if m not in {n for n, _, _ in MODELS}]
        if bad:
            ap.error(f"--models: unknown {bad}; choose from {', '.join(n for n, _, _ in MODELS)}")
    args.extra = {}
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            ap.error(f"--checkpoint {spec!r}: give NAME=PATH of an existing checkpoint file")
        args.extra[name] = Path(path)
    if args.extra and not args.models:
        args.models = []  # only the named rows
    known = set(args.models if args.models is not None else MODELS_BY_NAME) | set(args.extra)
    bad = [n for n in args.profile if n not in known]
    if bad:
        ap.error(
            f"--profile: {bad} are not rows of this run; choose from {', '.join(sorted(known))}"
        )
    if args.profile_top < 1:
        ap.error(f"--profile-top {args.profile_top}: give a positive number of operators")
    return args


def print_table(p, rows: list[Row], info: dict, dtypes: list[str]) -> None:
    groups = (
        ("", "480x360 frames (padded to 480x384), block 32"),
        ("exported/", "deployed: torch.export program (segblocks export --format pt2)"),
        ("aoti/", "deployed: AOTInductor package (segblocks export --format aoti)"),
        ("compiled/", "reference: torch.compile, 480x360, float32"),
        ("960/", f"768x960 frames (bilinear upsampled), SegBlocks block {BLOCK_960}"),
    )
    p(
        f"  {'model':42s} {'GMACs':>6s} {'HR %':>6s} "
        + " ".join(f"{SHORT[d] + ' ms':>9s}" for d in dtypes)
    )
    for prefix, title in groups:
        keys = [
            k
            for k in dict.fromkeys(r.key for r in rows)
            if k.startswith(prefix) and (prefix or "/" not in k)
        ]
        if not keys:
            continue
        p(f"{title}:")
        for k in keys:
            v = info[k]
            g = f"{v['gmacs']:6.2f}" if v.get("gmacs") is not None else f"{'-':>6s}"
            hr = f"{v['hr_percent']:6.1f}" if v.get("hr_percent") is not None else f"{'-':>6s}"
            cells = []
            for d in dtypes:
                ms = v["median_ms"].get(d)
                cells.append(f"{ms:9.1f}" if ms is not None else f"{'-':>9s}")
            p(f"  {v['label']:42s} {g} {hr} " + " ".join(cells))


def main(argv=None) -> int:
    args = parse_args(argv)
    if argv is None:
        reexec_with_malloc(args.malloc)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    p = lambda s="": print(s, flush=True)  # noqa: E731

    data = Path(args.data_root)
    if not (data / "val").is_dir():
        p(
            f"CamVid not found at {data} (no val/ folder): nothing measured. Give the dataset "
            "folder with --data-root (SegNet layout: val/*.png, valannot/*.png)."
        )
        return 0
    root = args.checkpoints
    wanted = [n for n, _, _ in MODELS if args.models is None or n in args.models]
    found = {n: checkpoint_path(root, n) for n in wanted}
    found.update(args.extra)
    missing = [n for n, path in found.items() if path is None]
    ckpts = {n: path for n, path in found.items() if path is not None}
    if missing:
        p(f"skipped (no checkpoint under {' '.join(map(str, root))}): {', '.join(missing)}")
        p(f"  ({MISSING_HINT})")
    if not ckpts:
        p(
            f"no CamVid checkpoint under {' '.join(map(str, root))}: nothing measured "
            "(--checkpoints DIR [DIR ...])"
        )
        return 2

    from segblocks.data.transforms import Normalize
    from segblocks.models.segblocks_model import SegBlocksModel

    first = SegBlocksModel.from_checkpoint(next(iter(ckpts.values())))
    norm = Normalize(first.net.input_mean, first.net.input_std)
    frames = read_frames(data, args.frames, norm)
    guard = Guard(log)
    machine = machine_info()
    log(f"building {len(ckpts)} models x {len(args.dtypes)} dtype(s) ...")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="segblocks_deploy_") as tmp:
        if args.workdir is None:
            args.workdir = Path(tmp)
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, ckpts, missing, frames, guard, machine, data, log, p)


def _run(args, ckpts, missing, frames, guard, machine, data, log, p) -> int:
    rows = build_rows(args, ckpts, frames, args.dtypes, log, guard)
    log(
        f"timing {len(rows)} rows x {len(frames)} frames: {args.warmup} warm-up + "
        f"{args.rounds} timed rounds"
    )
    snap0 = cpu_snapshot()
    time_rows(rows, args.warmup, args.rounds, log, guard)
    load = foreign_load(snap0, cpu_snapshot())
    machine["load_during_run"] = load
    prof = {}
    if args.profile:  # a failure is reported like a row's, after the figures
        prof = guard("profile", lambda: profile_rows(rows, args.profile, args.profile_top)) or {}

    medians: dict = {}
    info: dict = {}
    for row in rows:
        v = info.setdefault(
            row.key,
            {
                "label": row.label,
                "model": row.name,
                "size": list(row.size),
                "block_size": row.block_size,
                "median_ms": {},
                "samples": {},
                "hr_percent": None,
                "gmacs": None,
            },
        )
        if row.times and guard.ok(f"{row.key}/{row.dtype}"):
            medians.setdefault(row.key, {})[row.dtype] = median(row.times)
            v["median_ms"][row.dtype] = median(row.times)
            v["samples"][row.dtype] = len(row.times)
        if v["hr_percent"] is None and row.hr_blocks and row.num_blocks:
            v["hr_percent"] = 100 * sum(row.hr_blocks) / (len(row.hr_blocks) * row.num_blocks)
            v["hr_blocks_per_frame"] = row.hr_blocks
            try:
                v["gmacs"] = gmacs(row)
            except Exception as e:  # a figure of the table, not of the timing
                log(f"GMACs of {row.key}: not counted ({type(e).__name__}: {e})")

    res: dict = headline(medians)
    res["ratio_note"] = (
        "median SegBlocks forward / median static forward, same dtype and frame size, same run; "
        "all models BN-folded and channels-last (optimize_for_inference), batch 1, policy "
        "included; 960: frames upsampled to 768x960, SegBlocks in 64-px blocks"
    )
    res["reference_ratios_vs_compiled"] = reference_ratios(medians)
    res["medians_ms"] = medians
    res["profile"] = prof
    res["rows"] = info
    res["missing"] = missing
    res["machine"] = machine
    res["config"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data_root": str(data),
        "checkpoints": {n: str(path) for n, path in ckpts.items()},
        "frames": len(frames),
        "frame_size": list(FRAME),
        "padded_size": list(PADDED),
        "size_960": list(SIZE_960) if args.run_960 else None,
        "block_size_960": BLOCK_960 if args.run_960 else None,
        "dtypes": args.dtypes,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": args.threads,
        "quick": args.quick,
        "compile": args.compile,
        "export": args.export,
        "form": "segblocks.models.inference.optimize_for_inference: eval, batch norm folded "
        "(network and learned policy), channels-last weights; a fresh copy per dtype",
    }
    res["argv"] = sys.argv
    res["command"] = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    res["errors"] = guard.errors

    p("CamVid latency: SegBlocks vs static SwiftNet-EffL1, same fast eager form")
    print_machine(p, machine)
    p(f"AMX       : {'yes' if has_amx(machine) else 'no'}")
    p(
        f"settings  : {', '.join(args.dtypes)}; batch 1, inference_mode, BN folded + "
        f"channels-last (optimize_for_inference); {len(frames)} val frames"
    )
    p(
        f"repetition: median of {args.rounds} rounds x {len(frames)} frames after "
        f"{args.warmup} warm-up round(s); every row every round, order rotated each round"
    )
    p(f"date      : {res['config']['date']}")
    print_noise(p, load, "the timing")
    p()
    print_table(p, rows, info, args.dtypes)
    p()
    p("headline (SegBlocks median / static median, same run; columns: dtype):")
    print_headline(p, res, tuple(RATIOS), args.dtypes, width=44)
    if args.export:
        p("deployed (deployed median / eager median, same run; columns: dtype):")
        print_headline(p, res, tuple(RATIOS_DEPLOYED), args.dtypes, width=44)
    for k in RATIOS_960:
        if res[k] is not None:
            p(f"  {k:44s} {res[k]:9.3f}  (float32)")
    for k, v in res["reference_ratios_vs_compiled"].items():
        if v is not None:
            p(f"  reference: {k:33s} {v:9.3f}  (float32)")
    if prof:
        p()
        print_profile(p, prof, args.profile_top)
    for key, err in guard.errors.items():
        p(f"ERROR {key}: {err.splitlines()[0]}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
        p(f"results: {args.json}")
    return 1 if guard.errors else 0


if __name__ == "__main__":
    sys.exit(main())
