"""torchvision / timm networks through the generic SegmentationNet and SegBlocksModel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segblocks.measuring.macs import count_macs_dense, count_macs_segblocks
from segblocks.models import SegmentationNet, create_model
from segblocks.models.segblocks_model import SegBlocksModel

from ..blocks.reference_module import run_reference_model

# (name, block size, input side): block sizes are multiples of 2 x the output stride
RECIPES = [
    ("fcn_resnet50", 32, 128),
    ("deeplabv3_resnet50", 32, 128),
    ("deeplabv3_mobilenet_v3_large", 64, 128),
    ("lraspp_mobilenet_v3_large", 64, 128),
    ("swiftnet_effb0", 64, 128),
    ("swiftnet_mbv3", 64, 128),
]


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,bs,side", RECIPES)
def test_recipe_all_hr_equals_dense_and_macs_are_exact(name, bs, side):
    torch.manual_seed(0)
    net = create_model(name, num_classes=11).eval()
    x = torch.randn(1, 3, side, side)
    g = side // bs
    with torch.no_grad():
        dense = net(x)
        model = SegBlocksModel(net, "all_hr", bs).eval()
        blocks = model(x)
    assert dense.shape == (1, 11, side, side)
    assert _rel(blocks.logits, dense) <= 1e-5
    assert count_macs_segblocks(model, x).total == count_macs_dense(net, x).total
    # a mixed mask runs and costs less
    mask = torch.zeros(1, g, g, dtype=torch.bool)
    mask[0, 0, 0] = True
    with torch.no_grad():
        mixed = model(x, mask=mask)
    assert mixed.logits.shape == dense.shape and torch.isfinite(mixed.logits).all()
    assert count_macs_segblocks(model, x, mask).total < count_macs_dense(net, x).total


def test_dense_modules_run_densely_and_are_named():
    net = create_model("deeplabv3_mobilenet_v3_large", num_classes=3)
    assert "head.0" in net.dense_modules and "atrous" in net.dense_modules["head.0"]
    assert "dense: head.0" in repr(net).replace("\n", " ")
    with pytest.raises(AttributeError):
        SegmentationNet(
            net.encoder, net.head, num_classes=3, output_stride=16, dense_modules={"x": "y"}
        )


class _Context(torch.nn.Module):
    """Needs the whole map: pooling to a 2x2 grid has no block form."""

    def forward(self, x):
        return x + F.interpolate(F.adaptive_avg_pool2d(x, 2), size=x.shape[-2:], mode="nearest")


class _Custom(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ctx = _Context()

    def forward(self, x):
        return self.ctx(x)


@pytest.mark.parametrize("where", ["head.1", "head.1.0", "decoder"])
def test_generic_dense_modules_are_called_through_dense_call(where):
    """A listed module runs on the combined map wherever forward_logits can route it (a part,
    or a child of Sequential containers); all-HR equals dense and nothing is patched."""
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
    inner = torch.nn.Sequential(_Context())
    head = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), inner, torch.nn.Conv2d(8, 4, 1))
    dec = _Context() if where == "decoder" else None
    if where == "decoder":
        head = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 4, 1))
    net = SegmentationNet(
        enc, head, dec, num_classes=4, output_stride=2, dense_modules={where: "2x2 pooling"}
    ).eval()
    keys = set(net.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = F.interpolate(
            head((dec or torch.nn.Identity())(enc(x))), size=(32, 32), mode="bilinear"
        )
        assert torch.allclose(net(x), ref)
        assert _rel(SegBlocksModel(net, "all_hr", 8)(x).logits, ref) <= 1e-5
    assert set(net.state_dict()) == keys
    assert not any("forward" in m.__dict__ for m in net.modules())
    # without the declaration the same network cannot run in blocks
    bare = SegmentationNet(enc, head, dec, num_classes=4, output_stride=2)
    with pytest.raises(Exception, match="adaptive_avg_pool2d"), torch.no_grad():
        SegBlocksModel(bare, "all_hr", 8)(x)


def test_generic_dense_module_inside_a_custom_forward_is_refused():
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), _Custom())
    head = torch.nn.Conv2d(8, 4, 1)
    with pytest.raises(ValueError, match="'encoder.1' \\(_Custom\\) in its own forward"):
        SegmentationNet(
            enc, head, num_classes=4, output_stride=2, dense_modules={"encoder.1.ctx": "pool"}
        )
    with pytest.raises(ValueError, match="not under encoder, decoder, head"):
        SegmentationNet(enc, head, num_classes=4, output_stride=2, dense_modules={"": "all"})
    # the container itself is routable
    SegmentationNet(enc, head, num_classes=4, output_stride=2, dense_modules={"encoder.1": "p"})


def test_generic_wrapper_with_a_plain_module_and_errors():
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU())
    head = torch.nn.Conv2d(8, 4, 1)
    net = SegmentationNet(enc, head, num_classes=4, output_stride=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = F.interpolate(head(enc(x)), size=(32, 32), mode="bilinear")
        assert torch.allclose(net(x), ref)
        assert _rel(SegBlocksModel(net, "all_hr", 8)(x).logits, ref) <= 1e-5
    with pytest.raises(TypeError, match="lacks forward_logits and dense_modules"):
        SegBlocksModel(torch.nn.Conv2d(3, 4, 1), "all_hr", 8)
    with pytest.raises(ValueError, match="needs a reason"):
        SegmentationNet(enc, head, num_classes=4, output_stride=2, dense_modules={"head": ""})


@pytest.mark.parametrize(
    "name,bs,side,pad_mode,combine",
    [(*r, "avg", "nearest") for r in RECIPES]
    + [
        ("lraspp_mobilenet_v3_large", 64, 128, "strided", "bilinear"),
        ("deeplabv3_resnet50", 32, 64, "strided", "bilinear"),
        # the CamVid network (TF-"same" depthwise convs at output stride 16, block 32)
        ("swiftnet_effl1", 32, 64, "avg", "nearest"),
        ("swiftnet_effl1", 32, 64, "strided", "bilinear"),
    ],
)
def test_recipe_mixed_mask_equals_the_reference_executor(name, bs, side, pad_mode, combine):
    """The whole model on a mixed mask (both resolutions, every border case) against the slow
    block-by-block executor of ``tests/blocks/reference_module.py``, in float64. Inference
    (no_grad) runs the fast paths: depthwise convs through indirection tables, point-wise work
    on both levels' pixels at once."""
    torch.manual_seed(0)
    kw = {"output_stride": 16} if name == "swiftnet_effl1" else {}
    net = create_model(name, num_classes=5, **kw).eval().double()
    x = torch.randn(2, 3, side, 2 * side, dtype=torch.float64)
    gh, gw = side // bs, 2 * side // bs
    mask = torch.rand(2, gh, gw) < 0.5
    mask[0, 0, 0], mask[0, -1, -1], mask[1, 0, -1] = True, False, True  # both levels present
    model = SegBlocksModel(net, "all_hr", bs, pad_mode=pad_mode, combine=combine).eval()
    with torch.no_grad():
        got = model.run_blocks(model.sample(x, mask))
        ref = run_reference_model(net, x, mask, bs, mode=pad_mode, combine=combine)
    assert got.shape == ref.shape
    assert _rel(got, ref) <= 1e-10
