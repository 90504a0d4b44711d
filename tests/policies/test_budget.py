"""Budgeted inference: parse, rank, fit (fraction / blocks / GMACs), clamp, errors."""

from __future__ import annotations

import math

import pytest
import torch

from segblocks.measuring.macs import count_macs_segblocks
from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel
from segblocks.policies.budget import AffineCost, Budget, budget_count, top_k_mask


def test_parse_and_bad_budgets():
    assert Budget.parse(0.4) == Budget(0.4, "fraction")
    assert Budget.parse("40%") == Budget(0.4, "fraction")
    assert Budget.parse("12blocks") == Budget(12.0, "blocks")
    assert Budget.parse("2.5 GMACs") == Budget(2.5, "gmacs")
    assert Budget.parse("35ms") == Budget(35.0, "ms")
    for bad, msg in [
        (-1, "must be a finite number >= 0"),
        (float("nan"), "must be a finite number >= 0"),
        ("nanms", "must be a finite number >= 0"),
        ("-3ms", "must be a finite number >= 0"),
        (1.5, "write '1.5%'"),
        ("fast", "not a number with an optional unit"),
    ]:
        with pytest.raises(ValueError, match=msg):
            Budget.parse(bad)


def test_top_k_is_deterministic_with_ties():
    scores = torch.tensor([[[1.0, 3.0], [3.0, 0.0]]])
    assert top_k_mask(scores, 1).tolist() == [[[False, True], [False, False]]]
    assert top_k_mask(scores, 2).tolist() == [[[False, True], [True, False]]]
    assert not top_k_mask(scores, 0).any()


def test_affine_budget_count_fits_and_clamps():
    cost = AffineCost(1.0, 0.5, "gmacs")
    assert budget_count(Budget(2.2, "gmacs"), 10, cost) == 2  # 2.0 fits, 2.5 does not
    assert budget_count(Budget(2.0, "gmacs"), 10, cost) == 2
    with pytest.warns(UserWarning, match="below the all-low-resolution cost 1 GMACs"):
        assert budget_count(Budget(0.5, "gmacs"), 10, cost) == 0
    with pytest.warns(UserWarning, match="above the all-high-resolution cost 6 GMACs"):
        assert budget_count(Budget(7.0, "gmacs"), 10, cost) == 10
    with pytest.warns(UserWarning, match="exceeds the 10 blocks"):
        assert budget_count(Budget(12, "blocks"), 10) == 10
    assert budget_count(Budget(0.25, "fraction"), 10) == 2


@pytest.mark.parametrize("policy", ["heuristic", "learned", "random"])
def test_model_budgets_fit_and_follow_the_ranking(policy):
    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=3, decoder_width=16).eval()
    kw = {"tau": 0.5} if policy != "learned" else {}
    model = SegBlocksModel(net, policy, 64, **kw).eval()
    x = torch.randn(2, 3, 128, 256)
    B = 8
    with torch.no_grad():
        pol = model.policy(x, (2, 4))
        for spec, k in [(0.5, 4), ("3blocks", 3), ("100%", 8), (0.0, 0)]:
            out = model(x, budget=spec)
            assert out.grid.flatten(1).sum(1).tolist() == [k, k]
            if policy != "random":  # the random policy draws new keys on every call
                assert torch.equal(out.grid, top_k_mask(pol.scores, k))
        cost = model.mac_cost(128, 256)
        for g in (cost(0) + 0.3 * cost.per_block, cost(3) + 1e-6, cost(5) - 1e-6):
            out = model(x, budget=f"{g}gmacs")
            k = int(out.grid[0].sum())
            assert k == math.floor((g - cost.base) / cost.per_block + 1e-9)
            used = count_macs_segblocks(model, x[:1], out.grid[:1]).total / 1e9
            assert used <= g + 1e-9 and (k == B or cost(k + 1) > g)
            assert used == pytest.approx(cost(k), rel=1e-9)


def test_budget_errors():
    net = create_model("swiftnet_rn18", num_classes=3, decoder_width=16).eval()
    x = torch.randn(1, 3, 128, 128)
    with pytest.raises(ValueError, match="does not rank blocks"):
        SegBlocksModel(net, "all_hr", 64)(x, budget=0.5)
    with pytest.raises(ValueError, match="dense policy has no blocks"):
        SegBlocksModel(net, "dense", 64)(x, budget=0.5)
    model = SegBlocksModel(net, "heuristic", 64, tau=0.5).eval()
    with pytest.raises(ValueError, match="mask or a budget, not both"):
        model(x, mask=torch.ones(1, 2, 2, dtype=torch.bool), budget=0.5)
    with pytest.raises(ValueError, match="needs a latency calibration"):
        model(x, budget="30ms")
