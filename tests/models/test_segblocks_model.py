"""SegBlocksModel: exactness against the dense SwiftNet, padding, policies, errors."""

import pytest
import torch
import torch.nn.functional as F

from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel, create_segblocks
from segblocks.policies import FixedMask


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _net(name, **kw):
    torch.manual_seed(0)
    if name == "swiftnet_effl1":
        # ImageNet weights keep activations in range (random BN stats drift to ~1e-5 in fp32).
        kw.setdefault("pretrained_backbone", True)
    return create_model(name, num_classes=5, **kw).eval()


@pytest.mark.parametrize("name", ["swiftnet_rn18", "swiftnet_rn50", "swiftnet_effl1"])
def test_all_hr_equals_dense_swiftnet(name):
    net = _net(name)
    model = SegBlocksModel(net, "all_hr", block_size=64).eval()
    x = torch.randn(1, 3, 128, 256)
    with torch.no_grad():
        dense = net(x)
        for _ in range(2):  # the second call takes the learned fast path
            out = model(x)
            assert out.logits.shape == dense.shape
            assert _rel(out.logits, dense) <= 1e-5
    assert out.grid.shape == (1, 2, 4) and bool(out.grid.all())
    assert torch.equal(out.hr_fraction, torch.ones(1))


def test_all_lr_equals_pooled_network_with_spp_at_combined_resolution():
    """What holds for all-LR, exactly: the network on the 2x average-pooled image, except that
    the SPP runs on the combined map (stride-32 features nearest-upsampled 2x) and its output
    is average-pooled back; the stride-4 logits are then nearest-upsampled 2x."""
    net = _net("swiftnet_rn18")
    model = SegBlocksModel(net, "all_lr", block_size=64).eval()
    x = torch.randn(2, 3, 128, 192)
    with torch.no_grad():
        out = model(x)
        feats = net.backbone(F.avg_pool2d(x, 2))
        spp = F.avg_pool2d(net.spp(F.interpolate(feats[-1], scale_factor=2, mode="nearest")), 2)
        y = net.head(net.decoder(spp, feats[: net.num_laterals]))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        ref = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert _rel(out.logits, ref) <= 1e-5
        # and it is not the plain pooled network (the SPP term differs), which is why the
        # docs do not claim that
        plain = F.interpolate(net.forward_features(F.avg_pool2d(x, 2)), scale_factor=2)
        plain = F.interpolate(plain, size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert _rel(out.logits, plain) > 1e-6


def test_mixed_mask_runs_and_reports_policy_outputs():
    net = _net("swiftnet_rn18")
    mask = torch.tensor([[[True, False, False, True], [False, True, False, False]]])
    model = SegBlocksModel(net, FixedMask(mask), block_size=64).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 256))
    assert torch.equal(out.grid, mask)
    assert out.hr_fraction.item() == pytest.approx(3 / 8)
    learned = create_segblocks("swiftnet_rn18", "learned", 64, num_classes=5).train()
    out = learned(torch.randn(2, 3, 128, 256))
    assert out.probs.shape == out.log_probs.shape == out.grid.shape == (2, 2, 4)
    out.logits.mean().backward()  # differentiable end to end in training mode


def test_padding_to_block_and_crop():
    net = _net("swiftnet_rn18")
    model = SegBlocksModel(net, "random", block_size=64, tau=0.5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 100, 200))
    assert out.logits.shape == (1, 5, 100, 200)
    assert out.grid.shape == (1, 2, 4)
    strict = SegBlocksModel(net, "all_hr", block_size=64, pad_to_block=False)
    with pytest.raises(ValueError, match="128x256"):
        strict(torch.randn(1, 3, 100, 200))


def test_bad_arguments():
    net = _net("swiftnet_rn18")
    with pytest.raises(ValueError, match="multiple of 64"):
        SegBlocksModel(net, "all_hr", block_size=96)
    model = SegBlocksModel(net, "all_hr", block_size=64)
    with pytest.raises(ValueError, match="grid"):
        model(torch.randn(1, 3, 128, 256), mask=torch.ones(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="N, 3, H, W"):
        model(torch.randn(3, 128, 256))


def test_run_blocks_gives_stride4_logits_of_forward():
    net = _net("swiftnet_rn18")
    model = SegBlocksModel(net, "all_hr", block_size=64).eval()
    x = torch.randn(1, 3, 128, 256)
    mask = torch.tensor([[[True, False, False, True], [False, True, False, False]]])
    with torch.no_grad():
        logits = model.run_blocks(model.sample(x, mask))
        out = model(x, mask=mask)
    assert logits.shape == (1, 5, 32, 64)
    up = F.interpolate(logits, size=(128, 256), mode="bilinear", align_corners=False)
    assert torch.equal(up, out.logits)


@pytest.mark.parametrize("policy", ["learned", "random", "all_hr"])
def test_empty_batch_is_a_clear_error(policy):
    kw = {"tau": 0.5} if policy == "random" else {}
    model = SegBlocksModel(_net("swiftnet_rn18"), policy, block_size=64, **kw).eval()
    with pytest.raises(ValueError, match=r"empty batch: image shape \(0, 3, 128, 128\)"):
        model(torch.zeros(0, 3, 128, 128))


@pytest.mark.parametrize("input_pad", ["replicate", "zeros"])
def test_dense_policy_is_the_plain_network_on_the_padded_input(input_pad):
    from segblocks.measuring.macs import count_macs_dense, count_macs_segblocks

    net = _net("swiftnet_rn18")
    x = torch.randn(2, 3, 100, 200)
    mode = "replicate" if input_pad == "replicate" else "constant"
    xp = F.pad(x, (0, 56, 0, 28), mode=mode)
    dense = SegBlocksModel(net, "dense", block_size=64, input_pad=input_pad).eval()
    blocks = SegBlocksModel(net, "all_hr", block_size=64, input_pad=input_pad).eval()
    with torch.no_grad():
        ref = F.interpolate(net(xp), size=(128, 256), mode="bilinear")[:, :, :100, :200]
        out = dense(x)
        out_blocks = blocks(x)
    assert out.grid.all() and out.probs is not None and out.log_probs is None
    assert torch.allclose(out.logits, ref, atol=1e-5)
    assert _rel(out_blocks.logits, out.logits) < 1e-5  # all-HR blocks == dense, same padding
    assert count_macs_segblocks(dense, xp[:1]).total == count_macs_dense(net, xp[:1]).total


def test_dense_policy_at_reduced_scale():
    from segblocks.measuring.macs import count_macs_dense, count_macs_segblocks

    net = _net("swiftnet_rn18")
    model = SegBlocksModel(net, "dense", block_size=64, scale=0.5).eval()
    x = torch.randn(1, 3, 128, 256)
    small = F.interpolate(x, size=(64, 128), mode="bilinear", antialias=True)
    with torch.no_grad():
        ref = F.interpolate(net(small), size=(128, 256), mode="bilinear")
        out = model(x)
    assert out.logits.shape == (1, 5, 128, 256)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    assert count_macs_segblocks(model, x).total == count_macs_dense(net, small).total
    with pytest.raises(ValueError, match="scale 0 must be in"):
        SegBlocksModel(net, "dense", block_size=64, scale=0)
    with pytest.raises(ValueError, match="input_pad 'reflect'"):
        SegBlocksModel(net, "dense", block_size=64, input_pad="reflect")


def test_dense_policy_at_reduced_scale_in_bfloat16():
    net = _net("swiftnet_rn18").to(torch.bfloat16)
    model = SegBlocksModel(net, "dense", block_size=64, scale=0.75).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 256, dtype=torch.bfloat16))
    assert out.logits.dtype == torch.bfloat16 and out.logits.shape == (1, 5, 128, 256)
