import numpy as np
import pytest
import torch
from PIL import Image

from segblocks.data import PALETTE
from segblocks.data.transforms import Normalize
from segblocks.evaluation.infer import infer
from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=9)
    return SegBlocksModel(net, policy="random", tau=0.5, block_size=64).eval()


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)).save(d / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)).save(d / "b.jpg")
    (d / "c_bad.png").write_bytes(b"this is not a png")
    (d / "notes.txt").write_text("ignored")
    return d


def _run(model, inputs, out, **kw):
    return infer(model, inputs, out, normalize=Normalize(), palette=PALETTE, **kw)


def test_bad_image_raises_naming_file(model, folder, tmp_path):
    with pytest.raises(ValueError, match="c_bad.png"):
        _run(model, folder, tmp_path / "out")


def test_skip_bad_writes_outputs(model, folder, tmp_path):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="c_bad.png"):
        res = _run(model, folder, out, skip_bad=True)
    assert [r["input"].rsplit("/", 1)[-1] for r in res] == ["a.png", "b.jpg"]
    sizes = {"a": (160, 96), "b": (128, 64)}  # (W, H): not a multiple of 64 -> padded inside
    for name, size in sizes.items():
        for kind in ("seg", "hr"):
            p = out / f"{name}_{kind}.png"
            assert p.exists()
            with Image.open(p) as im:
                assert im.format == "PNG" and im.size == size and im.mode == "RGB"
    for r in res:
        assert 0.0 <= r["hr_fraction"] <= 1.0
    # segmentation colours come from the palette
    seg = np.asarray(Image.open(out / "a_seg.png")).reshape(-1, 3)
    assert {tuple(c) for c in np.unique(seg, axis=0)} <= set(PALETTE)
    assert not (out / "c_bad_seg.png").exists()


def test_single_file_and_missing(model, folder, tmp_path):
    res = _run(model, folder / "a.png", tmp_path / "one")
    assert len(res) == 1 and (tmp_path / "one" / "a_hr.png").exists()
    with pytest.raises(FileNotFoundError, match="nope.png"):
        _run(model, folder / "nope.png", tmp_path / "x")


def test_dense_network(folder, tmp_path):
    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=9)
    res = _run(net, folder / "b.jpg", tmp_path / "dense")
    assert res[0]["hr_fraction"] == 1.0
    assert (tmp_path / "dense" / "b_seg.png").exists()
