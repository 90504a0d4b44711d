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
