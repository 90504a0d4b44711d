"""BlockStats: conv MACs per resolution against an analytic count, and per-module times."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from segblocks.blocks import block_combine, block_pad, block_sample
from segblocks.blocks.stats import BlockStats

from ._util import checkerboard, make_mask


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def analytic_conv_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Sum over conv layers of ``N * H_out * W_out * C_out * C_in / groups * kh * kw``.

    Only the *input* sizes are observed (a forward hook); output sizes come from the conv
    arithmetic ``floor((H + pt + pb - d (k - 1) - 1) / s) + 1``, with TF-"same" convs (timm
    ``Conv2dSame``, padding 0 + dynamic pad) counted with their padded input.
    """
    total = 0

    def hook(mod, inputs):
        nonlocal total
        N, C, H, W = inputs[0].shape
        kh, kw = mod.kernel_size
        sh, sw = mod.stride
        dh, dw = mod.dilation
        if isinstance(mod.padding, str):
            assert mod.padding == "same"
            Ho, Wo = H, W
        elif type(mod).__name__ == "Conv2dSame":  # pads to ceil(H / s) outputs
            Ho, Wo = -(-H // sh), -(-W // sw)
        else:
            ph, pw = _pair(mod.padding)
            Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        total += N * Ho * Wo * mod.out_channels * (C // mod.groups) * kh * kw

    handles = [
        m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


def _resnet18_trunk():
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", features_only=True, pretrained=False).eval()


H, W, BS = 128, 192, 64  # grid 2x3; HR side 2 / LR side 1 at stride 32


def test_analytic_count_sanity():
    """The analytic counter itself: one 3x3 conv on 1x3x8x8 -> 8*8*4*3*9 MACs."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert analytic_conv_macs(conv, torch.randn(1, 3, 8, 8)) == 8 * 8 * 4 * 3 * 9
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2)
    assert analytic_conv_macs(conv, torch.randn(2, 4, 8, 8)) == 2 * 4 * 4 * 4 * 2 * 9


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite1"])
def test_macs_all_hr_equal_dense_and_all_lr_quarter(name):
    if name == "resnet18":
        model = _resnet18_trunk()
    else:
        import timm

        model = timm.create_model(name, features_only=True, pretrained=False).eval()
    x = torch.randn(1, 3, H, W)
    dense = analytic_conv_macs(model, x)
    assert dense > 0
    GH, GW = H // BS, W // BS

    with torch.no_grad(), BlockStats() as st:
        model(block_sample(x, torch.ones(1, GH, GW, dtype=torch.bool), BS))
    assert st.macs["hr"] == dense
    assert st.macs["lr"] == 0
    assert st.total_macs == dense

    with torch.no_grad(), BlockStats() as st:
        model(block_sample(x, torch.zeros(1, GH, GW, dtype=torch.bool), BS))
    assert st.macs["hr"] == 0
    assert 4 * st.macs["lr"] == dense  # exactly a quarter

    # mixed: HR MACs scale with the HR cell count, LR MACs with a quarter of the LR count
    mask = make_mask("mixed", 1, GH, GW, torch.Generator().manual_seed(1))
    nh, cells = int(mask.sum()), mask.numel()
    with torch.no_grad(), BlockStats() as st:
        model(block_sample(x, mask, BS))
    assert st.macs["hr"] * cells == dense * nh
    assert 4 * st.macs["lr"] * cells == dense * (cells - nh)


def test_macs_batch_and_grad_mode():
    """MACs are per processed pixel: a batch of 2 counts twice; autograd mode counts the same."""
    model = _resnet18_trunk()
    x = torch.randn(2, 3, H, W)
    mask = checkerboard(2, H // BS, W // BS)
    with torch.no_grad(), BlockStats() as a:
        model(block_sample(x, mask, BS))
    with BlockStats() as b:
        model(block_sample(x, mask, BS))
    assert dict(a.macs) == dict(b.macs)
    with torch.no_grad(), BlockStats() as c:
        model(block_sample(x[:1], mask[:1], BS))
    nh0 = int(mask[0].sum())
    nh1 = int(mask[1].sum())
    # per-image HR MACs scale with that image's HR cells
    assert c.macs["hr"] * (nh0 + nh1) == a.macs["hr"] * nh0


def test_times_recorded():
    x = torch.randn(1, 3, 32, 48)
    mask = checkerboard(1, 2, 3)
    w = torch.randn(3, 3, 3, 3)
    with BlockStats() as st:
        xb = block_sample(x, mask, 16)
        y = F.conv2d(xb, w, padding=1)
        block_pad(y, 2)
        block_combine(y)
        block_combine(y, "bilinear")
    for cat in ("sample", "pad", "combine"):
        assert st.times[cat] > 0, cat
        assert st.calls[cat] >= 1, cat
    assert st.calls["sample"] == 1
    assert st.calls["combine"] == 2  # the bilinear combine's own pad is nested, counted once
    assert st.block_ops_time() == pytest.approx(
        st.times["sample"] + st.times["pad"] + st.times["combine"]
    )
    assert st.macs["hr"] == 3 * 16 * 16 * 3 * 3 * 9
    assert st.macs["lr"] == 3 * 8 * 8 * 3 * 3 * 9


def test_nothing_recorded_outside_context():
    x = torch.randn(1, 3, 32, 32)
    st = BlockStats()
    with st:
        pass
    F.conv2d(block_sample(x, checkerboard(1, 2, 2), 16), torch.randn(3, 3, 3, 3), padding=1)
    assert st.total_macs == 0
    assert st.block_ops_time() == 0
