"""Regression tests for bugs found in the block engine (issue 7, part 6)."""

import pytest
import torch
import torch.nn.functional as F

import segblocks.blocks.layers.conv as conv_layers
from segblocks.blocks import (
    MarginProfile,
    UnsupportedBlockOp,
    block_combine,
    block_pad,
    block_sample,
)

from ..tiny import heuristic_rn18
from ._util import checkerboard


def _xb(x, mask, bs, **kw):
    return block_sample(x, mask, bs, **kw)


def test_alpha_dropout_is_alpha_dropout_in_training():
    x = torch.ones(1, 4, 16, 16)
    mask = checkerboard(1, 2, 2)
    torch.manual_seed(0)
    y = block_combine(F.alpha_dropout(_xb(x, mask, 8), 0.5, training=True))
    dense = F.alpha_dropout(x, 0.5, training=True)
    # Alpha dropout maps 1 to two affine values; plain dropout would give {0, 2}.
    assert set(y.unique().tolist()) == set(dense.unique().tolist())
    assert not set(y.unique().tolist()) & {0.0, 2.0}


@pytest.mark.parametrize("fn", [F.feature_alpha_dropout, F.dropout1d, F.dropout2d])
def test_channel_dropouts_refuse_training_and_pass_eval(fn):
    x = torch.randn(1, 4, 16, 16)
    mask = checkerboard(1, 2, 2)
    xb = _xb(x, mask, 8)
    assert fn(xb, 0.5, training=False) is xb
    with pytest.raises(UnsupportedBlockOp, match="channels per image"):
        fn(xb, 0.5, training=True)


@pytest.mark.parametrize("training", [False, True])
def test_torch_batch_norm_argument_order(training):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 16, generator=g)
    w, b = torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g)
    rm, rv = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    rm2, rv2 = rm.clone(), rv.clone()
    y = block_combine(torch.batch_norm(_xb(x, mask, 8), w, b, rm, rv, training, 0.1, 1e-5, False))
    ref = torch.batch_norm(x, w, b, rm2, rv2, training, 0.1, 1e-5, False)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm, rm2)


def test_zero_mode_replicate_border_pads_each_block_as_its_own_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 16, 24, generator=g, dtype=torch.float64)
    mask = checkerboard(1, 2, 3)
    xb = _xb(x, mask, 8, pad_mode="zero")
    hr, lr = block_pad(xb, (1, 2, 2, 1), border="replicate")
    for got, blocks in ((hr, xb.hr), (lr, xb.lr)):
        want = F.pad(blocks, (2, 1, 1, 2), mode="replicate")
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_zero_mode_bilinear_on_constant_map_stays_constant():
    x = torch.ones(1, 3, 32, 32)
    mask = checkerboard(1, 4, 4)
    up = F.interpolate(_xb(x, mask, 8, pad_mode="zero"), scale_factor=2, mode="bilinear")
    torch.testing.assert_close(block_combine(up), torch.ones(1, 3, 64, 64))
    torch.testing.assert_close(block_combine(_xb(x, mask, 8, pad_mode="zero"), "bilinear"), x)


def test_gemm_weight_cache_follows_module_to_dtype(monkeypatch):
    # A 256-channel conv on 4-px tiles takes the im2col + GEMM path, whose weight layout is
    # cached; converting the module afterwards must not reuse the float32 layout.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 8, 3, padding=1)
    x = torch.randn(1, 256, 16, 16)
    mask = checkerboard(1, 4, 4)
    prof = MarginProfile()
    calls = []
    orig = conv_layers.gemm_weight
    monkeypatch.setattr(conv_layers, "gemm_weight", lambda w: calls.append(1) or orig(w))
    with torch.inference_mode():
        for _ in range(2):
            y32 = block_combine(conv(block_sample(x, mask, 4, profile=prof)))
        conv.to(torch.bfloat16)
        y16 = block_combine(conv(block_sample(x.bfloat16(), mask, 4, profile=prof)))
    assert calls, "the im2col path was not taken"
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.05)


def test_gemm_weight_of_a_model_built_under_inference_mode(monkeypatch):
    calls = []
    orig = conv_layers.gemm_weight
    monkeypatch.setattr(conv_layers, "gemm_weight", lambda w: calls.append(1) or orig(w))
    with torch.inference_mode():
        conv = torch.nn.Conv2d(256, 4, 3, padding=1)
        x = torch.randn(1, 256, 16, 16)
        prof = MarginProfile()
        for _ in range(2):
            y = block_combine(conv(block_sample(x, checkerboard(1, 4, 4), 4, profile=prof)))
    assert y.shape == (1, 4, 16, 16) and calls


def test_inference_mode_then_no_grad():
    """A model used under torch.inference_mode, then under torch.no_grad, must not write into
    the pooled buffers of the first mode (inference tensors): issue 18."""
    m = heuristic_rn18(num_classes=5)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        a = m(x).logits
    with torch.no_grad():
        b = m(x).logits
    with torch.inference_mode():
        c = m(x).logits
    assert torch.equal(a, b) and torch.equal(a, c)


def test_forward_from_several_threads():
    """Two or more threads running one model (a server's workers): each result equals the
    single-threaded one (the SPP is called through dense_call, which installs nothing on the
    model; the pooled buffers are handed out under a lock): issue 18."""
    import threading

    m = heuristic_rn18(num_classes=5)
    xs = [torch.randn(1, 3, 128, 192) for _ in range(3)]
    with torch.no_grad():
        want = [m(x).logits for x in xs]
    got, errors = {}, []

    def work(i):
        try:
            with torch.no_grad():
                for r in range(3):
                    got[i, r] = m(xs[i]).logits
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(got[i, r], want[i]) for i in range(3) for r in range(3))
    assert "forward" not in m.net.spp.__dict__  # no forward was replaced
