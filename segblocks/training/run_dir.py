"""The output folder of a training run: claimed under a lock so that two trainers never write
to one run, refused when it holds another run (unless ``resume`` / ``overwrite``), and what a
Ctrl-C leaves in it."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no out_dir lock
    fcntl = None

import torch.distributed as dist

from ..errors import OutputDirError, SegBlocksError, TrainingInterrupted
from ..models.checkpoint import remove_stale_temp_files
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_NAME",
    "LOCK_NAME",
    "RUN_OUTPUTS",
    "RunProgress",
    "claim_out_dir",
    "clear_run",
    "release_lock",
]

CHECKPOINT_NAME = "last.pt"
LOCK_NAME = "train.lock"
#: what ``overwrite=true`` deletes from ``out_dir`` (other files are left alone)
RUN_OUTPUTS = (CHECKPOINT_NAME, "log.csv", "config.yaml", "metrics.json", "tb")


class RunProgress:
    """How far a run got (for the Ctrl-C message)."""

    def __init__(self, checkpoint: Path, epochs: int):
        self.checkpoint, self.epochs = checkpoint, epochs
        self.epoch: int | None = None  # running epoch, 1-based
        self.saved = 0  # epoch held by the checkpoint

    def interrupted(self) -> TrainingInterrupted:
        where = (
            f"in epoch {self.epoch} of {self.epochs}"
            if self.epoch is not None
            else "before the first epoch"
        )
        held = (
            f"{self.checkpoint} holds epoch {self.saved}"
            if self.saved
            else f"no checkpoint written yet in {self.checkpoint.parent}"
        )
        return TrainingInterrupted(
            f"training interrupted {where}; {held}: continue with resume=true",
            epoch=self.epoch,
            saved_epoch=self.saved,
            checkpoint=self.checkpoint,
            epochs=self.epochs,
        )


def lock_out_dir(out_dir: Path):
    """Take ``out_dir/train.lock`` (``fcntl.flock``) or raise naming the process holding it."""
    if fcntl is None:
        return None
    f = open(out_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held until _release_lock
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = " ".join(f.read().split()) or "process unknown"
        f.close()
        raise OutputDirError(
            f"out_dir {out_dir} is in use by another segblocks train ({holder}); wait for it "
            "to finish or stop it, or choose another out_dir"
        ) from None
    f.seek(0)
    f.truncate()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
    f.flush()
    return f


def release_lock(f) -> None:
    if f is None:
        return
    try:
        f.seek(0)
        f.truncate()
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except OSError:
        pass
    finally:
        f.close()


def prepare_out_dir(cfg: TrainConfig, out_dir: Path):
    """Create and lock ``out_dir``; refuse a non-empty one without resume / overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"out_dir {out_dir} is a file, not a folder; choose another out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(
            f"cannot create out_dir {out_dir}: {e.strerror or e}; choose another out_dir"
        ) from None
    lock = lock_out_dir(out_dir)
    try:
        remove_stale_temp_files(out_dir / CHECKPOINT_NAME)
        others = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_NAME)
        if others and not (cfg.resume or cfg.overwrite):
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            raise OutputDirError(
                f"out_dir {out_dir} is not empty ({shown}): continue that run with resume=true, "
                "replace it with overwrite=true, or choose another out_dir"
            )
    except BaseException:
        release_lock(lock)
        raise
    return lock


def claim_out_dir(cfg: TrainConfig, rank: int, world: int):
    """:func:`prepare_out_dir` on rank 0; its error (if any) is raised on every rank."""
    lock, err = None, None
    if rank == 0:
        try:
            lock = prepare_out_dir(cfg, Path(cfg.out_dir))
        except SegBlocksError as e:
            err = e
    if world > 1:
        box = [None if err is None else str(err)]
        dist.broadcast_object_list(box, src=0)
        if err is None and box[0] is not None:
            err = OutputDirError(box[0])
    if err is not None:
        release_lock(lock)
        raise err
    return lock


def clear_run(out_dir: Path) -> None:
    """``overwrite=true``: delete the previous run's outputs (:data:`RUN_OUTPUTS`)."""
    for name in RUN_OUTPUTS:
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
