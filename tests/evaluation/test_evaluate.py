import copy
import json
import math

import pytest
import torch

from segblocks.data import CLASSES, ProceduralStreets
from segblocks.data.transforms import Normalize
from segblocks.evaluation.evaluate import HIST_BINS, EvalResult, evaluate
from segblocks.measuring.macs import count_macs_dense
from segblocks.models.segblocks_model import SegBlocksModel


def _eval(model, data, **kw):
    kw.setdefault("progress", False)
    return evaluate(model, data, normalize=Normalize(), **kw)


def test_evaluate_random_policy_fields(net, data, tmp_path):
    model = SegBlocksModel(net, policy="random", tau=0.5, block_size=64, seed=0)
    r = _eval(model, data)
    assert isinstance(r, EvalResult)
    assert r.num_images == 4
    assert 0.0 <= r.miou <= 1.0
    assert 0.0 <= r.pixel_accuracy <= 1.0
    assert len(r.iou) == 9 and r.class_names == list(CLASSES)
    # GMACs between all-LR and all-HR of the same network.
    lo = _eval(SegBlocksModel(net, policy="all_lr", block_size=64), data, fps=False).gmacs
    hi = _eval(SegBlocksModel(net, policy="all_hr", block_size=64), data, fps=False).gmacs
    assert lo < r.gmacs < hi
    assert len(r.gmacs_per_image) == 4
    assert r.gmacs_policy == 0.0
    # 8 blocks, tau 0.5 -> 4 HR blocks in every image
    assert r.hr_fractions == [0.5] * 4
    assert sum(r.hr_hist_counts) == 4 and len(r.hr_hist_counts) == HIST_BINS
    assert r.hr_hist_edges[0] == 0.0 and r.hr_hist_edges[-1] == 100.0
    assert len(r.class_hr_percent) == 9
    assert all(math.isnan(v) or 0.0 <= v <= 100.0 for v in r.class_hr_percent)
    assert r.fps is not None and r.fps > 0 and r.timed_images == 2
    assert r.peak_memory_mb is None or r.peak_memory_mb > 0
    # serialisation
    p = r.save_json(tmp_path / "res.json")
    d = json.loads(p.read_text())
    assert d["num_images"] == 4 and d["miou"] == pytest.approx(r.miou)
    assert "mIoU" in r.table()


def test_all_hr_gmacs_equal_dense(net, data):
    r = _eval(SegBlocksModel(net, policy="all_hr", block_size=64), data, fps=False, max_images=2)
    dense = count_macs_dense(net, torch.zeros(1, 3, 128, 256)).total / 1e9
    assert r.gmacs == pytest.approx(dense, rel=0, abs=1e-12)
    assert r.fps is None and r.timed_images == 0
    assert r.num_images == 2
    assert r.hr_fractions == [1.0, 1.0]
    # every present class is processed entirely at HR
    assert all(math.isnan(v) or v == 100.0 for v in r.class_hr_percent)


def test_dense_network_counts_as_full_hr(net, data):
    r = _eval(net, data, fps=False, max_images=2)
    dense = count_macs_dense(net, torch.zeros(1, 3, 128, 256)).total / 1e9
    assert r.gmacs == pytest.approx(dense)
    assert r.hr_fractions == [1.0, 1.0]
    assert r.hr_hist_counts[-1] == 2


def test_class_hr_percent_matches_grid(net, data):
    """All-LR except one fixed block: each class's HR % is its pixel share in that block."""
    from segblocks.policies import create_policy

    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = True
    pol = create_policy("fixed", mask=mask)
    r = _eval(SegBlocksModel(net, policy=pol, block_size=64), data, fps=False, max_images=1)
    lab = data[0][1]
    for k in range(9):
        tot = int((lab == k).sum())
        inside = int((lab[:64, 64:128] == k).sum())
        if tot == 0:
            assert math.isnan(r.class_hr_percent[k])
        else:
            assert r.class_hr_percent[k] == pytest.approx(100 * inside / tot)


def test_training_mode_restored(net, data):
    net.train()
    try:
        _eval(net, data, fps=False, max_images=1)
        assert net.training
    finally:
        net.eval()


def test_empty_dataset_raises(net):
    with pytest.raises(ValueError, match="no images"):
        _eval(net, ProceduralStreets(0, 128, 256))


def test_bfloat16_evaluation(net, data):
    """dtype=bfloat16 runs model and images in bfloat16; metrics on the argmax as usual."""
    model = SegBlocksModel(copy.deepcopy(net), policy="random", tau=0.5, block_size=64, seed=0)
    r = _eval(model, data, fps=False, max_images=2, dtype=torch.bfloat16)
    assert r.dtype == "bfloat16" and "bfloat16" in r.table()
    assert 0.0 <= r.miou <= 1.0 and r.num_images == 2
    assert all(p.dtype == torch.bfloat16 for p in model.net.parameters())
    f32 = _eval(
        SegBlocksModel(net, policy="random", tau=0.5, block_size=64, seed=0),
        data,
        fps=False,
        max_images=2,
    )
    assert f32.dtype == "float32" and r.gmacs == pytest.approx(f32.gmacs)
