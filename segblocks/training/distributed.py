"""Process group and device of a training run (single process, or one per rank under
``torchrun``)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..errors import ConfigError
from .config import TrainConfig

__all__ = ["setup_distributed", "unwrap"]


def setup_distributed(cfg: TrainConfig):
    """``(rank, world_size, device, initialised_here)``: the process group is initialised
    under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set; gloo on the CPU, nccl on CUDA) and the
    device picked from ``cfg.device``."""
    if cfg.device.startswith("cuda"):
        index = int(cfg.device.split(":")[1]) if ":" in cfg.device else 0
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            raise ConfigError(
                f"config key 'device': {cfg.device!r} but this machine has {count or 'no'} CUDA "
                "device(s); use device=auto or device=cpu"
            )
    initialised_here = False
    if dist.is_available() and not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and "RANK" in os.environ:
            want_cuda = cfg.device.startswith("cuda") or (
                cfg.device == "auto" and torch.cuda.is_available()
            )
            dist.init_process_group(backend="nccl" if want_cuda else "gloo")
            initialised_here = True
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', rank % torch.cuda.device_count()))}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device, initialised_here


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def unwrap(model):
    """The model inside a ``DistributedDataParallel`` wrapper (itself otherwise)."""
    return model.module if hasattr(model, "module") else model
