"""Block policies: shapes, exact HR counts, the ECCVW heuristic, the learned policy net."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segblocks.policies import (
    POLICIES,
    AllHR,
    AllLR,
    FixedMask,
    HeuristicPolicy,
    LearnedPolicy,
    Policy,
    PolicyOutput,
    RandomPolicy,
    create_policy,
    num_hr_blocks,
)

ALL_NAMES = ["dense", "all_hr", "all_lr", "fixed", "random", "heuristic", "learned"]


def _make(name, grid, block):
    kw = {
        "fixed": {"mask": torch.rand(grid) > 0.5},
        "random": {"tau": 0.4, "seed": 1},
        "heuristic": {"tau": 0.3},
        "learned": {"block_size": block},
    }.get(name, {})
    return create_policy(name, **kw)


# ------------------------------------------------------------------------- common interface
def test_registry_names():
    assert sorted(POLICIES) == sorted(ALL_NAMES)
    with pytest.raises(ValueError, match="unknown policy 'nope'.*all_hr"):
        create_policy("nope")


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("train", [False, True])
def test_output_shapes_and_dtypes(name, train):
    grid, block, N = (2, 3), 32, 3
    pol = _make(name, grid, block).train(train)
    assert isinstance(pol, Policy) and pol.name == name
    img = torch.randn(N, 3, grid[0] * block, grid[1] * block)
    out = pol(img, grid)
    assert isinstance(out, PolicyOutput)
    assert out.mask.shape == (N, *grid) and out.mask.dtype == torch.bool
    assert out.mask.device == img.device
    assert out.hr_fraction.shape == (N,) and out.hr_fraction.is_floating_point()
    torch.testing.assert_close(out.hr_fraction, out.mask.flatten(1).float().mean(1))
    for t in (out.probs, out.log_probs):
        if t is not None:
            assert t.shape == (N, *grid) and t.is_floating_point()
    if out.probs is not None:
        assert bool(((out.probs >= 0) & (out.probs <= 1)).all())
    assert isinstance(pol.macs((grid[0] * block, grid[1] * block)), int)
    if name != "learned":
        assert pol.macs((grid[0] * block, grid[1] * block)) == 0


def test_all_hr_all_lr():
    img = torch.randn(2, 3, 64, 96)
    a, b = AllHR()(img, (2, 3)), AllLR()(img, (2, 3))
    assert a.mask.all() and not b.mask.any()
    assert a.hr_fraction.tolist() == [1.0, 1.0] and b.hr_fraction.tolist() == [0.0, 0.0]
    assert a.log_probs is None and b.log_probs is None


def test_bad_grid_and_image():
    with pytest.raises(ValueError, match="grid_shape"):
        AllHR()(torch.zeros(1, 3, 8, 8), (0, 2))
    with pytest.raises(ValueError, match="grid_shape"):
        AllHR()(torch.zeros(1, 3, 8, 8), 4)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        AllHR()(torch.zeros(3, 8, 8), (1, 1))


# ------------------------------------------------------------------------- fixed
def test_fixed_mask_broadcast_and_per_image():
    m = torch.tensor([[True, False, True], [False, False, True]])
    out = FixedMask(m)(torch.zeros(4, 3, 32, 48), (2, 3))
    assert out.mask.shape == (4, 2, 3)
    assert (out.mask == m).all()
    assert torch.allclose(out.hr_fraction, torch.full((4,), 0.5))
    per = torch.rand(2, 2, 3) > 0.5
    assert torch.equal(FixedMask(per)(torch.zeros(2, 3, 32, 48), (2, 3)).mask, per)
    # 0/1 integers are accepted, a [1, GH, GW] mask broadcasts
    out = FixedMask(m.int().unsqueeze(0))(torch.zeros(3, 3, 32, 48), (2, 3))
    assert (out.mask == m).all()


def test_fixed_mask_errors_name_shapes():
    pol = FixedMask(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        pol(torch.zeros(1, 3, 48, 32), (3, 2))
    with pytest.raises(ValueError, match=r"\(2, 2, 3\).*2 masks.*3 images"):
        FixedMask(torch.ones(2, 2, 3, dtype=torch.bool))(torch.zeros(3, 3, 32, 48), (2, 3))
    with pytest.raises(ValueError, match="dtype"):
        FixedMask(torch.rand(2, 3))
    with pytest.raises(ValueError, match="shape"):
        FixedMask(torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------------- random
def test_num_hr_blocks_rounds_half_up():
    assert num_hr_blocks(0.5, 5) == 3
    assert num_hr_blocks(0.5, 7) == 4
    assert num_hr_blocks(0.4, 8) == 3  # 3.2
    assert num_hr_blocks(0.45, 10) == 5  # 4.5
    assert num_hr_blocks(0.0, 9) == 0 and num_hr_blocks(1.0, 9) == 9


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.25, 0.4, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 8), (5, 7)])
def test_random_exact_count(tau, grid):
    pol = RandomPolicy(tau, seed=3)
    img = torch.zeros(5, 3, grid[0] * 2, grid[1] * 2)
    out = pol(img, grid)
    k = num_hr_blocks(tau, grid[0] * grid[1])
    assert out.mask.flatten(1).sum(1).tolist() == [k] * 5
    assert torch.allclose(out.probs, torch.full_like(out.probs, k / (grid[0] * grid[1])))


def test_random_seeded_reproducible_and_uniform():
    img = torch.zeros(8, 3, 8, 12)
    a = RandomPolicy(0.5, seed=7)(img, (4, 6)).mask
    b = RandomPolicy(0.5, seed=7)(img, (4, 6)).mask
    c = RandomPolicy(0.5, seed=8)(img, (4, 6)).mask
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(m.flatten().tolist()) for m in a}) > 1  # images get different masks
    # successive calls of one seeded policy give a fixed but changing sequence
    pol = RandomPolicy(0.5, seed=7)
    assert torch.equal(pol(img, (4, 6)).mask, a) and not torch.equal(pol(img, (4, 6)).mask, a)
    # unseeded: global RNG
    torch.manual_seed(5)
    d = RandomPolicy(0.5)(img, (4, 6)).mask
    torch.manual_seed(5)
    assert torch.equal(RandomPolicy(0.5)(img, (4, 6)).mask, d)
    # every cell equally likely: 2000 draws of 3 of 12 cells -> 500 per cell, sd ~ 19
    many = RandomPolicy(0.25, seed=0)(torch.zeros(2000, 3, 6, 8), (3, 4)).mask
    counts = many.sum(0).flatten().float()
    assert counts.sum() == 6000 and (counts - 500).abs().max() < 80


def test_random_bad_tau():
    for t in (-0.1, 1.5, "x"):
        with pytest.raises(ValueError, match="tau"):
            RandomPolicy(t)


# ------------------------------------------------------------------------- heuristic
def _reference_complexity(img, grid):
    N, C, H, W = img.shape
    s = H // grid[0]
    out = torch.zeros(N, *grid)
    for n in range(N):
        for i in range(grid[0]):
            for j in range(grid[1]):
                b = img[n, :, i * s : (i + 1) * s, j * s : (j + 1) * s]
                up = F.interpolate(F.avg_pool2d(b[None], 2), scale_factor=2, mode="nearest")[0]
                out[n, i, j] = (b - up).abs().mean()
    return out


def test_heuristic_complexity_matches_reference():
    img = torch.randn(2, 3, 48, 80)
    c = HeuristicPolicy.complexity(img, (3, 5))
    torch.testing.assert_close(c, _reference_complexity(img, (3, 5)), rtol=1e-5, atol=1e-6)


def _synthetic(block=16):
    """2x4 grid: left half flat -1, right half flat +2, one noisy block at (1, 2), one smooth
    ramp block at (0, 0) (small but nonzero detail)."""
    g = torch.Generator().manual_seed(0)
    img = torch.full((1, 3, 2 * block, 4 * block), -1.0)
    img[..., 2 * block :] = 2.0
    img[..., block : 2 * block, 2 * block : 3 * block] += torch.randn(3, block, block, generator=g)
    ramp = torch.linspace(0, 0.5, block)
    img[..., :block, :block] += ramp.view(1, block) + ramp.view(block, 1)
    return img


def test_heuristic_picks_high_detail_block():
    img = _synthetic()
    c = HeuristicPolicy.complexity(img, (2, 4))[0]
    assert c.flatten().argmax().item() == 1 * 4 + 2
    assert 0 < c[0, 0] < c[1, 2]
    others = torch.ones(2, 4, dtype=torch.bool)
    others[0, 0] = others[1, 2] = False
    assert torch.all(c[others] == 0)  # flat blocks (and the aligned half edge) lose nothing
    # tau: exactly one block -> the noisy one; two -> noisy + ramp
    m1 = HeuristicPolicy(tau=1 / 8)(img, (2, 4)).mask[0]
    assert m1.sum() == 1 and m1[1, 2]
    m2 = HeuristicPolicy(tau=2 / 8)(img, (2, 4)).mask[0]
    assert m2.sum() == 2 and m2[1, 2] and m2[0, 0]
    # threshold between the ramp's and the noise's complexity
    thr = float(c[0, 0] + c[1, 2]) / 2
    out = HeuristicPolicy(threshold=thr)(img, (2, 4))
    assert out.mask[0].sum() == 1 and out.mask[0, 1, 2]
    assert out.probs is None and out.log_probs is None
    torch.testing.assert_close(out.scores[0], c)


@pytest.mark.parametrize("tau", [0.0, 0.2, 0.5, 0.9, 1.0])
def test_heuristic_exact_count(tau):
    img = torch.randn(3, 3, 40, 60)  # grid 4x6 of 10 px blocks
    out = HeuristicPolicy(tau=tau)(img, (4, 6))
    k = num_hr_blocks(tau, 24)
    assert out.mask.flatten(1).sum(1).tolist() == [k] * 3
    # the chosen blocks are the k most complex ones of each image
    c = out.scores.flatten(1)
    for n in range(3):
        if 0 < k < 24:
            assert c[n][out.mask[n].flatten()].min() >= c[n][~out.mask[n].flatten()].max()


def test_heuristic_arguments():
    for kw in ({}, {"threshold": 0.1, "tau": 0.2}):
        with pytest.raises(ValueError, match="exactly one of threshold"):
            HeuristicPolicy(**kw)
    with pytest.raises(ValueError, match="square blocks"):
        HeuristicPolicy(tau=0.5)(torch.zeros(1, 3, 32, 48), (2, 2))
    with pytest.raises(ValueError, match="even"):
        HeuristicPolicy(tau=0.5)(torch.zeros(1, 3, 18, 18), (2, 2))


# ------------------------------------------------------------------------- learned
@pytest.mark.parametrize("block", [32, 64, 128])
@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (3, 2)])
def test_learned_grid_matches(block, grid):
    pol = LearnedPolicy(block).eval()
    img = torch.randn(2, 3, grid[0] * block, grid[1] * block)
    out = pol(img, grid)
    assert out.mask.shape == (2, *grid)
    assert out.probs.shape == out.log_probs.shape == out.scores.shape == (2, *grid)


@pytest.mark.parametrize("block,layers,head", [(16, 4, "conv"), (48, 4, "1x1"), (64, 2, "conv")])
def test_learned_other_configs(block, layers, head):
    pol = LearnedPolicy(block, width=8, layers=layers, head=head).eval()
    assert pol.stride == 4 * 2 ** (layers - 1)
    out = pol(torch.randn(1, 3, 2 * block, 3 * block), (2, 3))
    assert out.mask.shape == (1, 2, 3)


def test_learned_layout_is_the_authors():
    pol = LearnedPolicy(128)
    convs = [m for m in pol.net if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [7, 5, 5, 5]
    assert [c.stride[0] for c in convs] == [4, 2, 2, 2]
    assert [c.out_channels for c in convs] == [64, 64, 64, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in pol.net) == 3
    assert pol.input_size((8, 16)) == (256, 512)  # 2048x1024 image -> 512x256, as in the paper


def test_learned_eval_deterministic():
    pol = LearnedPolicy(32, init_tau=0.5)
    with torch.no_grad():  # make the decisions non-trivial
        pol.net[-1].weight.normal_(std=0.5)
    pol.eval()
    img = torch.randn(2, 3, 64, 128)
    a, b = pol(img, (2, 4)), pol(img, (2, 4))
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.mask, a.probs > 0.5)
    assert 0 < a.mask.sum() < a.mask.numel()


def test_learned_train_samples_with_log_probs():
    pol = LearnedPolicy(32, width=16, init_tau=0.5)
    with torch.no_grad():
        pol.net[-1].weight.normal_(std=0.5)
    pol.train()
    img = torch.randn(2, 3, 128, 128)
    outs = [pol(img, (4, 4)) for _ in range(3)]
    assert not all(torch.equal(outs[0].mask, o.mask) for o in outs[1:])  # sampled
    o = outs[0]
    expect = torch.where(o.mask, o.probs.log(), (1 - o.probs).log())
    torch.testing.assert_close(o.log_probs, expect, rtol=1e-5, atol=1e-6)
    assert o.log_probs.requires_grad and not o.mask.requires_grad
    o.log_probs.sum().backward()
    assert all(p.grad is not None for p in pol.parameters())


def test_learned_init_tau():
    pol = LearnedPolicy(32, init_tau=0.3).train()
    out = pol(torch.randn(8, 3, 256, 256), (8, 8))
    assert (out.probs - 0.3).abs().max() < 0.02
    assert abs(out.mask.float().mean().item() - 0.3) < 0.06  # 512 Bernoulli(0.3) draws
    with pytest.raises(ValueError, match="init_tau"):
        LearnedPolicy(32, init_tau=1.0)


def test_learned_errors():
    pol = LearnedPolicy(32)
    with pytest.raises(ValueError, match=r"64x64 .*expected an image of 64x96"):
        pol(torch.zeros(1, 3, 64, 64), (2, 3))
    with pytest.raises(ValueError, match="multiple of the block size"):
        pol.macs((100, 64))
    with pytest.raises(ValueError, match="head"):
        LearnedPolicy(32, head="fc")


def _hook_macs(pol: LearnedPolicy, img: torch.Tensor, grid) -> int:
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += out[0].numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    hs = [m.register_forward_hook(hook) for m in pol.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        pol.eval()(img, grid)
    for h in hs:
        h.remove()
    return total


@pytest.mark.parametrize(
    "block,grid,kw",
    [(128, (1, 2), {}), (64, (2, 3), {}), (32, (3, 2), {"head": "1x1"}), (16, (2, 2), {})],
)
def test_learned_macs_equal_hook_count(block, grid, kw):
    pol = LearnedPolicy(block, **kw)
    hw = (grid[0] * block, grid[1] * block)
    assert pol.macs(hw) == _hook_macs(pol, torch.zeros(1, 3, *hw), grid)


def test_learned_macs_paper_setting():
    # 2048x1024, block 128: input 512x256; by hand, per conv H_out*W_out*C_out*C_in*k*k
    expect = (
        128 * 64 * 64 * 3 * 7 * 7
        + 64 * 32 * 64 * 64 * 5 * 5
        + 32 * 16 * 64 * 64 * 5 * 5
        + 16 * 8 * 1 * 64 * 5 * 5
    )
    assert expect == 339_419_136  # the paper's "policy GMACs 0.34" (TPAMI Table 6)
    assert LearnedPolicy(128).macs((1024, 2048)) == expect


def test_learned_follows_dtype():
    pol = LearnedPolicy(32, width=8).double().eval()
    out = pol(torch.randn(1, 3, 64, 64, dtype=torch.float64), (2, 2))
    assert out.mask.shape == (1, 2, 2)
