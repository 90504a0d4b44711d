"""SwiftNet: shapes, output stride 16, structure, and block execution of the decoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segblocks.blocks import BlockTensor, block_combine, block_sample
from segblocks.models.registry import create_model
from segblocks.models.swiftnet import SpatialPyramidPooling, SwiftNet

NAMES = ["swiftnet_rn18", "swiftnet_rn50", "swiftnet_effl1"]
CHANNELS = {
    "swiftnet_rn18": [64, 128, 256, 512],
    "swiftnet_rn50": [256, 512, 1024, 2048],
    "swiftnet_effl1": [24, 40, 112, 320],
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics in the SPP, decoder and head
    (eval must use them). The backbone keeps its own (ImageNet weights for EfficientNet-Lite1:
    random BN statistics in its 16 blocks inflate activations to ~1e2 and float32 rounding
    then reaches ~1e-5)."""
    g = torch.Generator().manual_seed(1)
    for m in (m for part in (model.spp, model.decoder, model.head) for m in part.modules()):
        if isinstance(m, nn.BatchNorm2d):
            C = m.num_features
            m.running_mean.copy_(torch.rand(C, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(C, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(C, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(C, generator=g) * 0.4 - 0.2)
    return model


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [19, 11])
def test_shapes(name, num_classes):
    model = create_model(name, num_classes=num_classes).eval()
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        feats = model.backbone(x)
        logits4 = model.forward_features(x)
        out = model(x)
    assert [f.shape[1] for f in feats] == CHANNELS[name]
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 64), (16, 32), (8, 16), (4, 8)]
    assert model.feature_strides == (4, 8, 16, 32)
    assert logits4.shape == (1, num_classes, 32, 64)
    assert out.shape == (1, num_classes, 128, 256)
    assert torch.isfinite(out).all()


def test_default_widths():
    rn18 = create_model("swiftnet_rn18")
    effl1 = create_model("swiftnet_effl1")
    assert rn18.num_classes == 19
    assert (rn18.decoder_width, rn18.spp_width) == (128, 128)
    assert (effl1.decoder_width, effl1.spp_width) == (48, 48)
    # SPP: 128 -> three levels of 42 -> concat 254 -> decoder width.
    spp = rn18.spp
    assert spp.level_width == 42
    assert spp.bottleneck.conv.out_channels == 128
    assert [lv.conv.out_channels for lv in spp.levels] == [42, 42, 42]
    assert spp.fuse.conv.in_channels == 254 and spp.fuse.conv.out_channels == 128
    assert len(rn18.decoder.stages) == 3
    # Laterals coarse to fine: stride 16, 8, 4.
    assert [s.lateral.conv.in_channels for s in rn18.decoder.stages] == [256, 128, 64]
    assert rn18.head.conv.out_channels == 19 and rn18.head.conv.bias is not None
    custom = create_model("swiftnet_effl1", decoder_width=96, spp_width=128)
    assert custom.spp.fuse.conv.out_channels == 96 and custom.spp.level_width == 42


def test_spp_grid_follows_aspect_ratio(monkeypatch):
    spp = SpatialPyramidPooling(8, 12, 6, grids=(8, 4, 2)).eval()
    sizes = []
    orig = nn.functional.adaptive_avg_pool2d

    def spy(x, size):
        sizes.append(tuple(size))
        return orig(x, size)

    monkeypatch.setattr(nn.functional, "adaptive_avg_pool2d", spy)
    with torch.no_grad():
        y = spp(torch.randn(1, 8, 32, 64))
    assert sizes == [(8, 16), (4, 8), (2, 4)]
    assert y.shape == (1, 6, 32, 64)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dilate", [False, True])
def test_output_stride_16(name, dilate):
    model = create_model(name, num_classes=11, output_stride=16, dilate_last_stage=dilate).eval()
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    # The last stage's map is at stride 16, like the stage before it.
    assert [tuple(f.shape[-2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (8, 12)]
    assert model.feature_strides == (4, 8, 16, 16)
    assert len(model.decoder.stages) == 2  # laterals from strides 8 and 4
    assert out.shape == (1, 11, 128, 192)


def test_output_stride_16_removes_stride_only():
    a = create_model("swiftnet_rn18").backbone.state_dict()
    b16 = create_model("swiftnet_rn18", output_stride=16).backbone
    b = b16.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    assert b16.layer4[0].conv1.stride == (1, 1) and b16.layer4[0].conv1.dilation == (1, 1)
    assert b16.layer4[0].downsample[0].stride == (1, 1)


def test_input_size_not_multiple_of_32():
    model = create_model("swiftnet_rn18", num_classes=11).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 120))
    assert out.shape == (1, 11, 72, 120)


def test_bad_arguments():
    with pytest.raises(ValueError, match="output_stride"):
        SwiftNet("resnet18", output_stride=8)
    with pytest.raises(ValueError, match="available"):
        SwiftNet("vgg16")
    with pytest.raises(ValueError, match="dilate_last_stage"):
        SwiftNet("resnet18", dilate_last_stage=True)
    with pytest.raises(ValueError, match="pretrained_backbone"):
        SwiftNet("resnet18", pretrained_backbone=3)


def test_parameter_groups_partition_the_model():
    model = create_model("swiftnet_effl1")
    ids = [id(p) for p in model.backbone_parameters()] + [id(p) for p in model.head_parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_backward():
    model = create_model("swiftnet_rn18", num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    loss = nn.functional.cross_entropy(model(x), torch.randint(0, 5, (2, 64, 64)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------- block execution
BLOCK_CASES = [
    # (name, output_stride, dilate_last_stage, block_size)
    ("swiftnet_rn18", 32, False, 64),
    ("swiftnet_rn50", 32, False, 64),
    ("swiftnet_effl1", 32, False, 64),
    ("swiftnet_rn18", 16, False, 32),
    ("swiftnet_effl1", 16, False, 32),
    ("swiftnet_rn18", 16, True, 32),
    ("swiftnet_effl1", 16, True, 64),
]


@pytest.mark.parametrize("name,os_,dilate,bs", BLOCK_CASES)
def test_block_mode_all_hr_matches_dense(name, os_, dilate, bs):
    """Backbone + decoder + head on block tensors (SPP via dense_call) == dense, all-HR."""
    pretrained = name == "swiftnet_effl1"  # packaged ImageNet weights: realistic activations
    model = create_model(
        name,
        num_classes=11,
        output_stride=os_,
        dilate_last_stage=dilate,
        pretrained_backbone=pretrained,
    )
    model = randomize_bn(model).eval()
    x = torch.randn(1, 3, 128, 256)
    mask = torch.ones(1, 128 // bs, 256 // bs, dtype=torch.bool)
    with torch.no_grad():
        ref = model.forward_features(x)
        feats = model.backbone(block_sample(x, mask, bs))
        assert all(isinstance(f, BlockTensor) for f in feats)
        out = model.decode(feats)
        assert isinstance(out, BlockTensor)
        dense = block_combine(out)
    assert dense.shape == ref.shape
    assert rel_err(dense, ref) <= 1e-5


@pytest.mark.parametrize("name", ["swiftnet_rn18", "swiftnet_effl1"])
def test_block_mode_mixed_mask_runs(name):
    model = randomize_bn(create_model(name, num_classes=11)).eval()
    x = torch.randn(2, 3, 128, 256)
    mask = torch.tensor([[[1, 0, 0, 1], [0, 1, 1, 0]], [[0, 0, 0, 0], [1, 0, 0, 0]]]).bool()
    with torch.no_grad():
        xb = block_sample(x, mask, 64)
        out = model.decode(model.backbone(xb))
        dense = block_combine(out)
    assert out.side == 16 and out.hr.shape[0] == 5 and out.lr.shape[-1] == 8
    assert dense.shape == (2, 11, 32, 64) and torch.isfinite(dense).all()


def test_block_mode_training_gradients_match_dense():
    """Train mode (joint BN statistics), all-HR: outputs and gradients equal dense (float64)."""
    model = create_model("swiftnet_rn18", num_classes=3, decoder_width=16).double().train()
    x = torch.randn(2, 3, 64, 128, dtype=torch.float64)
    w = torch.randn(2, 3, 16, 32, dtype=torch.float64)
    # Block size 64 = 2 x the total stride: the smallest that keeps LR blocks whole pixels.
    ref = model.forward_features(x)
    (ref * w).sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    mask = torch.ones(2, 1, 2, dtype=torch.bool)
    out = block_combine(model.decode(model.backbone(block_sample(x, mask, 64))))
    (out * w).sum().backward()
    assert rel_err(out, ref) < 1e-10
    gmax = max(float(g.norm()) for g in g_ref)
    for p, g in zip(model.parameters(), g_ref, strict=True):
        assert float((p.grad - g).norm()) <= 1e-10 * gmax


def test_effl1_block_training_gradients_match_dense(monkeypatch):
    """SwiftNet-EffL1 at output stride 16, block 32, train mode, all-HR: the 5x5 depthwise
    convs on 2x2 blocks run on the HR canvas with autograd; outputs and gradients equal the
    dense network's (float64)."""
    from segblocks.blocks.layers import conv as conv_layer

    torch.manual_seed(0)
    model = create_model(
        "swiftnet_effl1", num_classes=3, output_stride=16, pretrained_backbone=False
    )
    model = model.double().train()
    x = torch.randn(2, 3, 64, 128, dtype=torch.float64)
    ref = model.forward_features(x)
    w = torch.randn_like(ref)
    (ref * w).sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    real = conv_layer.hr_canvas
    monkeypatch.setattr(conv_layer, "hr_canvas", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    mask = torch.ones(2, 2, 4, dtype=torch.bool)
    out = block_combine(model.decode(model.backbone(block_sample(x, mask, 32))))
    (out * w).sum().backward()
    assert calls, "no depthwise conv ran on the HR canvas"
    assert rel_err(out, ref) < 1e-10
    gmax = max(float(g.norm()) for g in g_ref)
    for p, g in zip(model.parameters(), g_ref, strict=True):
        assert float((p.grad - g).norm()) <= 1e-10 * gmax
