"""The gather-im2col + GEMM conv path for small tiles equals the batched-conv path."""

import pytest
import torch
import torch.nn.functional as F

import segblocks.blocks.layers.conv as conv
from segblocks.blocks import MarginProfile, block_combine, block_sample


@pytest.mark.parametrize(
    "k,stride,pad,bias",
    [(3, 1, 1, True), (3, 2, 1, False), (5, 1, 2, True), (3, 2, (0, 1, 0, 1), True)],
)
@pytest.mark.parametrize("mode", ["avg", "strided"])
def test_im2col_path_matches_conv_path(monkeypatch, k, stride, pad, bias, mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 32, 48, generator=g, dtype=torch.float64)
    w = torch.randn(5, 6, k, k, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64) if bias else None
    mask = torch.rand(2, 4, 6, generator=g) < 0.5

    def run(xb):
        if isinstance(pad, tuple):  # TF-"same" style: F.pad then an unpadded conv
            return F.conv2d(F.pad(xb, (pad[2], pad[3], pad[0], pad[1])), w, b, stride)
        return F.conv2d(xb, w, b, stride, pad)

    ref = block_combine(run(block_sample(x, mask, 8, pad_mode=mode)))  # autograd: conv path
    monkeypatch.setattr(conv, "IM2COL_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "IM2COL_MAX_SIDE", 8)
    calls = []
    orig = conv.gemm_weight
    monkeypatch.setattr(conv, "gemm_weight", lambda w: calls.append(1) or orig(w))
    prof = MarginProfile()
    with torch.no_grad():
        for _ in range(2):
            got = block_combine(run(block_sample(x, mask, 8, pad_mode=mode, profile=prof)))
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    assert calls, "the im2col path was not taken"


@pytest.mark.parametrize("mask_kind", ["mixed", "all_lr"])
def test_im2col_path_gradients_match_conv_path(monkeypatch, mask_kind):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 16, 24, generator=g, dtype=torch.float64)
    w = torch.randn(5, 6, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 4, 6, generator=g) < 0.5 if mask_kind == "mixed" else None
    mask = torch.zeros(2, 4, 6, dtype=torch.bool) if mask is None else mask

    def grads():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = block_combine(F.conv2d(block_sample(xs, mask, 4), ws, bs, 1, 1))
        (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).cos()).sum().backward()
        return y.detach(), xs.grad, ws.grad, bs.grad

    ref = grads()
    monkeypatch.setattr(conv, "IM2COL_TINY_MIN_CHANNELS", 1)
    calls = []
    orig = conv._conv_im2col
    monkeypatch.setattr(conv, "_conv_im2col", lambda *a: calls.append(1) or orig(*a))
    got = grads()
    assert calls, "the im2col path was not taken"
    for r, o in zip(ref, got, strict=True):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10)
