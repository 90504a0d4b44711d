"""Block execution of networks.

(a) all-HR == the dense network, (b) all-LR == the dense network on the 2x average-pooled
input, for timm / torchvision trunks; (c) random masks on small CNNs == the slow reference
block executor; (d) gradients and training-mode batch norm == the reference.

Every no-grad check runs twice through one ``BlockSample`` module: the second call uses the
learned MarginProfile (producers write straight into padded buffers, halos filled in place)
and must give the same result as the first.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from segblocks.blocks import (
    BlockSample,
    BlockTensor,
    DenseFallback,
    MarginProfile,
    block_combine,
    block_pad,
    block_sample,
    dense_fallback,
)
from segblocks.blocks.fallback import dense_call

from ._util import checkerboard, make_mask, rel_err
from .reference import (
    Conv,
    clone_params,
    make_params,
    ref_combine,
    ref_pad,
    ref_sample,
    run_functional,
    run_reference,
    small_cnn,
    small_cnn_b,
)
from .reference_module import RefBlocks

# ============================================================================ trunks

TRUNKS = ["resnet18", "resnet50", "tf_efficientnet_lite1", "torchvision_resnet18"]


class _TorchvisionTrunk(nn.Module):
    """torchvision ResNet-18 children up to layer4, returning every stage output."""

    def __init__(self):
        super().__init__()
        import torchvision

        m = torchvision.models.resnet18(weights=None)
        self.stages = nn.ModuleList(
            [nn.Sequential(m.conv1, m.bn1, m.relu), nn.Sequential(m.maxpool, m.layer1)]
            + [m.layer2, m.layer3, m.layer4]
        )

    def forward(self, x):
        out = []
        for st in self.stages:
            x = st(x)
            out.append(x)
        return out


@functools.cache
def _trunk(name: str) -> nn.Module:
    torch.manual_seed(123)
    if name == "torchvision_resnet18":
        model = _TorchvisionTrunk()
    else:
        import timm

        model = timm.create_model(name, features_only=True, pretrained=False)
    model.eval()
    # Random BN statistics, so that eval-mode batch norm is not the identity.
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(m.num_features, generator=g))
    return model


def _features(model, x):
    out = model(x)
    return list(out)


def _tolerance(dense, dense_cl):
    """1e-5, or twice the network's own float32 noise (NCHW vs channels_last) if larger:
    deep random-weight trunks amplify rounding, e.g. EfficientNet-Lite1's last stage differs
    by ~9e-6 between two *dense* runs in different memory formats."""
    return max(1e-5, 2 * rel_err(dense_cl, dense))


H, W, BS = 256, 384, 128


BLOCK_SIZES = [128, 64]  # 64: HR side 2, LR side 1 at stride 32


@pytest.mark.parametrize("bs", BLOCK_SIZES)
@pytest.mark.parametrize("name", TRUNKS)
def test_all_hr_equals_dense(name, bs):
    model = _trunk(name)
    x = torch.randn(1, 3, H, W)
    mask = torch.ones(1, H // bs, W // bs, dtype=torch.bool)
    with torch.no_grad():
        dense = _features(model, x)
        dense_cl = _features(model, x.contiguous(memory_format=torch.channels_last))
        sampler = BlockSample(bs)
        first = _features(model, sampler(x, mask))
        second = _features(model, sampler(x, mask))
    assert len(first) == len(dense) >= 4
    for i, (d, dcl, b1, b2) in enumerate(zip(dense, dense_cl, first, second, strict=True)):
        assert isinstance(b1, BlockTensor), type(b1)
        c1, c2 = block_combine(b1), block_combine(b2)
        assert c1.shape == d.shape, (i, c1.shape, d.shape)
        err = rel_err(c1, d)
        assert err <= _tolerance(d, dcl), f"stage {i}: relative error {err:.2e}"
        assert rel_err(c2, c1) <= 1e-5, f"stage {i}: second call differs ({rel_err(c2, c1):.2e})"


@pytest.mark.parametrize("bs", BLOCK_SIZES)
@pytest.mark.parametrize("name", TRUNKS)
def test_all_lr_equals_dense_on_pooled_input(name, bs):
    model = _trunk(name)
    x = torch.randn(1, 3, H, W)
    mask = torch.zeros(1, H // bs, W // bs, dtype=torch.bool)
    low = F.avg_pool2d(x, 2)
    with torch.no_grad():
        dense = _features(model, low)
        dense_cl = _features(model, low.contiguous(memory_format=torch.channels_last))
        sampler = BlockSample(bs)
        first = _features(model, sampler(x, mask))
        second = _features(model, sampler(x, mask))
    for i, (d, dcl, b1, b2) in enumerate(zip(dense, dense_cl, first, second, strict=True)):
        up = F.interpolate(d, scale_factor=2, mode="nearest")
        c1, c2 = block_combine(b1), block_combine(b2)
        assert c1.shape == up.shape
        err = rel_err(c1, up)
        assert err <= _tolerance(d, dcl), f"stage {i}: relative error {err:.2e}"
        # the LR blocks directly: the dense output cut into blocks (no pooling)
        side = b1.side // 2
        cut = d.unflatten(2, (H // bs, side)).unflatten(4, (W // bs, side))
        cut = cut.permute(0, 2, 4, 1, 3, 5).reshape(-1, d.shape[1], side, side)
        assert rel_err(b1.lr, cut) <= _tolerance(d, dcl)
        assert rel_err(c2, c1) <= 1e-5


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "tf_efficientnet_lite1"])
def test_float64_all_hr_and_all_lr_exact(name):
    """In float64 the rounding noise vanishes: block execution == dense to ~1e-12."""
    model = copy.deepcopy(_trunk(name)).double()
    x = torch.randn(1, 3, H, W, dtype=torch.float64)
    GH, GW = H // BS, W // BS
    with torch.no_grad():
        dense = _features(model, x)
        dense_low = _features(model, F.avg_pool2d(x, 2))
        hr = _features(model, block_sample(x, torch.ones(1, GH, GW, dtype=torch.bool), BS))
        lr = _features(model, block_sample(x, torch.zeros(1, GH, GW, dtype=torch.bool), BS))
    for i, (d, dl, bh, bl) in enumerate(zip(dense, dense_low, hr, lr, strict=True)):
        assert rel_err(block_combine(bh), d) <= 1e-12, f"stage {i} all-HR"
        up = F.interpolate(dl, scale_factor=2, mode="nearest")
        assert rel_err(block_combine(bl), up) <= 1e-12, f"stage {i} all-LR"


@pytest.mark.parametrize("name", TRUNKS)
def test_mixed_mask_fast_paths_agree(name):
    """Mixed mask: autograd path (fresh buffers), first and second no-grad pass agree, and a
    third pass with another mask through the same BlockSample is right too."""
    model = _trunk(name)
    x = torch.randn(2, 3, H, W)
    masks = [checkerboard(2, H // BS, W // BS), ~checkerboard(2, H // BS, W // BS)]
    masks[1][1] = True
    sampler = BlockSample(BS)
    with torch.enable_grad():
        ref = [_features(model, block_sample(x, m, BS, profile=MarginProfile())) for m in masks]
    with torch.no_grad():
        runs = [_features(model, sampler(x, m)) for m in (masks[0], masks[0], masks[1], masks[0])]
    for run, r in zip(runs, [ref[0], ref[0], ref[1], ref[0]], strict=True):
        for i, (b, e) in enumerate(zip(run, r, strict=True)):
            assert rel_err(block_combine(b), block_combine(e).detach()) <= 1e-5, f"stage {i}"


def test_resnet18_training_mode_all_hr_equals_dense():
    """Training mode (batch statistics), forward and input gradient, all-HR vs dense."""
    import timm

    torch.manual_seed(1)
    dense_model = timm.create_model("resnet18", features_only=True, pretrained=False).train()
    block_model = timm.create_model("resnet18", features_only=True, pretrained=False).train()
    block_model.load_state_dict(dense_model.state_dict())
    x = torch.randn(2, 3, 256, 256)
    xd = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    dense = dense_model(xd)
    blocks = block_model(block_sample(xb, torch.ones(2, 2, 2, dtype=torch.bool), 128))
    gs = [torch.randn_like(d) for d in dense]
    for i, (d, b) in enumerate(zip(dense, blocks, strict=True)):
        assert rel_err(block_combine(b), d) <= 1e-5, f"stage {i}"
    sum((d * g).sum() for d, g in zip(dense, gs, strict=True)).backward()
    sum((block_combine(b) * g).sum() for b, g in zip(blocks, gs, strict=True)).backward()
    assert rel_err(xb.grad, xd.grad) <= 1e-5
    for (n1, p1), (n2, p2) in zip(
        dense_model.named_parameters(), block_model.named_parameters(), strict=True
    ):
        assert n1 == n2
        assert rel_err(p2.grad, p1.grad) <= 1e-4, n1
    for (n1, b1), (_, b2) in zip(
        dense_model.named_buffers(), block_model.named_buffers(), strict=True
    ):
        if b1.is_floating_point():
            assert rel_err(b2, b1) <= 1e-5, n1
        else:
            assert torch.equal(b1, b2), n1


# ============================================================================ small CNNs

NETS = {"small_cnn": (small_cnn, 8), "small_cnn_b": (small_cnn_b, 16)}


def _cases():
    cases = []
    i = 0
    for net in NETS:
        for mode in ("avg", "strided", "zero"):
            for mask_kind, N, C, bs_mult in (
                ("mixed", 1, 3, 1),
                ("mixed", 2, 5, 2),
                ("mixed", 3, 1, 1),
                ("all_hr", 2, 3, 1),
                ("all_lr", 2, 3, 2),
            ):
                cases.append((i, net, mode, mask_kind, N, C, NETS[net][1] * bs_mult))
                i += 1
    return cases


def _id(case):
    i, net, mode, mask_kind, N, C, bs = case
    return f"{i}-{net}-{mode}-{mask_kind}-N{N}-C{C}-bs{bs}"


def _run_ref(layers, params, x, mask, bs, mode, training=False):
    hr, lr = ref_sample(x, mask, bs)
    return run_reference(layers, params, hr, lr, mask, bs, mode, training)


@pytest.mark.parametrize("case", _cases(), ids=_id)
def test_small_cnn_matches_reference(case):
    i, net, mode, mask_kind, N, C, bs = case
    g = torch.Generator().manual_seed(100 + i)
    GH, GW = (2, 3) if i % 2 else (3, 2)
    layers = NETS[net][0](C, 4)
    params = make_params(layers, seed=i, dtype=torch.float64)
    x = torch.randn(N, C, GH * bs, GW * bs, generator=g, dtype=torch.float64)
    mask = make_mask(mask_kind, N, GH, GW, g)
    other_mask = make_mask("mixed", N, GH, GW, g)

    eh, el, es = _run_ref(layers, params, x, mask, bs, mode)
    expected = ref_combine(eh, el, mask, es, "nearest")

    def check(y, what):
        assert y.side == es, what
        assert_close(y.hr, eh, rtol=1e-9, atol=1e-9, msg=what)
        assert_close(y.lr, el, rtol=1e-9, atol=1e-9, msg=what)
        assert_close(block_combine(y), expected, rtol=1e-9, atol=1e-9, msg=what)

    # autograd recording on
    check(run_functional(layers, params, block_sample(x, mask, bs, pad_mode=mode)), "grad")
    sampler = BlockSample(bs, pad_mode=mode)
    with torch.no_grad():
        check(run_functional(layers, params, sampler(x, mask)), "no_grad first")
        check(run_functional(layers, params, sampler(x, mask)), "no_grad second")
        # the profile learned on one mask, used with another, then back
        oh, ol, os_ = _run_ref(layers, params, x, other_mask, bs, mode)
        y = run_functional(layers, params, sampler(x, other_mask))
        assert_close(y.hr, oh, rtol=1e-9, atol=1e-9)
        assert_close(y.lr, ol, rtol=1e-9, atol=1e-9)
        check(run_functional(layers, params, sampler(x, mask)), "no_grad third")

    # the dense invariants (avg / strided; "zero" deliberately ignores neighbours)
    if mode != "zero" and mask_kind == "all_hr":
        assert_close(expected, run_functional(layers, params, x), rtol=1e-9, atol=1e-9)
    if mode != "zero" and mask_kind == "all_lr":
        dense = run_functional(layers, params, F.avg_pool2d(x, 2))
        assert_close(expected, F.interpolate(dense, scale_factor=2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_small_cnn_float32(net, channels_last):
    g = torch.Generator().manual_seed(5)
    layers = NETS[net][0](3, 8)
    bs = NETS[net][1] * 2
    p64 = make_params(layers, seed=1, dtype=torch.float64)
    p32 = {k: v.float() for k, v in p64.items()}
    x = torch.randn(2, 3, 2 * bs, 3 * bs, generator=g, dtype=torch.float64)
    mask = make_mask("mixed", 2, 2, 3, g)
    eh, el, es = _run_ref(layers, p64, x, mask, bs, "avg")
    x32 = x.float()
    if channels_last:
        x32 = x32.contiguous(memory_format=torch.channels_last)
    sampler = BlockSample(bs)
    for ng in (False, True, True):
        with torch.set_grad_enabled(not ng):
            y = run_functional(layers, p32, sampler(x32, mask))
        assert y.dtype == torch.float32
        assert rel_err(y.hr, eh) <= 1e-5 and rel_err(y.lr, el) <= 1e-5


def test_zero_mode_differs_from_dense():
    """Sanity: the Table 9 ablation really drops neighbour information."""
    layers = small_cnn(3, 4)
    params = make_params(layers, dtype=torch.float64)
    x = torch.randn(1, 3, 16, 24, dtype=torch.float64)
    y = run_functional(
        layers, params, block_sample(x, torch.ones(1, 2, 3, dtype=torch.bool), 8, pad_mode="zero")
    )
    assert rel_err(block_combine(y), run_functional(layers, params, x)) > 1e-3


# ============================================================================ gradients / BN


@pytest.mark.parametrize("net", list(NETS))
@pytest.mark.parametrize("mode", ["avg", "strided", "zero"])
def test_gradients_match_reference_training_mode(net, mode):
    g = torch.Generator().manual_seed(21)
    layers = NETS[net][0](3, 4)
    bs = NETS[net][1]
    N, GH, GW = 2, 2, 3
    params = make_params(layers, seed=2, dtype=torch.float64, requires_grad=True)
    ref_params = clone_params(params)
    x = torch.randn(N, 3, GH * bs, GW * bs, generator=g, dtype=torch.float64)
    mask = make_mask("mixed", N, GH, GW, g)

    xf = x.clone().requires_grad_()
    y = run_functional(layers, params, block_sample(xf, mask, bs, pad_mode=mode), training=True)
    out = block_combine(y)

    xr = x.clone().requires_grad_()
    hr, lr = ref_sample(xr, mask, bs)
    rh, rl, rs = run_reference(layers, ref_params, hr, lr, mask, bs, mode, training=True)
    ref_out = ref_combine(rh, rl, mask, rs)
    assert_close(out, ref_out, rtol=1e-9, atol=1e-9)

    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (out * weights).sum().backward()
    (ref_out * weights).sum().backward()
    assert_close(xf.grad, xr.grad, rtol=1e-8, atol=1e-10)
    for k in params:
        if params[k].requires_grad:
            assert_close(params[k].grad, ref_params[k].grad, rtol=1e-8, atol=1e-10, msg=k)
        else:  # running statistics updated identically
            assert_close(params[k], ref_params[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("mask_kind", ["mixed", "all_hr", "all_lr"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_training_joint_statistics(mask_kind, momentum):
    """nn.BatchNorm2d in training mode on a block tensor == F.batch_norm over the
    concatenation of all HR and LR pixels (each once); running stats updated identically."""
    g = torch.Generator().manual_seed(3)
    C, bs = 5, 8
    mask = make_mask(mask_kind, 2, 2, 3, g)
    x = 3 * torch.randn(2, C, 16, 24, generator=g, dtype=torch.float64) + 1
    bn = nn.BatchNorm2d(C, momentum=momentum).double().train()
    with torch.no_grad():
        bn.weight.copy_(1 + 0.2 * torch.randn(C, generator=g))
        bn.bias.copy_(0.2 * torch.randn(C, generator=g))
    bn_ref = nn.BatchNorm1d(C, momentum=momentum).double().train()
    bn_ref.load_state_dict(bn.state_dict())
    for step in range(2):
        xb = block_sample(x * (step + 1), mask, bs)
        y = bn(xb)
        pixels = torch.cat(
            [xb.hr.permute(0, 2, 3, 1).reshape(-1, C), xb.lr.permute(0, 2, 3, 1).reshape(-1, C)]
        )
        yr = bn_ref(pixels)
        nh = xb.hr.numel() // C
        assert_close(y.hr.permute(0, 2, 3, 1).reshape(-1, C), yr[:nh])
        assert_close(y.lr.permute(0, 2, 3, 1).reshape(-1, C), yr[nh:])
        assert_close(bn.running_mean, bn_ref.running_mean)
        assert_close(bn.running_var, bn_ref.running_var)
        assert int(bn.num_batches_tracked) == step + 1
    # all-HR training mode == dense training mode
    if mask_kind == "all_hr":
        bn_dense = nn.BatchNorm2d(C, momentum=momentum).double().train()
        bn_blk = nn.BatchNorm2d(C, momentum=momentum).double().train()
        yb = block_combine(bn_blk(block_sample(x, mask, bs)))
        assert_close(yb, bn_dense(x))
        assert_close(bn_blk.running_var, bn_dense.running_var)


def test_batchnorm_eval_is_per_channel_affine():
    g = torch.Generator().manual_seed(4)
    C = 4
    bn = nn.BatchNorm2d(C).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(C, generator=g))
        bn.running_var.copy_(torch.rand(C, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(C, generator=g))
        bn.bias.copy_(torch.randn(C, generator=g))
    x = torch.randn(2, C, 16, 16, generator=g)
    mask = make_mask("mixed", 2, 2, 2, g)
    hr, lr = ref_sample(x, mask, 8)
    sampler = BlockSample(8)
    for ng in (False, True, True):
        with torch.set_grad_enabled(not ng):
            # conv after bn so that the second no-grad pass writes bn into a padded buffer
            y = bn(sampler(x, mask))
            z = F.conv2d(y, torch.ones(C, C, 3, 3), padding=1)
        assert_close(y.hr, bn(hr))
        assert_close(y.lr, bn(lr))
        ref = run_reference(
            [Conv("k", C, C, 3, pad=1)],
            {"k.w": torch.ones(C, C, 3, 3), "k.b": torch.zeros(C)},
            bn(hr),
            bn(lr),
            mask,
            8,
        )
        assert_close(z.hr, ref[0], rtol=1e-5, atol=1e-4)
        assert_close(z.lr, ref[1], rtol=1e-5, atol=1e-4)


# ============================================================================ single ops


def _pointwise_ops(C):
    chan = torch.randn(1, C, 1, 1)
    chan3 = torch.randn(C, 1, 1)
    return {
        "relu": F.relu,
        "relu_module_inplace": nn.ReLU(inplace=True),
        "relu_inplace_fn": lambda x: F.relu(x, inplace=True),
        "relu_method": lambda x: x.relu_() if isinstance(x, BlockTensor) else x.relu(),
        "relu6": F.relu6,
        "relu6_module_inplace": nn.ReLU6(inplace=True),
        "hardtanh": lambda x: F.hardtanh(x, -0.5, 0.5),
        "silu": F.silu,
        "silu_inplace": nn.SiLU(inplace=True),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "gelu": F.gelu,
        "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid,
        "leaky_relu": lambda x: F.leaky_relu(x, 0.1),
        "elu": F.elu,
        "mish": F.mish,
        "neg": torch.neg,
        "neg_op": lambda x: -x,
        "abs": torch.abs,
        "exp": torch.exp,
        "dropout_eval": lambda x: F.dropout(x, 0.5, training=False),
        "dropout_module_eval": nn.Dropout(0.3).eval(),
        "scalar_mul": lambda x: x * 2.5,
        "scalar_rmul": lambda x: 2.5 * x,
        "scalar_add": lambda x: x + 1.0,
        "scalar_radd": lambda x: 1.0 + x,
        "scalar_sub": lambda x: x - 1.0,
        "scalar_rsub": lambda x: 1.0 - x,
        "scalar_div": lambda x: x / 4.0,
        "channel_mul": lambda x: x * chan,
        "channel_add": lambda x: x + chan3,
        "torch_add_alpha": lambda x: torch.add(x, x, alpha=0.5),
        "mul_self": lambda x: x * x,
        "sub_self_plus": lambda x: x - torch.sigmoid(x),
        "div_self": lambda x: x / (torch.abs(x) + 1.0),
    }


@pytest.mark.parametrize("op", list(_pointwise_ops(3)))
def test_pointwise_ops_then_conv(op):
    """Point-wise op on the blocks (per resolution), then a padded conv reading its output."""
    C, bs = 3, 8
    g = torch.Generator().manual_seed(8)
    fn = _pointwise_ops(C)[op]
    x = torch.randn(2, C, 16, 24, generator=g)
    mask = make_mask("mixed", 2, 2, 3, g)
    w = torch.randn(C, C, 3, 3, generator=g) / 5
    hr, lr = ref_sample(x, mask, bs)
    eh, el = fn(hr.clone()), fn(lr.clone())
    zh, zl, _ = run_reference(
        [Conv("k", C, C, 3, pad=1)], {"k.w": w, "k.b": torch.zeros(C)}, eh, el, mask, bs
    )
    sampler = BlockSample(bs)
    for ng in (False, True, True):
        with torch.set_grad_enabled(not ng):
            xb = sampler(x, mask)
            y = fn(xb)
            z = F.conv2d(y, w, torch.zeros(C), padding=1)
        assert isinstance(y, BlockTensor)
        assert_close(y.hr, eh)
        assert_close(y.lr, el)
        assert_close(z.hr, zh)
        assert_close(z.lr, zl)
    # all-HR: same as the dense op
    full = torch.ones(2, 2, 3, dtype=torch.bool)
    assert_close(block_combine(fn(block_sample(x, full, bs))), fn(x.clone()))


def test_binary_ops_between_block_tensors():
    C, bs = 4, 8
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, C, 16, 16, generator=g)
    y = torch.randn(2, C, 16, 16, generator=g)
    mask = make_mask("mixed", 2, 2, 2, g)
    xh, xl = ref_sample(x, mask, bs)
    yh, yl = ref_sample(y, mask, bs)
    sampler = BlockSample(bs)
    for ng in (False, True, True):
        with torch.set_grad_enabled(not ng):
            a = sampler(x, mask)
            b = block_sample(y, a.grid)
            results = {
                "add": (a + b, xh + yh, xl + yl),
                "sub": (a - b, xh - yh, xl - yl),
                "mul": (a * b, xh * yh, xl * yl),
                "div": (a / (torch.abs(b) + 1), xh / (yh.abs() + 1), xl / (yl.abs() + 1)),
                "cat": (torch.cat([a, b], 1), torch.cat([xh, yh], 1), torch.cat([xl, yl], 1)),
                "cat3": (
                    torch.cat([a, b, a], dim=-3),
                    torch.cat([xh, yh, xh], 1),
                    torch.cat([xl, yl, xl], 1),
                ),
            }
            for k, (r, eh, el) in results.items():
                assert_close(r.hr, eh, msg=k)
                assert_close(r.lr, el, msg=k)
            # in-place forms
            c = a * 1.0
            c += b
            assert_close(c.hr, xh + yh)
            c *= 2
            assert_close(c.lr, 2 * (xl + yl))
            c -= b
            assert_close(c.hr, 2 * (xh + yh) - yh)
            d = F.conv2d(a, torch.eye(C).view(C, C, 1, 1))  # a fresh conv output
            d += b
            assert_close(d.hr, xh + yh, rtol=1e-5, atol=1e-5)
            d.add_(b, alpha=2)
            assert_close(d.lr, xl + 3 * yl, rtol=1e-5, atol=1e-5)
            # `a` is untouched by all of the above
            assert_close(a.hr, xh)
            assert_close(a.lr, xl)


@pytest.mark.parametrize("mode", ["avg", "strided"])
def test_interpolate_and_pools_all_hr_and_all_lr(mode):
    """F.interpolate 2x (nearest, bilinear, size=), max/avg pools of several shapes."""
    C = 3
    x = torch.randn(2, C, 32, 48, dtype=torch.float64)
    ops = {
        "nearest": lambda t: F.interpolate(t, scale_factor=2, mode="nearest"),
        "nearest_size": lambda t: F.interpolate(t, size=(2 * t.shape[-2], 2 * t.shape[-1])),
        "bilinear": lambda t: F.interpolate(
            t, scale_factor=2.0, mode="bilinear", align_corners=False
        ),
        "upsample_module": nn.Upsample(scale_factor=2, mode="bilinear"),
        "maxpool_3_2_1": lambda t: F.max_pool2d(t, 3, 2, 1),
        "maxpool_2_2": nn.MaxPool2d(2),
        "maxpool_3_1_1": lambda t: F.max_pool2d(t, 3, 1, 1),
        "maxpool_5_1_2": lambda t: F.max_pool2d(t, 5, 1, 2),
        "conv_dilated": lambda t: F.conv2d(
            t, torch.ones(C, C, 3, 3, dtype=t.dtype), padding=3, dilation=3
        ),
        "avgpool_2_2": nn.AvgPool2d(2),
        "avgpool_3_1_1": lambda t: F.avg_pool2d(t, 3, 1, 1),
        "avgpool_3_2_1": lambda t: F.avg_pool2d(t, 3, 2, 1),
        "conv_same": lambda t: F.conv2d(t, torch.ones(C, C, 3, 3, dtype=t.dtype), padding="same"),
        "conv_valid_1x1": lambda t: F.conv2d(
            t, torch.ones(C, C, 1, 1, dtype=t.dtype), padding="valid"
        ),
        "conv_module": nn.Conv2d(C, C, 3, padding=1).double(),
    }
    for name, fn in ops.items():
        for kind in ("all_hr", "all_lr"):
            mask = torch.full((2, 2, 3), kind == "all_hr")
            y = block_combine(fn(block_sample(x, mask, 16, pad_mode=mode)))
            if kind == "all_hr":
                expected = fn(x)
            else:
                expected = F.interpolate(fn(F.avg_pool2d(x, 2)), scale_factor=2)
            assert_close(y, expected, msg=f"{name} {kind}")


# ============================================================================ dense fallback


class _GlobalContext(nn.Module):
    """An op that needs the whole map (global average), keeping the spatial size."""

    def forward(self, x):
        return x * torch.sigmoid(x.mean((2, 3), keepdim=True))


def test_dense_fallback_matches_reference():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 16, 24, generator=g, dtype=torch.float64)
    mask = make_mask("mixed", 2, 2, 3, g)
    mod = _GlobalContext()
    hr, lr = ref_sample(x, mask, 8)
    expected = ref_sample(mod(ref_combine(hr, lr, mask, 8)), mask, 8)
    wrapped = DenseFallback(mod)
    sampler = BlockSample(8)
    for ng in (False, True, True):
        with torch.set_grad_enabled(not ng):
            xb = sampler(x, mask)
            for y in (wrapped(xb), dense_fallback(mod, xb), dense_call(mod, xb)):
                assert isinstance(y, BlockTensor)
                assert y.side == 8
                assert_close(y.hr, expected[0])
                assert_close(y.lr, expected[1])
            # and a padded consumer after it
            z = F.max_pool2d(wrapped(xb), 3, 1, 1)
            assert_close(
                block_combine(z),
                block_combine(F.max_pool2d(BlockTensor.from_parts(*expected, xb.grid), 3, 1, 1)),
            )
    # dense inputs pass straight through
    assert_close(wrapped(x), mod(x))
    assert_close(dense_call(mod, x), mod(x))
    assert "forward" not in mod.__dict__  # nothing is installed on the module
    # a size-keeping adaptive pool works too
    pool = DenseFallback(nn.AdaptiveAvgPool2d((16, 24)))
    assert_close(block_combine(pool(block_sample(x, mask, 8))), ref_combine(hr, lr, mask, 8))


# ============================================================ regressions of fixed bugs


def test_pad_value_zero_then_max_pool():
    x = -torch.rand(1, 2, 16, 16) - 1  # all negative: a zero pad wins every border window
    xb = block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 8)
    y = F.max_pool2d(F.pad(xb, (0, 1, 0, 1), value=0.0), 3, 2, 0)
    assert_close(block_combine(y), F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=0.0), 3, 2, 0))


def test_inplace_add_after_padded_read_refreshes_halo():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16)
    w1, w2, w3 = (torch.randn(2, 2, 3, 3) for _ in range(3))

    def net(t):
        a = F.conv2d(t, w1, padding=1)
        b = F.conv2d(a, w2, padding=1)  # pads `a`
        a += b  # in place into `a`
        return F.conv2d(a, w3, padding=1)  # pads `a` again

    with torch.no_grad():
        dense = net(x)
        y = net(block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 8))
    # float32 summation order differs between tiles and the dense map; the bug gave errors ~1e0
    assert rel_err(block_combine(y), dense) < 1e-5


def test_fpad_result_not_changed_by_inplace_add_on_input():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 16)
    w1, w3 = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)

    def net(t):
        a = F.conv2d(t, w1, padding=1)
        p = F.pad(a, (1, 1, 1, 1))
        a += 1
        return F.conv2d(p, w3)

    with torch.no_grad():
        dense = net(x)
        y = net(block_sample(x, torch.ones(1, 2, 2, dtype=torch.bool), 8))
    assert_close(block_combine(y), dense)


def test_outputs_survive_later_passes():
    """Outputs (and block_pad results) kept from earlier no-grad passes through one
    BlockSample are not overwritten when later passes reuse its padded buffers."""
    layers = small_cnn_b(3, 4)
    params = make_params(layers, seed=9, dtype=torch.float64)
    g = torch.Generator().manual_seed(77)
    bs = 16
    sampler = BlockSample(bs)
    runs = []
    with torch.no_grad():
        for i in range(5):
            x = torch.randn(2, 3, 2 * bs, 3 * bs, generator=g, dtype=torch.float64)
            mask = (
                make_mask("mixed", 2, 2, 3, g) if i != 2 else torch.ones(2, 2, 3, dtype=torch.bool)
            )
            xb = sampler(x, mask)
            y = run_functional(layers, params, xb)
            padded = block_pad(y, 1)
            runs.append((x, mask, y, padded))
    for x, mask, y, (hp, lp) in runs:
        eh, el, es = _run_ref(layers, params, x, mask, bs, "avg")
        assert_close(y.hr, eh, rtol=1e-9, atol=1e-9)
        assert_close(y.lr, el, rtol=1e-9, atol=1e-9)
        ph, pl = ref_pad(eh, el, mask, es, 1)
        assert_close(hp, ph, rtol=1e-9, atol=1e-9)
        assert_close(lp, pl, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "act",
    [
        lambda a, inplace: F.relu(a, inplace=inplace),
        lambda a, inplace: F.hardswish(a, inplace=inplace),
        lambda a, inplace: F.silu(a, inplace=inplace),
        lambda a, inplace: F.hardtanh(a, -0.5, 0.5, inplace=inplace),
        lambda a, inplace: a.sigmoid_() if inplace else torch.sigmoid(a),
    ],
    ids=["relu_", "hardswish_", "silu_", "hardtanh_", "sigmoid_"],
)
def test_inplace_activation_on_fresh_conv_output(act):
    """In inference an in-place activation overwrites a fresh conv output (as the dense network
    does), refreshes a halo filled before it and keeps later passes (learned halos) exact."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 24)
    mask = torch.tensor([[[1, 0, 1], [0, 1, 0]], [[0, 0, 1], [1, 1, 1]]], dtype=torch.bool)
    w1, w2, w3 = torch.randn(4, 3, 3, 3), torch.randn(4, 4, 3, 3), torch.randn(4, 4, 3, 3)

    def net(t, inplace):
        a = F.conv2d(t, w1, padding=1)
        b = F.conv2d(a, w2, padding=1)  # pads `a` before the activation changes it
        a = act(a, inplace)
        c = F.conv2d(a, w3, padding=1)  # pads the activated `a`
        return a, b + c

    ref = [r.combine() for r in net(RefBlocks(*ref_sample(x, mask, 8), mask, 8), False)]
    sampler = BlockSample(8)
    with torch.inference_mode():
        for _ in range(3):  # the first pass learns the halos, later ones write into stores
            a, y = net(sampler(x, mask), True)
            assert_close(block_combine(a), ref[0], rtol=1e-5, atol=1e-5)
            assert_close(block_combine(y), ref[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("pad_mode", ["avg", "strided"])
@pytest.mark.parametrize(
    "k,stride,padding,dilation",
    [(5, 1, 4, 2), (5, 1, 2, 1), (3, 2, 1, 1), (5, 2, 2, 1), (3, 1, (2, 1), (2, 1))],
)
def test_depthwise_conv_on_the_lr_canvas_equals_padded_tiles(
    k, stride, padding, dilation, pad_mode, monkeypatch
):
    """Depthwise convs whose LR halos dwarf the tiles run the LR level on the LR canvas
    (inference); the result is the reference's (padded LR tiles), with and without F.pad."""
    from segblocks.blocks.layers import conv as conv_layer

    monkeypatch.setattr(conv_layer, "CANVAS_MIN_HALO_RATIO", 1.0)  # every case takes the canvas
    # (the canvas is the path where the indirection kernel does not run: python backend, CUDA)
    monkeypatch.setattr(conv_layer, "DIRECT_DEPTHWISE", False)
    torch.manual_seed(0)
    C, bs = 6, 4
    x = torch.randn(2, C, 8, 16, dtype=torch.float64)
    mask = torch.tensor(
        [[[1, 0, 0, 1], [0, 1, 1, 0]], [[0, 0, 0, 0], [1, 0, 1, 1]]], dtype=torch.bool
    )
    w = torch.randn(C, 1, k, k, dtype=torch.float64)
    b = torch.randn(C, dtype=torch.float64)

    def net(t):
        y = F.conv2d(t, w, b, stride, padding, dilation, C)
        return F.conv2d(F.pad(y, (1, 0, 0, 1)), w[:, :, :2, :2], None, 1, 0, 1, C)

    ref = net(RefBlocks(*ref_sample(x, mask, bs), mask, bs, pad_mode)).combine()
    calls = []
    orig = conv_layer.lr_canvas
    try:
        conv_layer.lr_canvas = lambda *a, **kw: calls.append(1) or orig(*a, **kw)
        with torch.inference_mode():
            got = block_combine(net(BlockSample(bs, pad_mode)(x, mask)))
    finally:
        conv_layer.lr_canvas = orig
    assert calls  # the canvas path ran
    assert_close(got, ref, rtol=1e-10, atol=1e-10)
