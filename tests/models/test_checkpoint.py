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


# ----------------------------------------------------------------- guarded loading (issue 9)
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    model = create_model("swiftnet_rn18", num_classes=3, decoder_width=16)
    return save_checkpoint(model, tmp_path_factory.mktemp("c") / "good.pt", epoch=1)


def test_bad_files_raise_one_line_errors_naming_them(small_ckpt, tmp_path):
    from segblocks.errors import CheckpointError

    data = small_ckpt.read_bytes()
    cases = {
        "truncated.pt": (data[: len(data) // 2], "truncated"),
        "empty.pt": (b"", "empty"),
        "random.pt": (bytes(range(256)) * 20, "truncated, corrupt or not a PyTorch file"),
    }
    for name, (content, what) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            load_model(tmp_path / name)
        msg = str(e.value)
        assert name in msg and what in msg and "delete it" in msg and "\n" not in msg
        assert "weights_only=False" not in msg
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="set resume=false"):
        load_checkpoint(tmp_path / "empty.pt", hint="set resume=false")
    with pytest.raises(ValueError):  # CheckpointError is a ValueError
        load_checkpoint(tmp_path / "random.pt")


def test_trusted_objects_get_the_weights_only_hint(tmp_path):
    from segblocks.errors import CheckpointError

    torch.save({"model_name": "x", "state_dict": {}, "obj": _Opaque()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError, match=r"Python objects \(.*_Opaque\).*weights_only=False"):
        load_checkpoint(tmp_path / "obj.pt")
    assert isinstance(load_checkpoint(tmp_path / "obj.pt", weights_only=False)["obj"], _Opaque)


class _Opaque:
    pass


def test_weights_of_another_model_or_class_count(small_ckpt, tmp_path):
    from segblocks.errors import CheckpointError
    from segblocks.models.checkpoint import load_state_dict_checked

    other = create_model("swiftnet_rn18", num_classes=19, decoder_width=16)
    sd = load_checkpoint(small_ckpt)["state_dict"]
    with pytest.raises(CheckpointError, match=r"head.conv.weight \(3, 16, 1, 1\) in the file"):
        load_state_dict_checked(other, sd, small_ckpt)
    effl1 = create_model("swiftnet_effl1", num_classes=3)
    with pytest.raises(CheckpointError, match=r"missing .*unexpected.*another model"):
        load_state_dict_checked(effl1, sd, small_ckpt)
    ckpt = load_checkpoint(small_ckpt)
    ckpt["model_name"] = "swiftnet_vgg"
    torch.save(ckpt, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match="cannot rebuild its model 'swiftnet_vgg'"):
        load_model(tmp_path / "renamed.pt")


def test_normal_permissions_and_stale_temp_files(tmp_path):
    import os

    from segblocks.models.checkpoint import remove_stale_temp_files

    model = create_model("swiftnet_effl1", num_classes=3)
    path = save_checkpoint(model, tmp_path / "last.pt")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # mkstemp alone gives 0600
    stale = [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".last.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / ".other.pt.y.tmp").write_bytes(b"another checkpoint's")
    assert sorted(remove_stale_temp_files(path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.y.tmp", "last.pt"]
