"""Hybrid REINFORCE loss (Eqs. 5-13): rewards by hand, toy policy learning, bootstrapped CE."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from segblocks.training.losses import (
    HybridLoss,
    block_mean,
    bootstrapped_cross_entropy,
    policy_rewards,
)


def test_rewards_match_equations_by_hand():
    block_loss = torch.tensor([[[2.0, 0.5], [1.0, 0.5]]])
    image_loss = torch.tensor([1.0])
    actions = torch.tensor([[[True, False], [False, False]]])  # sigma = 0.25
    total, task, comp = policy_rewards(block_loss, image_loss, actions, tau=0.5, gamma=10)
    # Eq. 9: HR block: L_b - L_img; LR block: -(L_b - L_img)
    assert task.tolist() == [[[1.0, 0.5], [0.0, 0.5]]]
    # Eq. 7: HR: -(sigma - tau) = 0.25 ; LR: sigma - tau = -0.25
    assert comp.tolist() == [[[0.25, -0.25], [-0.25, -0.25]]]
    torch.testing.assert_close(total, task + 10 * comp)


def test_block_mean_ignores_invalid_and_handles_padding():
    v = torch.arange(16.0).view(1, 4, 4)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[0, :2, :2] = False  # block (0, 0) has no valid pixel
    blk, img = block_mean(v, valid, (2, 2))
    expected_img = v[valid].mean()
    assert img.item() == pytest.approx(expected_img.item())
    assert blk[0, 0, 0].item() == pytest.approx(expected_img.item())  # falls back to image mean
    assert blk[0, 1, 1].item() == pytest.approx(v[0, 2:, 2:].mean().item())
    blk3, _ = block_mean(v[:, :3, :3], valid[:, :3, :3], (2, 2), block_size=2)
    assert blk3[0, 1, 1].item() == pytest.approx(10.0)  # only pixel (2, 2) is left
    with pytest.raises(ValueError, match="block_size"):
        block_mean(v[:, :3, :3], valid[:, :3, :3], (2, 2))


def _toy_train(hard, tau, gamma, steps=300, seed=0):
    """Policy = one logit per block. LR costs loss 2 in `hard` blocks, 0.1 elsewhere; HR 0.1."""
    torch.manual_seed(seed)
    gh, gw = hard.shape
    logit = torch.zeros(1, gh, gw, requires_grad=True)
    opt = torch.optim.Adam([logit], lr=0.05)
    crit = HybridLoss(tau=tau, gamma=gamma, beta=1.0)
    for _ in range(steps):
        p = torch.sigmoid(logit).expand(8, gh, gw)
        a = torch.bernoulli(p.detach()).bool()
        log_probs = torch.where(a, torch.log(p), torch.log1p(-p))
        # A per-pixel "loss" map (4x4 px blocks) realised by logits against a fixed target.
        block_l = torch.where(a, torch.tensor(0.1), torch.where(hard, 2.0, 0.1))
        pix = block_l.repeat_interleave(4, 1).repeat_interleave(4, 2)
        # cross-entropy of 2 classes with logits (0, -z) and target 0 equals softplus(-z)... we
        # want CE = pix: choose z with log(1 + e^-z) = pix  ->  z = -log(e^pix - 1)
        z = -torch.log(torch.expm1(pix))
        logits = torch.stack([torch.zeros_like(z), -z], 1)
        target = torch.zeros(8, gh * 4, gw * 4, dtype=torch.long)
        out = crit(logits, target, SimpleNamespace(grid=a, log_probs=log_probs))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return torch.sigmoid(logit.detach())[0]


def test_reinforce_moves_policy_toward_high_loss_blocks():
    hard = torch.zeros(4, 4, dtype=torch.bool)
    hard[0, :2] = True
    hard[3, 3] = True  # 3 of 16 blocks lose a lot at low resolution
    p = _toy_train(hard, tau=3 / 16, gamma=1.0)
    assert p[hard].min() > 0.8
    assert p[~hard].max() < 0.3


def test_reinforce_moves_hr_fraction_toward_tau():
    hard = torch.zeros(4, 4, dtype=torch.bool)  # no task signal at all
    for tau in (0.25, 0.75):
        p = _toy_train(hard, tau=tau, gamma=10.0, steps=200)
        assert abs(p.mean().item() - tau) < 0.1


def test_fixed_policy_has_no_policy_term_and_bootstrap_picks_hard_pixels():
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = 255
    out = HybridLoss(tau=0.5)(
        logits, target, SimpleNamespace(grid=torch.ones(2, 2, 2, dtype=torch.bool), log_probs=None)
    )
    ref = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(out.loss, ref)
    assert out.policy_loss.item() == 0
    pix = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[target != 255]
    top = torch.topk(pix, 10).values.mean()
    torch.testing.assert_close(bootstrapped_cross_entropy(logits, target, k=10, threshold=1e9), top)
    many = pix[pix > 0.1]
    torch.testing.assert_close(
        bootstrapped_cross_entropy(logits, target, k=5, threshold=0.1), many.mean()
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        HybridLoss(tau=1.5)
    with pytest.raises(ValueError, match="criterion"):
        HybridLoss(tau=0.5, criterion="dice")
