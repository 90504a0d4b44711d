"""optimize_for_inference: batch norm folded, channels-last, same outputs."""

import pytest
import torch
from torch import nn

from segblocks.models import create_model
from segblocks.models.inference import optimize_for_inference
from segblocks.models.segblocks_model import SegBlocksModel


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    # Fresh BN layers are identities; random statistics make a wrong fold visible.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


@pytest.mark.parametrize("name", ["swiftnet_rn18", "swiftnet_effl1"])
@pytest.mark.parametrize("policy", ["learned", "heuristic"])
def test_optimized_segblocks_model_gives_the_same_output(name, policy):
    gen = torch.Generator().manual_seed(0)
    kw = {"width": 8} if policy == "learned" else {"tau": 0.4}
    model = SegBlocksModel(
        create_model(name, num_classes=5, decoder_width=32), policy, 64, **kw
    ).eval()
    _randomize_bn(model, gen)
    fast = optimize_for_inference(model, example_size=(128, 128))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    n_bn_fast = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert n_bn_fast < n_bn  # folded (SwiftNet's pre-activation BNs stay)
    assert not fast.training
    x = torch.randn(2, 3, 128, 192, generator=gen)
    with torch.inference_mode():
        ref, got = model(x), fast(x)
    assert torch.equal(ref.grid, got.grid)
    err = (got.logits - ref.logits).abs().max() / ref.logits.abs().max()
    assert err < 1e-4, err
    w = next(p for p in fast.net.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous(memory_format=torch.channels_last)


def test_optimized_plain_network_and_dtype():
    net = create_model("swiftnet_rn18", num_classes=3, decoder_width=32).eval()
    _randomize_bn(net, torch.Generator().manual_seed(1))
    fast = optimize_for_inference(net, example_size=(64, 64), dtype=torch.bfloat16)
    assert next(fast.parameters()).dtype == torch.bfloat16
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # original untouched
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        ref, got = net(x), fast(x.to(torch.bfloat16)).float()
    assert (got - ref).abs().max() / ref.abs().max() < 5e-2
