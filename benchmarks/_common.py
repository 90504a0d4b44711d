"""Helpers shared by the benchmark scripts: machine description, allocator settings, load.

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

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# glibc returns every freed block above 32 MB to the OS, so each large activation is mmapped
# and page-faulted afresh on every run; that costs the dense network (whose activations are
# larger) more than block execution and adds noise. "--malloc tuned" (the default) re-runs this
# script with glibc told to keep freed memory (as jemalloc or PyTorch's CUDA caching allocator
# do); "--malloc default" measures stock glibc behaviour. Dense and block always share one.
_TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(1 << 28),
}


def allocator() -> str:
    pre = os.environ.get("LD_PRELOAD", "")
    for name in ("jemalloc", "tcmalloc", "mimalloc"):
        if name in pre:
            return f"{name} (LD_PRELOAD)"
    if all(os.environ.get(k) == v for k, v in _TUNED_MALLOC.items()):
        return "glibc malloc, tuned: " + " ".join(f"{k}={v}" for k, v in _TUNED_MALLOC.items())
    return "glibc malloc (default settings)"


def _reexec_with_malloc(mode: str) -> None:
    """Restart the interpreter with the allocator settings of ``mode`` (env is read at start)."""
    want = dict(_TUNED_MALLOC) if mode == "tuned" else {}
    have = {k: os.environ.get(k) for k in _TUNED_MALLOC}
    if all(have[k] == want.get(k) for k in _TUNED_MALLOC):
        return
    env = {k: v for k, v in os.environ.items() if k not in _TUNED_MALLOC}
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


def random_mask(gen: torch.Generator, gh: int, gw: int, n_hr: int) -> torch.Tensor:
    """``[1, gh, gw]`` bool mask with exactly ``n_hr`` HR cells at random positions."""
    flat = torch.zeros(gh * gw, dtype=torch.bool)
    flat[torch.randperm(gh * gw, generator=gen)[:n_hr]] = True
    return flat.view(1, gh, gw)


def add_run_arguments(ap, profile_help: str) -> None:
    """Repetition, output and allocator options shared by the benchmark scripts."""
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer repetitions (3 runs, 1 warm-up, 1 profiled run); same sizes",
    )
    ap.add_argument("--json", metavar="PATH", help="write all figures to this JSON file")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--runs", type=int, help="timed runs per configuration (default 5; quick 3)")
    ap.add_argument(
        "--warmup", type=int, help="warm-up runs per configuration (default 2; quick 1)"
    )
    ap.add_argument("--profile-runs", type=int, help=profile_help)
    ap.add_argument("--seed", type=int, default=0, help="seed for inputs and masks (default 0)")
    ap.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="glibc settings: 'tuned' keeps freed memory (no page faults on reuse; default), "
        "'default' is stock glibc; the script restarts itself to apply them",
    )


def resolve_run_arguments(ap, args):
    """Fill the --quick dependent defaults and validate the repetition counts."""
    if args.runs is None:
        args.runs = 3 if args.quick else 5
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.profile_runs is None:
        args.profile_runs = 1 if args.quick else 2
    if args.runs < 1 or args.warmup < 0 or args.profile_runs < 1 or args.threads < 1:
        ap.error("--runs, --profile-runs and --threads must be >= 1, --warmup >= 0")
    return args
