import pytest
import timm
import torch

from segblocks.blocks import MarginProfile, block_combine, block_sample
from segblocks.blocks.fuse import fold_batchnorm


def _rel(a, b):
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite1"])
def test_fold_batchnorm_keeps_outputs(name):
    torch.manual_seed(0)
    model = timm.create_model(name, features_only=True, pretrained=False).eval()
    _randomize_bn(model)
    fused = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # copy by default
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        # Folding changes the float32 arithmetic; deep random nets amplify it to ~4e-5.
        for a, b in zip(model(x), fused(x), strict=True):
            assert _rel(b, a) < 2e-4
        # and in block mode, with a mixed mask, on the fast path (second call)
        mask = torch.tensor([[[True, False, True], [False, True, False]]])
        prof = MarginProfile()
        for _ in range(2):
            fb = [block_combine(o) for o in fused(block_sample(x, mask, 64, profile=prof))]
        dense = fused(x)
        ref = [block_combine(o) for o in model(block_sample(x, mask, 64))]
        for a, b in zip(ref, fb, strict=True):
            assert _rel(b, a) < 2e-4
    # the slow (autograd) path of the folded model agrees with its fast path
    slow = [block_combine(o) for o in fused(block_sample(x, mask, 64))]
    for a, b in zip(slow, fb, strict=True):
        assert _rel(b, a) < 1e-5
    assert [tuple(d.shape) for d in dense] == [tuple(f.shape) for f in fb]


def test_fold_batchnorm_needs_eval():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)


def test_fold_batchnorm_leaves_preactivation_bn_alone():
    """BN-ReLU-Conv units (SwiftNet decoder): a conv followed *in registration order* by the
    next unit's BN must not be folded into it, because that BN reads something else."""
    from segblocks.models import create_model

    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=3).eval()
    _randomize_bn(net)
    fused = fold_batchnorm(net, torch.randn(1, 3, 128, 128))
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        assert _rel(fused(x), net(x)) < 1e-5
    # the backbone's conv->BN pairs were folded, the decoder's pre-activation BNs kept
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.backbone.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.decoder.modules())


def test_fold_batchnorm_skips_conv_with_two_readers():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.other = torch.nn.ReLU()

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + self.other(y)

    m = Branchy().eval()
    _randomize_bn(m)
    fused = fold_batchnorm(m, torch.randn(1, 3, 8, 8))
    assert isinstance(fused.bn, torch.nn.BatchNorm2d)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), m(x))


def test_fold_batchnorm_skips_conv_read_functionally_too():
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # y is read by BN and by the add

    m = Residual().eval()
    _randomize_bn(m)
    fused = fold_batchnorm(m, torch.randn(1, 4, 8, 8))
    assert isinstance(fused.bn, torch.nn.BatchNorm2d)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), m(x))
