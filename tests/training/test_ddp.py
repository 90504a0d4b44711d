"""DDP smoke test: two CPU processes (gloo) train 2 iterations; rank 0 writes the checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import segblocks
from segblocks.models import load_checkpoint

from ..tiny import TINY
from ..torch_setup import free_port

CONFIGS = Path(segblocks.__file__).resolve().parent / "configs"  # packaged configs


def _worker(rank: int, world: int, port: int, out_dir: str, results) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from segblocks.training.config import load_config
    from segblocks.training.trainer import train

    cfg = load_config(
        str(CONFIGS / "procedural_tiny.yaml"),
        [*TINY, "dataset_kwargs.num_images=8", "device=cpu", f"out_dir={out_dir}"],
    )
    res = train(cfg)
    assert not dist.is_initialized()  # train() cleans up the group it created
    results[rank] = (res["global_step"], res["val"]["miou"])


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ddp_gloo_two_processes(tmp_path):
    world = 2
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path), results), nprocs=world)
    assert sorted(results.keys()) == [0, 1]
    # 8 images / 2 ranks / batch 2 = 2 iterations on each rank
    assert results[0][0] == results[1][0] == 2
    assert results[0][1] == pytest.approx(results[1][1])  # synced confusion matrix
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and len(ckpt["rng_states"]) == world
    assert (tmp_path / "log.csv").exists()
