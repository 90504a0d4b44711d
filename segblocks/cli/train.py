"""``segblocks train``: joint training of network and policy from a YAML config."""

from __future__ import annotations

import argparse
import shlex
import sys

from .common import fail

_RUN_SWITCHES = ("resume", "overwrite")
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


def allocator_hint(
    device: str, *, epochs: int = 1, maps_file: str = "/proc/self/maps"
) -> str | None:
    """The one-line hint printed before a CPU training run under glibc malloc on Linux (None
    otherwise, and for ``epochs: 0``, which only wraps and evaluates a network). A SegBlocks
    batch has different block counts every step, so its tensors change shape; glibc hands the
    memory back and takes it again, and on VMs that report freed pages to their host each step
    pays the page faults (README, "Training": 1.5-3.5 s steps against a steady 1.33-1.47 s with
    tcmalloc on a 2-core VM)."""
    import torch

    if epochs <= 0:
        return None
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    try:
        with open(maps_file) as f:
            maps = f.read()
    except OSError:  # not Linux: nothing to check
        return None
    if not on_cpu or any(name in maps for name in _ALLOCATORS):
        return None
    return (
        "hint: training on the CPU with glibc malloc; SegBlocks steps are faster and steadier "
        "with tcmalloc preloaded: LD_PRELOAD=libtcmalloc_minimal.so.4 TCMALLOC_RELEASE_RATE=0 "
        "segblocks train ... (README, 'Training')"
    )


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train SegBlocks (network + policy) from a YAML config",
        description=(
            "Train the segmentation network and the policy jointly (hybrid REINFORCE loss, "
            "paper Eq. 13) from a YAML config with key=value overrides, e.g. "
            "'segblocks train --config configs/procedural_tiny.yaml epochs=2 tau=0.3'. "
            "Multi-process: torchrun --nproc_per_node=N -m segblocks train --config ... ; "
            "resume with resume=true (the config must match the checkpoint's; "
            "allow_config_change=[epochs] extends a run); replace the run in a non-empty "
            "out_dir with overwrite=true; mixed precision with amp=true. Configs shipped with "
            "the package: procedural_tiny, cityscapes_rn18, camvid_rn18, mapillary_effl1."
        ),
    )
    p.add_argument(
        "--config",
        required=True,
        help="YAML file or packaged config name, e.g. procedural_tiny or configs/x.yaml",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from segblocks.training import load_config, train

    def resume_hint(e) -> str:
        """The one-line Ctrl-C message: where training stopped and the command to resume."""
        keep = [o for o in args.overrides if o.split("=", 1)[0].strip() not in _RUN_SWITCHES]
        cmd = ["segblocks", "train", "--config", args.config, *keep, "resume=true"]
        of = f" of {e.epochs}" if e.epochs else ""
        where = f"in epoch {e.epoch}{of}" if e.epoch is not None else "before the first epoch"
        held = (
            f"{e.checkpoint} holds epoch {e.saved_epoch}"
            if e.saved_epoch
            else "no checkpoint was written yet"
        )
        return f"interrupted {where}; {held}. Resume with: {shlex.join(cmd)}"

    args.resume_hint = resume_hint
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        return fail("train", e)
    hint = allocator_hint(cfg.device, epochs=cfg.epochs)
    if hint:
        print(hint, file=sys.stderr)
    try:
        res = train(cfg)
    except FileNotFoundError as e:  # dataset folders (the message shows the layout)
        return fail("train", e)
    if res.get("val"):
        v = res["val"]
        print(f"val mIoU {v['miou']:.4f}  HR fraction {v['hr_fraction']:.3f}")
    print(f"checkpoint: {res['checkpoint']}  log: {res['log_csv']}")
    return 0
