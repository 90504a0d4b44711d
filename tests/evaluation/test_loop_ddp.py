"""The evaluation loop under torch.distributed: two CPU processes (gloo), each running half of
the images, report exactly what one process reports for all of them."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..torch_setup import free_port

KEYS = ("miou", "iou", "pixel_accuracy", "hr_fractions", "class_hr_percent", "gmacs_per_image")


def _evaluate() -> dict:
    from segblocks.data import ProceduralStreets
    from segblocks.data.transforms import Normalize
    from segblocks.evaluation.evaluators import (
        HRShareEvaluator,
        MacsEvaluator,
        SegmentationEvaluator,
    )
    from segblocks.evaluation.loop import inference_on_dataset
    from segblocks.models import create_model
    from segblocks.models.segblocks_model import SegBlocksModel

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=9, decoder_width=32).eval()
    model = SegBlocksModel(net, "heuristic", 64, tau=0.4)
    data = ProceduralStreets(5, 128, 192, split="val")  # 5: the ranks get 3 and 2 images
    evaluators = [SegmentationEvaluator(9), HRShareEvaluator(9), MacsEvaluator(model)]
    r = inference_on_dataset(model, data, evaluators, normalize=Normalize())
    return {k: r[k] for k in KEYS}


def _worker(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = _evaluate()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_ranks_report_the_single_process_numbers():
    single = _evaluate()
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), results), nprocs=2)
    assert results[0] == results[1]
    for k in KEYS:
        assert results[0][k] == pytest.approx(single[k], nan_ok=True), k
    assert len(results[0]["hr_fractions"]) == 5
