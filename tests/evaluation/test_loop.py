"""The evaluation loop and its evaluators give the numbers of the two loops they replaced
(``evaluate`` and the trainer's validation, recorded before the change in golden_loop.json),
on the procedural data with a fixed random network."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from segblocks.data.transforms import Normalize
from segblocks.evaluation.evaluate import evaluate
from segblocks.evaluation.evaluators import DatasetEvaluator, SegmentationEvaluator
from segblocks.evaluation.loop import inference_on_dataset
from segblocks.models.segblocks_model import SegBlocksModel
from segblocks.training.config import load_config
from segblocks.training.trainer import train

from ..tiny import CONFIG, TINY

GOLDEN = json.loads((Path(__file__).parent / "golden_loop.json").read_text())
POLICIES = {
    "heuristic": dict(policy="heuristic", tau=0.4),
    "random": dict(policy="random", tau=0.5, seed=0),
    "dense075": dict(policy="dense", scale=0.75),
    "all_hr": dict(policy="all_hr"),
}


# MACs, HR shares and histograms follow from the masks and labels alone: exact. Scores come
# from the argmax of a random network's logits, where another CPU's float rounding may flip
# a few pixels: a few pixels' worth of tolerance (a loop bug moves them by far more).
SCORES = ("miou", "iou", "pixel_accuracy")


def _close(a, b, tol=1e-9):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y, tol)
    elif a is None or b is None:
        assert a is None and b is None
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=tol)


def _check(result: dict, golden: dict) -> None:
    for key, want in golden.items():
        _close(result[key], want, 2e-3 if key in SCORES else 1e-12)


@pytest.mark.parametrize("name", list(POLICIES))
def test_evaluate_gives_the_recorded_numbers(net, data, name):
    model = SegBlocksModel(net, block_size=64, **POLICIES[name])
    r = evaluate(model, data, normalize=Normalize(), fps=False, progress=False).to_dict()
    _check(r, GOLDEN[name])


def test_budget_gives_the_recorded_numbers(net, data):
    model = SegBlocksModel(net, block_size=64, policy="heuristic", tau=0.4)
    r = evaluate(model, data, normalize=Normalize(), fps=False, progress=False, budget="25%")
    _check(r.to_dict(), GOLDEN["heuristic_budget25"])


@pytest.mark.parametrize("batch", [1, 2])
def test_trainer_validation_gives_the_recorded_numbers(batch):
    with tempfile.TemporaryDirectory() as d:
        res = train(load_config(CONFIG, [*TINY, f"out_dir={d}", f"eval_batch_size={batch}"]))
    _check(res["val"], GOLDEN[f"train_val_bs{batch}"])


def test_batched_loop_equals_batch_one(net, data):
    model = SegBlocksModel(net, block_size=64, policy="heuristic", tau=0.4)
    one = inference_on_dataset(model, data, [SegmentationEvaluator(9)], normalize=Normalize())
    two = inference_on_dataset(
        model, data, [SegmentationEvaluator(9)], normalize=Normalize(), batch_size=2
    )
    assert one["miou"] == pytest.approx(two["miou"], abs=1e-9)


def test_evaluators_must_not_report_the_same_key(net, data):
    class Twice(DatasetEvaluator):
        def process(self, batch):
            pass

        def evaluate(self):
            return {"miou": 0.0}

    model = SegBlocksModel(net, block_size=64, policy="all_hr")
    with pytest.raises(ValueError, match="Twice reports \\['miou'\\]"):
        inference_on_dataset(model, data, [SegmentationEvaluator(9), Twice()], max_images=1)


def test_loop_restores_training_flags_and_rng(net, data):
    model = SegBlocksModel(net, block_size=64, policy="random", tau=0.5).train()
    state = torch.get_rng_state()
    inference_on_dataset(model, data, [SegmentationEvaluator(9)], max_images=2)
    assert model.training and torch.equal(state, torch.get_rng_state())
