"""Helpers shared by the benchmark scripts: machine description, allocator settings, load,
repetition options, dtypes, guarded runs.

Imported as ``_common`` (the scripts run as ``python benchmarks/<name>.py``, so this folder
is on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
import traceback

import torch


def cpu_model() -> str:
    from segblocks.measuring.calibrate import cpu_name

    return cpu_name()


# glibc returns every freed block above 32 MB to the OS, so each large activation is mmapped
# and page-faulted afresh on every run; that costs the dense network (whose activations are
# larger) more than block execution and adds noise. "--malloc tuned" (the default) re-runs this
# script with glibc told to keep freed memory (as jemalloc or PyTorch's CUDA caching allocator
# do); "--malloc default" measures stock glibc behaviour. Dense and block always share one.
# "--malloc tcmalloc" re-runs it with tcmalloc preloaded, releasing nothing to the OS: what
# SegBlocks *training* wants (its block counts change every step, so glibc, tuned or not, keeps
# taking fresh pages: on a Firecracker VM with free page reporting, SegBlocks-EffL1 steps took
# 1.5-3.5 s with glibc and a steady 1.33-1.47 s with tcmalloc; inference: no clear difference).
TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(1 << 28),
}
TCMALLOC = {"LD_PRELOAD": "libtcmalloc_minimal.so.4", "TCMALLOC_RELEASE_RATE": "0"}
MALLOC_MODES = ("tuned", "default", "tcmalloc")


def allocator() -> str:
    pre = os.environ.get("LD_PRELOAD", "")
    try:  # what is mapped, not only asked for (a missing library is skipped with a warning)
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = pre
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in pre:
            return f"{name} (LD_PRELOAD)" if name in maps else f"{name} asked for but not loaded"
    if all(os.environ.get(k) == v for k, v in TUNED_MALLOC.items()):
        return "glibc malloc, tuned: " + " ".join(f"{k}={v}" for k, v in TUNED_MALLOC.items())
    return "glibc malloc (default settings)"


def reexec_with_malloc(mode: str) -> None:
    """Restart the interpreter with the allocator settings of ``mode`` (env is read at start)."""
    if mode == "tcmalloc":
        import ctypes.util

        if ctypes.util.find_library("tcmalloc_minimal") is None:
            raise SystemExit(
                "--malloc tcmalloc: libtcmalloc_minimal not found; install it (Debian / Ubuntu: "
                "apt install libtcmalloc-minimal4) or use --malloc tuned"
            )
        want = dict(TCMALLOC)
    else:
        want = dict(TUNED_MALLOC) if mode == "tuned" else {}
    keys = {*TUNED_MALLOC, *TCMALLOC}
    if all(os.environ.get(k) == want.get(k) for k in keys):
        return
    env = {k: v for k, v in os.environ.items() if k not in keys}
    env.update(want)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def cpu_snapshot():
    """(wall s, busy CPU s of the whole machine, steal s, CPU s of this process) or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
    steal = v[7] if len(v) > 7 else 0
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.monotonic(), busy / hz, steal / hz, r.ru_utime + r.ru_stime


def foreign_load(a, b) -> dict | None:
    """Average CPU cores used by *other* processes (and hypervisor steal) between snapshots."""
    if a is None or b is None or b[0] <= a[0]:
        return None
    wall = b[0] - a[0]
    return {
        "other_processes_cores": max(0.0, ((b[1] - a[1]) - (b[3] - a[3])) / wall),
        "steal_cores": (b[2] - a[2]) / wall,
        "wall_s": wall,
    }


def median(xs):
    return statistics.median(xs) if xs else float("nan")


RUN_DEFAULTS = {"runs": (5, 3), "warmup": (2, 1), "profile_runs": (2, 1)}  # (full, --quick)


def add_run_arguments(ap, profile_help: str | None, defaults: dict | None = None) -> None:
    """Repetition, output and allocator options shared by the benchmark scripts.

    ``defaults`` maps ``runs`` / ``warmup`` / ``profile_runs`` to ``(full, quick)`` counts
    (``RUN_DEFAULTS`` when omitted; pass the same dict to :func:`resolve_run_arguments`); with
    ``profile_help=None`` there is no ``--profile-runs`` option.
    """
    d = {**RUN_DEFAULTS, **(defaults or {})}
    quick = f"{d['runs'][1]} timed run(s), {d['warmup'][1]} warm-up"
    if profile_help is not None:
        quick += f", {d['profile_runs'][1]} profiled run(s)"
    ap.add_argument("--quick", action="store_true", help=f"fewer repetitions ({quick}); same sizes")
    ap.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument(
        "--runs",
        type=int,
        help=f"timed runs per configuration (default {d['runs'][0]}; quick {d['runs'][1]})",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        help=f"warm-up runs per configuration (default {d['warmup'][0]}; quick {d['warmup'][1]})",
    )
    if profile_help is not None:
        ap.add_argument("--profile-runs", type=int, help=profile_help)
    ap.add_argument("--seed", type=int, default=0, help="seed for inputs and masks (default 0)")
    ap.add_argument(
        "--malloc",
        choices=MALLOC_MODES,
        default="tuned",
        help="allocator: 'tuned' glibc keeping freed memory (no page faults on reuse; default), "
        "'default' stock glibc, 'tcmalloc' preloaded and releasing nothing; the script restarts "
        "itself to apply it",
    )


def resolve_run_arguments(ap, args, defaults: dict | None = None):
    """Fill the --quick dependent defaults and validate the repetition counts."""
    d = {**RUN_DEFAULTS, **(defaults or {})}
    i = 1 if args.quick else 0
    for key in ("runs", "warmup", "profile_runs"):
        if getattr(args, key, None) is None:
            setattr(args, key, d[key][i])
    if args.runs < 1 or args.warmup < 0 or args.profile_runs < 1 or args.threads < 1:
        ap.error("--runs, --profile-runs and --threads must be >= 1, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------- dtypes
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_SUFFIX = {"float32": "", "bfloat16": "_bf16"}  # of the JSON keys


def add_dtype_argument(ap, what: str) -> None:
    ap.add_argument(
        "--dtype",
        choices=(*DTYPES, "both"),
        default="both",
        help=f"{what}; 'both' (default) measures float32 and bfloat16 in the same run, their "
        "repetitions interleaved",
    )


def selected_dtypes(args) -> list[str]:
    return list(DTYPES) if args.dtype == "both" else [args.dtype]


# ---------------------------------------------------------------------------- machine
def bf16_isa() -> list[str]:
    """The CPU's bfloat16 instruction-set flags (``/proc/cpuinfo``), e.g. ``avx512_bf16``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
    except OSError:
        pass
    return []


def machine_info(**extra) -> dict:
    """Platform, CPU, threads, software and allocator of this run (``extra`` appended)."""
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "bf16_isa": bf16_isa(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "allocator": allocator(),
        **extra,
    }


def print_machine(p, machine: dict, suffix: str = "") -> None:
    """The ``machine`` / ``software`` header lines (``p`` prints one line)."""
    isa = ", ".join(machine.get("bf16_isa") or []) or "none"
    p(
        f"machine   : {machine['platform']}; CPU {machine['cpu']} "
        f"({machine['logical_cpus']} logical; bf16 ISA: {isa}); "
        f"threads {machine['threads']}{suffix}"
    )
    p(
        f"software  : python {machine['python']}, torch {machine['torch']}, "
        f"allocator {machine['allocator']}"
    )


def print_noise(p, load: dict | None, during: str = "the run") -> None:
    if load is not None:
        p(
            f"noise     : during {during} other processes used "
            f"{load['other_processes_cores']:.2f} cores on average, hypervisor steal "
            f"{load['steal_cores']:.2f} cores (wall {load['wall_s']:.0f} s)"
        )


def print_headline(p, res: dict, keys, dtypes, width: int = 36) -> None:
    """Headline figures, one row per key and one column per dtype (``key`` + dtype suffix)."""
    p(f"  {'':{width}s} " + " ".join(f"{d:>9s}" for d in dtypes))
    for k in keys:
        cells = []
        for d in dtypes:
            v = res.get(k + DTYPE_SUFFIX[d])
            cells.append(f"{v:9.3f}" if isinstance(v, (int, float)) else f"{'n/a':>9s}")
        if any(c.strip() != "n/a" for c in cells):
            p(f"  {k:{width}s} " + " ".join(cells))


# ---------------------------------------------------------------------------- misc
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def error_text(exc: BaseException) -> str:
    """``Type: message`` plus the traceback, for the JSON (the table shows the first line)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__}: {exc}\n{tb}"


class Guard:
    """Runs configurations until they fail; a failure is recorded once and the rest skipped.

    ``guard(key, fn)`` returns ``fn()``, or ``None`` when ``key`` failed now or before; the
    traceback goes to ``log`` and ``errors[key]`` (the whole run is not aborted).
    """

    def __init__(self, log):
        self.log = log
        self.errors: dict = {}

    def ok(self, key) -> bool:
        return key not in self.errors

    def __call__(self, key, fn):
        if key in self.errors:
            return None
        try:
            return fn()
        except Exception as e:  # recorded and reported; the run continues
            self.errors[key] = error_text(e)
            self.log(f"[{key}] FAILED, skipped from now on:\n{self.errors[key]}")
            return None
