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


class _Acts(torch.nn.Module):
    """conv -> ReLU6 (fusable), conv -> ReLU (fusable), a ReLU module used twice, a conv output
    read before its activation, and a non-in-place activation whose input is read later."""

    def __init__(self):
        super().__init__()
        c = 8
        self.c1 = torch.nn.Conv2d(3, c, 3, padding=1)
        self.a1 = torch.nn.ReLU6(inplace=True)
        self.c2 = torch.nn.Conv2d(c, c, 3, padding=1, groups=c)  # depthwise
        self.a2 = torch.nn.ReLU()
        self.c3 = torch.nn.Conv2d(c, c, 1)
        self.shared = torch.nn.ReLU()
        self.c4 = torch.nn.Conv2d(c, c, 1)
        self.c5 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.a5 = torch.nn.ReLU6()
        self.c6 = torch.nn.Conv2d(c, c, 1)
        self.a6 = torch.nn.Hardtanh(-0.5, 0.5, inplace=True)

    def forward(self, x):
        y = self.a2(self.c2(self.a1(self.c1(x))))
        y = self.shared(self.c3(y)) + self.shared(self.c4(y))  # shared module: not fused
        z = self.c5(y)
        y = self.a5(z) + 0.5 * z  # z read after a non-in-place activation: not fused
        w = self.c6(y)
        u = 2 * w  # w read before its (in-place) activation: not fused
        return self.a6(w) + u


def test_fuse_activations_fuses_only_safe_pairs_and_keeps_outputs():
    from segblocks.blocks.fuse import Conv2dActivation, fuse_activations

    torch.manual_seed(0)
    model = _Acts().eval()
    x = torch.randn(2, 3, 64, 96)
    fused = fuse_activations(model, x)
    kinds = {n: type(m).__name__ for n, m in fused.named_children()}
    assert kinds["c1"] == kinds["c2"] == "Conv2dActivation"
    assert kinds["a1"] == kinds["a2"] == "Identity"
    for n in ("c3", "c4", "c5", "c6"):
        assert kinds[n] == "Conv2d", n
    assert (fused.c1.act_min, fused.c1.act_max) == (0.0, 6.0)
    assert isinstance(fused.c2, Conv2dActivation) and fused.c2.act_max == float("inf")
    mask = torch.tensor([[[True, False, True], [False, True, False]]] * 2)
    with torch.inference_mode():
        ref = model(x)
        assert torch.equal(fused(x), ref)
        ref_b = block_combine(model(block_sample(x, mask, 32)))
        for _ in range(2):  # second pass: learned halos
            got_b = block_combine(fused(block_sample(x, mask, 32)))
            assert _rel(got_b, ref_b) < 1e-6
    # grad mode: the autograd-capable path (no inference fast paths)
    got = block_combine(fused(block_sample(x, mask, 32)))
    assert got.requires_grad and _rel(got.detach(), ref_b) < 1e-6


def test_optimized_camvid_network_fuses_and_keeps_outputs():
    from segblocks.blocks.fuse import Conv2dActivation
    from segblocks.models import create_model
    from segblocks.models.inference import optimize_for_inference
    from segblocks.models.segblocks_model import SegBlocksModel

    torch.manual_seed(0)
    net = create_model("swiftnet_effl1", num_classes=5, output_stride=16).eval()
    _randomize_bn(net)
    model = SegBlocksModel(net, "random", 32, tau=0.5).eval()
    fast = optimize_for_inference(model, example_size=(64, 96))
    n = sum(isinstance(m, Conv2dActivation) for m in fast.modules())
    assert n >= 20, n  # the expansion and stride-1 depthwise convs of the MBConv blocks
    x = torch.randn(1, 3, 64, 96)
    mask = torch.tensor([[[True, False, True], [False, True, False]]])
    with torch.inference_mode():
        for m in (model, fast):
            m(x, mask=mask)  # learn halos
        ref, got = model(x, mask=mask).logits, fast(x, mask=mask).logits
    assert _rel(got, ref) < 1e-4
