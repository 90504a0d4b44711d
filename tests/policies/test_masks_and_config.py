"""The shared mask helpers (random / top-k) and each policy's translation from a run config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segblocks.blocks.macs import macs_per_output_element
from segblocks.policies import (
    HeuristicPolicy,
    LearnedPolicy,
    PolicyConfigError,
    RandomPolicy,
    policy_from_config,
    policy_kwargs_from_config,
    random_mask,
    top_k_mask,
)
from segblocks.policies.budget import top_k_mask as budget_top_k_mask


def test_random_mask_is_the_seeded_randperm():
    gen, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m = random_mask(2, (3, 5), 4, generator=gen)
    assert m.shape == (2, 3, 5) and m.dtype == torch.bool
    assert m.flatten(1).sum(1).tolist() == [4, 4]
    for i in range(2):  # one randperm per image, in order: the masks the benchmarks relied on
        expect = torch.zeros(15, dtype=torch.bool)
        expect[torch.randperm(15, generator=ref)[:4]] = True
        assert torch.equal(m[i].flatten(), expect)
    assert torch.equal(gen.get_state(), ref.get_state())
    assert not random_mask(1, (2, 2), 0).any() and random_mask(1, (2, 2), 4).all()
    with pytest.raises(ValueError, match="k=5 HR blocks must be in"):
        random_mask(1, (2, 2), 5)


def test_top_k_mask_ties_and_tensor_k():
    assert budget_top_k_mask is top_k_mask
    scores = torch.tensor([[[1.0, 3.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert top_k_mask(scores, 1).tolist() == [
        [[False, True], [False, False]],  # tie 3 / 3: the lower index
        [[True, False], [False, False]],
    ]
    per_image = top_k_mask(scores, torch.tensor([2, 3]))
    assert per_image.flatten(1).sum(1).tolist() == [2, 3]
    assert torch.equal(per_image[0], top_k_mask(scores[:1], 2)[0])


def test_random_and_heuristic_policies_use_top_k():
    img = torch.randn(2, 3, 64, 128)
    out = RandomPolicy(0.4, seed=1)(img, (2, 4))
    assert torch.equal(out.mask, top_k_mask(out.scores, 3))
    h = HeuristicPolicy(tau=0.4)
    assert torch.equal(h(img, (2, 4)).mask, top_k_mask(h.complexity(img, (2, 4)), 3))


def test_policy_kwargs_from_config():
    f = policy_kwargs_from_config
    assert f("random", {"seed": 0}, tau=0.4, block_size=64) == {"seed": 0, "tau": 0.4}
    assert f("random", {"tau": 0.2}, tau=0.4) == {"tau": 0.2}  # the policy's own tau wins
    assert f("heuristic", {}, tau=0.4) == {"tau": 0.4}
    assert f("heuristic", {"threshold": 0.1}, tau=0.4) == {"threshold": 0.1}
    assert f("learned", {"width": 8}, tau=0.4, block_size=64) == {"width": 8, "block_size": 64}
    assert f("learned", {}, tau=0.4) == {}  # no block size given: none filled in
    assert f("all_hr", None, tau=0.4, block_size=64) == {}
    assert f("dense", {"scale": 0.5}, tau=0.4, block_size=64) == {"scale": 0.5}
    with pytest.raises(PolicyConfigError, match="option block_size=32 differs from block_size"):
        f("learned", {"block_size": 32}, block_size=64)
    with pytest.raises(PolicyConfigError, match="sets both tau and threshold; keep one"):
        f("heuristic", {"tau": 0.2, "threshold": 0.1})
    with pytest.raises(PolicyConfigError, match="needs a mask for policy fixed"):
        f("fixed", {})
    with pytest.raises(ValueError, match=r"unknown policy 'rando' \(did you mean 'random'"):
        f("rando")


def test_policy_from_config_builds_the_policy():
    pol = policy_from_config("learned", {"width": 8}, tau=0.4, block_size=64)
    assert isinstance(pol, LearnedPolicy) and pol.block_size == 64 and pol.width == 8
    assert RandomPolicy.from_config({"seed": 2}, tau=0.25).tau == 0.25
    assert HeuristicPolicy.from_config(tau=0.3).tau == 0.3


def test_one_mac_formula_for_every_counter():
    conv = nn.Conv2d(8, 6, (3, 5), groups=2)
    assert macs_per_output_element(conv) == 4 * 3 * 5
    assert macs_per_output_element(conv.weight) == macs_per_output_element(conv)
    assert macs_per_output_element(nn.Linear(7, 3)) == 7
    with pytest.raises(TypeError, match="only Conv2d and Linear"):
        macs_per_output_element(nn.ReLU())
