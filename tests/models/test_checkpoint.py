"""Checkpoints rebuild their model from the file alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segblocks.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from segblocks.models.registry import create_model


def _perturb(model: nn.Module) -> None:
    """Trained-looking weights: nothing left at its initial value."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.1)


def test_round_trip(tmp_path):
    model = create_model("swiftnet_rn18", num_classes=11, output_stride=16, decoder_width=32)
    _perturb(model)
    model.eval()
    path = save_checkpoint(model, tmp_path / "sub" / "ckpt.pth", epoch=7, miou=0.5)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pth"]  # no temp files left

    loaded = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.model_name == "swiftnet_rn18"
    assert loaded.model_config == {"num_classes": 11, "output_stride": 16, "decoder_width": 32}
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 7 and ckpt["miou"] == 0.5
    assert ckpt["model_name"] == "swiftnet_rn18"


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "ckpt.pth"
    a = create_model("swiftnet_effl1", num_classes=3)
    save_checkpoint(a, path, step=1)
    b = create_model("swiftnet_effl1", num_classes=3)
    _perturb(b)
    save_checkpoint(b, path, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 2
    for k, v in b.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    model = create_model("swiftnet_effl1", num_classes=3)
    save_checkpoint(model, path, step=1)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path, step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
    assert load_checkpoint(path)["step"] == 1


def test_pretrained_backbone_not_needed_to_load(tmp_path, monkeypatch):
    model = create_model("swiftnet_effl1", num_classes=3, pretrained_backbone=True)
    path = save_checkpoint(model, tmp_path / "c.pth")
    # Loading must not fetch weights again: the checkpoint has them all.
    import segblocks.models.swiftnet as sw

    def no_weights(trunk, name, source, *a, **k):
        assert source is False
        return None

    monkeypatch.setattr(sw, "load_backbone_weights", no_weights)
    loaded = load_model(path)
    assert loaded.model_config["pretrained_backbone"] is True
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_config_with_tuple_and_path(tmp_path):
    weights_file = tmp_path / "rn18.pth"
    torch.save(create_model("swiftnet_rn18").backbone.state_dict(), weights_file)
    model = create_model(
        "swiftnet_rn18", num_classes=3, spp_grids=(4, 2, 1), pretrained_backbone=weights_file
    )
    path = save_checkpoint(model, tmp_path / "c.pth")
    weights_file.unlink()  # not needed to load
    loaded = load_model(path)
    assert loaded.spp.grids == (4, 2, 1)
    assert loaded.model_config["pretrained_backbone"] == str(weights_file)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="create_model"):
        save_checkpoint(nn.Conv2d(1, 1, 1), tmp_path / "x.pth")
    model = create_model("swiftnet_rn18", num_classes=3)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(model, tmp_path / "x.pth", state_dict={})
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not a segblocks checkpoint"):
        load_model(tmp_path / "plain.pth")
