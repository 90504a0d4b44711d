"""Block execution in bfloat16 / float16 and under CPU autocast (issue 7, part 4).

What holds: all-HR block execution equals the dense network in the same dtype up to that
dtype's rounding (convolutions over padded blocks accumulate in a different order than over
the dense map, so results are not bit-identical); mixed masks match the float64 reference up to
bfloat16 rounding; training under autocast gives the dense network's gradients (all-HR) within
bfloat16 tolerance.
"""

import functools

import pytest
import torch
from torch import nn

from segblocks.blocks import BlockSample, block_combine, block_sample

from ._util import make_mask, rel_err
from .reference import make_params, ref_combine, ref_sample, run_functional, run_reference
from .test_block_execution import NETS

TRUNKS = ["resnet18", "resnet50", "tf_efficientnet_lite1"]
#: Relative error allowed between two bfloat16 computations of the same deep network
#: (8 mantissa bits; errors grow through ~20-50 layers of random weights).
BF16_TOL = 3e-2


@functools.cache
def _trunk(name: str, dtype) -> nn.Module:
    import timm

    torch.manual_seed(123)
    model = timm.create_model(name, features_only=True, pretrained=False).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(m.num_features, generator=g))
    return model.to(dtype=dtype, memory_format=torch.channels_last)


@pytest.mark.parametrize("name", TRUNKS)
@pytest.mark.parametrize("how", ["bf16_weights", "autocast"])
def test_all_hr_equals_dense_in_bfloat16(name, how):
    dtype = torch.bfloat16 if how == "bf16_weights" else torch.float32
    model = _trunk(name, dtype)
    x = torch.randn(1, 3, 256, 256).to(dtype).contiguous(memory_format=torch.channels_last)
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    sampler = BlockSample(128)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast")
    with torch.inference_mode(), ctx:
        dense = model(x)
        for _ in range(2):  # the second pass writes into learned padded buffers
            blocks = model(sampler(x, mask))
            for i, (d, b) in enumerate(zip(dense, blocks, strict=True)):
                c = block_combine(b)
                assert c.dtype == d.dtype == torch.bfloat16, (i, c.dtype, d.dtype)
                assert rel_err(c, d) <= BF16_TOL, f"stage {i}: {rel_err(c, d):.3e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["avg", "strided"])
def test_mixed_mask_small_cnn_matches_reference(dtype, mode):
    g = torch.Generator().manual_seed(3)
    layers = NETS["small_cnn_b"][0](4, 4)
    bs = 16
    params = make_params(layers, seed=5, dtype=torch.float64)
    x = torch.randn(2, 4, 3 * bs, 2 * bs, generator=g, dtype=torch.float64)
    mask = make_mask("mixed", 2, 3, 2, g)
    hr, lr = ref_sample(x, mask, bs)
    eh, el, es = run_reference(layers, params, hr, lr, mask, bs, mode, False)
    expected = ref_combine(eh, el, mask, es, "nearest")
    low = {k: v.to(dtype) for k, v in params.items()}
    with torch.inference_mode():
        y = run_functional(layers, low, block_sample(x.to(dtype), mask, bs, pad_mode=mode))
        got = block_combine(y)
    assert got.dtype == dtype
    assert rel_err(got, expected) <= 2e-2


def test_training_under_autocast_matches_dense_gradients():
    import timm

    torch.manual_seed(0)
    dense = timm.create_model("resnet18", features_only=True, pretrained=False).train()
    block = timm.create_model("resnet18", features_only=True, pretrained=False).train()
    block.load_state_dict(dense.state_dict())
    x = torch.randn(2, 3, 128, 128)
    mask = torch.ones(2, 2, 2, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ld = sum(f.float().square().mean() for f in dense(x))
        lb = sum(block_combine(f).float().square().mean() for f in block(block_sample(x, mask, 64)))
    ld.backward()
    lb.backward()
    assert rel_err(lb.detach(), ld.detach()) <= BF16_TOL
    for (n, pd), (_, pb) in zip(dense.named_parameters(), block.named_parameters(), strict=True):
        assert pb.grad is not None, n
        assert rel_err(pb.grad, pd.grad) <= 0.1, f"{n}: {rel_err(pb.grad, pd.grad):.3e}"
