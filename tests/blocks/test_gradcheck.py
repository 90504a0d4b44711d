"""torch.autograd.gradcheck (float64, tiny sizes) of sample, pad, combine and a block network."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from segblocks.blocks import BlockGrid, BlockTensor, block_combine, block_pad, block_sample

from ._util import make_mask
from .reference import grad_cnn, make_params, run_functional

S = 4  # block size
GH, GW = 2, 2
C = 2
# Default runs use gradcheck's fast mode (random projections of the Jacobian) plus the full
# Jacobian on a few representative cases (test_gradcheck_full_jacobian); `-m slow` repeats
# every parametrized check with full Jacobians.
FAST_MODES = [True, pytest.param(False, marks=pytest.mark.slow, id="full")]

MASKS = {
    "mixed": torch.tensor([[[True, False], [False, True]], [[False, False], [True, False]]]),
    "all_hr": torch.ones(2, GH, GW, dtype=torch.bool),
    "all_lr": torch.zeros(2, GH, GW, dtype=torch.bool),
}


def _parts(mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    nh, nl = int(mask.sum()), int((~mask).sum())
    hr = torch.randn(nh, C, S, S, generator=g, dtype=torch.float64, requires_grad=True)
    lr = torch.randn(nl, C, S // 2, S // 2, generator=g, dtype=torch.float64, requires_grad=True)
    return hr, lr


@pytest.mark.parametrize("fast", FAST_MODES)
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("N", [1, 2])
def test_gradcheck_sample(mask_kind, N, fast):
    mask = MASKS[mask_kind][:N]
    x = torch.randn(N, C, GH * S, GW * S, dtype=torch.float64, requires_grad=True)

    def fn(x):
        xb = block_sample(x, mask, S)
        return xb.hr, xb.lr

    assert gradcheck(fn, (x,), fast_mode=fast)


@pytest.mark.parametrize("fast", FAST_MODES)
@pytest.mark.parametrize("mode", ["avg", "strided", "zero"])
@pytest.mark.parametrize("border", ["zeros", "replicate"])
@pytest.mark.parametrize("pads", [1, (0, 1, 0, 1), (2, 0, 3, 1), (1, 2), S])
def test_gradcheck_pad(mode, border, pads, fast):
    mask = MASKS["mixed"]
    grid = BlockGrid(mask, S)
    hr, lr = _parts(mask)

    def fn(hr, lr):
        xb = BlockTensor.from_parts(hr, lr, grid, pad_mode=mode)
        return block_pad(xb, pads, border=border, value=0.5)

    assert gradcheck(fn, (hr, lr), fast_mode=fast)


@pytest.mark.parametrize("fast", FAST_MODES)
@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize("mode", ["avg", "strided", "zero"])
def test_gradcheck_combine(mask_kind, upsample, mode, fast):
    mask = MASKS[mask_kind]
    grid = BlockGrid(mask, S)
    hr, lr = _parts(mask, seed=1)

    def fn(hr, lr):
        return block_combine(BlockTensor.from_parts(hr, lr, grid, pad_mode=mode), upsample)

    assert gradcheck(fn, (hr, lr), fast_mode=fast)


@pytest.mark.parametrize("fast", FAST_MODES)
@pytest.mark.parametrize("mode", ["avg", "strided"])
@pytest.mark.parametrize("N", [1, 2])
def test_gradcheck_block_network(mode, N, fast):
    """conv -> relu -> maxpool -> conv -> add -> bilinear upsample, mixed mask, w.r.t. the
    input and every weight."""
    mask = MASKS["mixed"][:N]
    layers = grad_cnn(C, 3)
    params = make_params(layers, seed=3, dtype=torch.float64, requires_grad=True)
    names = sorted(params)
    x = torch.randn(N, C, GH * S, GW * S, dtype=torch.float64, requires_grad=True)

    def fn(x, *ws):
        p = dict(zip(names, ws, strict=True))
        y = run_functional(layers, p, block_sample(x, mask, S, pad_mode=mode))
        return block_combine(y, "bilinear")

    assert gradcheck(fn, (x, *[params[k] for k in names]), fast_mode=fast)


@pytest.mark.parametrize("fast", FAST_MODES)
def test_gradcheck_block_network_batchnorm_training(fast):
    """Block batch norm in training mode (joint HR+LR statistics) is differentiable."""
    mask = MASKS["mixed"][:1]
    w = torch.randn(3, C, 3, 3, dtype=torch.float64, requires_grad=True)
    gamma = (1 + 0.1 * torch.randn(3, dtype=torch.float64)).requires_grad_()
    beta = (0.1 * torch.randn(3, dtype=torch.float64)).requires_grad_()
    x = torch.randn(1, C, GH * S, GW * S, dtype=torch.float64, requires_grad=True)

    def fn(x, w, gamma, beta):
        xb = block_sample(x, mask, S)
        y = torch.nn.functional.conv2d(xb, w, padding=1)
        y = torch.nn.functional.batch_norm(y, None, None, gamma, beta, True)
        return block_combine(torch.relu(y))

    assert gradcheck(fn, (x, w, gamma, beta), fast_mode=fast)


@pytest.mark.parametrize("fast", FAST_MODES)
def test_gradcheck_random_masks(fast):
    g = torch.Generator().manual_seed(7)
    for i in range(3):
        mask = make_mask("mixed", 2, GH, GW, g)
        x = torch.randn(2, C, GH * S, GW * S, dtype=torch.float64, requires_grad=True)

        def fn(x, mask=mask):
            xb = block_sample(x, mask, S)
            hp, lp = block_pad(xb, (1, 2, 2, 1), border="replicate" if i % 2 else "zeros")
            return hp, lp, block_combine(xb, "bilinear")

        assert gradcheck(fn, (x,), fast_mode=fast)


def _full_cases():
    mask = MASKS["mixed"][:1]
    grid = BlockGrid(mask, S)
    hr, lr = _parts(mask, seed=2)
    x = torch.randn(1, C, GH * S, GW * S, dtype=torch.float64, requires_grad=True)
    layers = grad_cnn(C, 2)
    params = make_params(layers, seed=4, dtype=torch.float64)

    def sample(x):
        xb = block_sample(x, grid)
        return xb.hr, xb.lr

    def pad(hr, lr):
        xb = BlockTensor.from_parts(hr, lr, grid)
        return block_pad(xb, (2, 0, 3, 1), border="replicate")

    def pad_strided(hr, lr):
        xb = BlockTensor.from_parts(hr, lr, grid, pad_mode="strided")
        return block_pad(xb, S)

    def combine(hr, lr):
        return block_combine(BlockTensor.from_parts(hr, lr, grid), "bilinear")

    def network(x):
        return block_combine(run_functional(layers, params, block_sample(x, grid)))

    return {
        "sample": (sample, (x,)),
        "pad": (pad, (hr, lr)),
        "pad_strided": (pad_strided, (hr, lr)),
        "combine": (combine, (hr, lr)),
        "network": (network, (x,)),
    }


@pytest.mark.parametrize("name", ["sample", "pad", "pad_strided", "combine", "network"])
def test_gradcheck_full_jacobian(name):
    """The full (not randomly projected) Jacobian on a few representative cases."""
    fn, inputs = _full_cases()[name]
    assert gradcheck(fn, inputs, fast_mode=False)


# (side, kernel, dilation, asymmetric pads): LR tiles whose halo is >= 9x the tile, so the
# depthwise conv takes the LR canvas with autograd on (training)
CANVAS_CASES = {
    "side2_3x3": (2, 3, 1, None),
    "side4_5x5_dilated": (4, 5, 2, None),
    "side2_4x4_asymmetric": (2, 4, 1, (1, 2, 2, 1)),
}


@pytest.mark.parametrize("mask_kind", ["mixed", "all_hr"])
@pytest.mark.parametrize("mode", ["avg", "strided"])
@pytest.mark.parametrize("case", list(CANVAS_CASES))
def test_depthwise_canvases_in_training(case, mode, mask_kind, monkeypatch):
    """A depthwise conv whose halos dwarf the tiles runs both levels on the LR and HR canvases
    with autograd on: the same outputs and gradients as the padded path, and gradcheck passes."""
    from segblocks.blocks.layers import conv as conv_mod

    side, k, dil, asym = CANVAS_CASES[case]
    mask = MASKS[mask_kind]
    x = torch.randn(2, C, GH * side, GW * side, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, 1, k, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, dtype=torch.float64, requires_grad=True)
    F = torch.nn.functional

    def fn(x, w, b):
        xb = block_sample(x, mask, side, pad_mode=mode)
        if asym is None:
            y = F.conv2d(xb, w, b, padding=dil * (k // 2), dilation=dil, groups=C)
        else:
            pt, pb, pl, pr = asym
            y = F.conv2d(F.pad(xb, (pl, pr, pt, pb)), w, b, dilation=dil, groups=C)
        return block_combine(y)

    monkeypatch.setattr(conv_mod, "HR_CANVAS_MIN_RATIO", 1.0)  # every case on both canvases
    calls = []
    for name in ("lr_canvas", "hr_canvas"):
        real = getattr(conv_mod, name)
        spy = lambda *a, _r=real, _n=name, **kw: calls.append(_n) or _r(*a, **kw)  # noqa: E731
        monkeypatch.setattr(conv_mod, name, spy)
    canvas_out = fn(x, w, b)
    canvas_grads = torch.autograd.grad(canvas_out.square().sum(), (x, w, b))
    assert calls == (["lr_canvas"] if mask_kind == "mixed" else []) + ["hr_canvas"], calls
    assert gradcheck(fn, (x, w, b), fast_mode=True)
    monkeypatch.setattr(conv_mod, "_canvas_conv", lambda *a: False)
    padded_out = fn(x, w, b)
    padded_grads = torch.autograd.grad(padded_out.square().sum(), (x, w, b))
    torch.testing.assert_close(canvas_out, padded_out)
    for a, r in zip(canvas_grads, padded_grads, strict=True):
        torch.testing.assert_close(a, r)
