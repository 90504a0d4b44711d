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
    with pytest.warns(UserWarning, match="notes.txt"), pytest.raises(ValueError, match="c_bad.png"):
        _run(model, folder, tmp_path / "out")


def test_skip_bad_writes_outputs(model, folder, tmp_path):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="notes.txt"), pytest.warns(UserWarning, match="c_bad"):
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


# ------------------------------------------------------------------------- issue 9 probes
def _notes(model, inputs, out, **kw):
    notes = []
    res = _run(model, inputs, out, report=notes.append, **kw)
    return res, notes


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_grayscale_is_scaled(model, mode, tmp_path):
    from segblocks.evaluation.infer import read_image

    rng = np.random.default_rng(0)
    img8 = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    d = tmp_path / "in"
    d.mkdir()
    if mode == "I;16":
        Image.fromarray(img8.astype(np.uint16) * 257).save(d / "x.png")  # 16-bit PNG
        name = "x.png"
    elif mode == "I":
        Image.fromarray(img8.astype(np.int32) * 257, mode="I").save(d / "x.tif")
        name = "x.tif"
    else:
        Image.fromarray(img8.astype(np.float32) / 255, mode="F").save(d / "x.tif")
        name = "x.tif"
    with Image.open(d / name) as im:
        assert im.mode == mode
    expected = torch.from_numpy(img8).float().div(255).expand(3, -1, -1)
    assert torch.allclose(read_image(d / name), expected, atol=1e-6)
    res, notes = _notes(model, d, tmp_path / "out")
    assert len(res) == 1 and res[0]["note"] and "scaled to 8 bits" in notes[0]


def test_collisions_are_refused_before_writing(model, folder, tmp_path):
    from segblocks.errors import InputError

    (folder / "c_bad.png").unlink()
    Image.open(folder / "a.png").save(folder / "a.webp")
    with pytest.raises(InputError, match="a.png and a.webp would both write a_seg.png"):
        _notes(model, folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # outputs written into the input folder must not overwrite inputs on a second run
    (folder / "a.webp").unlink()
    _notes(model, folder, folder)
    with pytest.raises(InputError, match="would overwrite an input image"):
        _notes(model, folder, folder)


def test_formats_pillow_reads_and_skipped_files(model, folder, tmp_path):
    (folder / "c_bad.png").unlink()
    Image.open(folder / "a.png").save(folder / "d.webp")
    Image.open(folder / "a.png").save(folder / "e.bmp")
    res, notes = _notes(model, folder, tmp_path / "out")
    assert [r["input"].rsplit("/", 1)[-1] for r in res] == ["a.png", "b.jpg", "d.webp", "e.bmp"]
    assert notes == ["skipped 1 file(s) that are not images Pillow reads: notes.txt"]


def test_empty_input_and_file_as_output(model, folder, tmp_path):
    from segblocks.errors import InputError

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images")
    with pytest.raises(InputError, match="no images in"):
        _notes(model, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        _notes(model, folder / "a.png", tmp_path / "file")


def test_palettes_per_dataset():
    from segblocks.data.palettes import (
        CAMVID_PALETTE,
        CITYSCAPES_PALETTE,
        generic_palette,
        palette_for,
    )

    assert palette_for("procedural", 9)[0] == [tuple(c) for c in PALETTE]
    assert palette_for("cityscapes", 19)[0] == CITYSCAPES_PALETTE
    pal, names, what = palette_for("camvid", 11)
    assert pal == CAMVID_PALETTE and names[0] == "Sky" and what == "camvid palette"
    pal, names, what = palette_for("mapillary", 65)
    assert pal == generic_palette(65) and names[-1] == "Ego Vehicle" and what == "generic palette"
    pal, names, _ = palette_for("cityscapes", 20)  # another class count: generic, no names
    assert len(set(pal)) == 20 and names[19] == "class_19"
    assert (0, 0, 0) not in generic_palette(255) and len(set(generic_palette(255))) == 255


def test_skip_bad_without_a_readable_image_writes_nothing(model, tmp_path, capsys):
    """No readable image: no output folder, no legend.csv (issue 18)."""
    from segblocks.cli import main

    d = tmp_path / "bad"
    d.mkdir()
    (d / "x.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="x.png"):
        assert _run(model, d, out, skip_bad=True, class_names=["a"] * 9) == []
    assert not out.exists()
    assert main(["infer", str(d), str(out), "--skip-bad", "--block-size", "64"]) == 2
    assert "nothing written" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="not a writable folder"):
        _run(model, d, tmp_path / "bad" / "x.png" / "sub")
