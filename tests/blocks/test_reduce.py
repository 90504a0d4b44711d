"""Per-image reductions on block tensors (global pooling, squeeze-excitation, ASPP pooling)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from segblocks.blocks import UnsupportedBlockOp, block_combine, block_sample
from segblocks.blocks.layers.reduce import global_max, global_mean, global_sum

S = 8  # block side


def _masks():
    g = torch.Generator().manual_seed(3)
    return {
        "all_hr": torch.ones(2, 2, 3, dtype=torch.bool),
        "all_lr": torch.zeros(2, 2, 3, dtype=torch.bool),
        "mixed": torch.rand(2, 2, 3, generator=g) < 0.5,
    }


def _ref(xb, mask):
    """Per image, from the blocks one by one: weighted sum / mean and max (LR pixel = 4)."""
    hr, lr = xb.parts
    N, C = mask.shape[0], hr.shape[1] if hr.shape[0] else lr.shape[1]
    total, big = torch.zeros(N, C, dtype=hr.dtype), torch.full((N, C), -torch.inf, dtype=hr.dtype)
    ih = il = 0
    for n in range(N):
        for cell in mask[n].flatten():
            if cell:
                b, w = hr[ih], 1.0
                ih += 1
            else:
                b, w = lr[il], 4.0
                il += 1
            total[n] += w * b.sum((1, 2))
            big[n] = torch.maximum(big[n], b.amax((1, 2)))
    return total, total / (mask[0].numel() * S * S), big


@pytest.mark.parametrize("kind", ["all_hr", "all_lr", "mixed"])
def test_global_reductions_match_reference_and_dense(kind):
    torch.manual_seed(0)
    mask = _masks()[kind]
    x = torch.randn(2, 5, 2 * S, 3 * S, dtype=torch.float64)
    xb = block_sample(x, mask, S)
    total, mean, big = _ref(xb, mask)
    assert_close(global_sum(xb), total)
    assert_close(global_mean(xb), mean)
    assert_close(global_max(xb), big)
    assert_close(F.adaptive_avg_pool2d(xb, 1), mean[:, :, None, None])
    assert_close(F.adaptive_avg_pool2d(xb, (1, 1)), mean[:, :, None, None])
    assert_close(xb.mean((2, 3), keepdim=True), mean[:, :, None, None])
    assert_close(torch.mean(xb, dim=(-1, -2)), mean)
    assert_close(xb.sum((2, 3)), total)
    assert_close(xb.amax((2, 3)), big)
    assert_close(F.adaptive_max_pool2d(xb, 1), big[:, :, None, None])
    if kind == "all_hr":  # == the dense op
        assert_close(F.adaptive_avg_pool2d(xb, 1), F.adaptive_avg_pool2d(x, 1))
        assert_close(F.adaptive_max_pool2d(xb, 1), F.adaptive_max_pool2d(x, 1))
    if kind == "all_lr":  # == the dense op on the 2x-pooled map
        pooled = F.avg_pool2d(x, 2)
        assert_close(F.adaptive_avg_pool2d(xb, 1), F.adaptive_avg_pool2d(pooled, 1))
        assert_close(F.adaptive_max_pool2d(xb, 1), F.adaptive_max_pool2d(pooled, 1))
        assert_close(xb.sum((2, 3)), 4 * pooled.sum((2, 3)))


@pytest.mark.parametrize("kind", ["all_hr", "mixed"])
def test_squeeze_excitation_gating_and_aspp_pooling_branch(kind):
    from torchvision.ops.misc import SqueezeExcitation

    torch.manual_seed(0)
    mask = _masks()[kind]
    x = torch.randn(2, 8, 2 * S, 3 * S)
    xb = block_sample(x, mask, S)
    se = SqueezeExcitation(8, 4, scale_activation=torch.nn.Hardsigmoid).eval()
    with torch.no_grad():
        gate = se._scale(xb)  # per image [N, C, 1, 1]
        out = block_combine(se(xb))
        ref = block_combine(xb) * gate
        assert_close(out, ref)
        if kind == "all_hr":
            assert_close(out, se(x))
        # ASPP image pooling: pool, 1x1 conv, upsample to the map size, concatenate
        pooled = F.interpolate(gate, size=x.shape[-2:], mode="bilinear", align_corners=False)
        cat = torch.cat([xb, pooled], 1)
        assert_close(block_combine(cat), torch.cat([block_combine(xb), pooled], 1))


def test_gradients_of_reductions_and_gating():
    torch.manual_seed(0)
    mask = _masks()["mixed"]
    x = torch.randn(2, 2, 2 * S, 3 * S, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 1, 1, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        xb = block_sample(x, mask, S)
        g = torch.sigmoid(F.adaptive_avg_pool2d(xb, 1) * w)
        return block_combine(xb * g).sum() + F.adaptive_max_pool2d(xb, 1).sum()

    assert torch.autograd.gradcheck(f, (x, w))


def test_unsupported_reductions_raise():
    xb = block_sample(torch.randn(2, 3, 2 * S, 3 * S), _masks()["mixed"], S)
    with pytest.raises(UnsupportedBlockOp, match="only global pooling"):
        F.adaptive_avg_pool2d(xb, 2)
    with pytest.raises(UnsupportedBlockOp, match="over dims 1"):
        xb.mean(1)
    with pytest.raises(UnsupportedBlockOp, match="over dims None"):
        xb.sum()
    with pytest.raises(ValueError, match="holds 2 image"):
        xb * torch.ones(3, 3, 1, 1)
    with pytest.raises(ValueError, match="batch and spatial size"):
        torch.cat([xb, torch.zeros(2, 1, 4, 4)], 1)
