"""Dataset loaders on tiny generated fixtures (plus real CamVid if it is present)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segblocks.data.datasets import (
    CITYSCAPES_LABELID_TO_TRAINID,
    CamVid,
    Cityscapes,
    MapillaryVistas,
    SegmentationDataset,
)

H, W = 6, 8


def _rgb(seed: int, h: int = H, w: int = W) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _gray(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr.astype(np.uint8), "L")


def _camvid_label(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 12, (h, w), dtype=np.uint8)  # 0..11


def make_camvid(root: Path, n: int = 3, splits=("train", "val")) -> Path:
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir(parents=True)
        for i in range(n):
            _rgb(i).save(root / split / f"f{i:03d}.png")
            _gray(_camvid_label(i)).save(root / f"{split}annot" / f"f{i:03d}.png")
    return root


def make_cityscapes(root: Path, label_ids: np.ndarray) -> Path:
    for city, stems in {"aachen": ["aachen_000000_000019"], "bonn": ["bonn_000001_000019"]}.items():
        (root / "leftImg8bit" / "train" / city).mkdir(parents=True)
        (root / "gtFine" / "train" / city).mkdir(parents=True)
        for stem in stems:
            _rgb(1).save(root / "leftImg8bit" / "train" / city / f"{stem}_leftImg8bit.png")
            _gray(label_ids).save(root / "gtFine" / "train" / city / f"{stem}_gtFine_labelIds.png")
            # distractor files that must be ignored
            _gray(label_ids).save(root / "gtFine" / "train" / city / f"{stem}_gtFine_color.png")
    return root


def make_mapillary(root: Path, h: int = 12, w: int = 16) -> Path:
    for d in ("training", "validation"):
        (root / d / "images").mkdir(parents=True)
        (root / d / "v1.2" / "labels").mkdir(parents=True)
        for i in range(2):
            _rgb(i, h, w).save(root / d / "images" / f"img{i}.jpg", quality=95)
            lab = np.zeros((h, w), dtype=np.uint8)
            lab[:, : w // 2] = 64
            lab[: h // 2, w // 2 :] = 65  # unlabeled
            im = Image.fromarray(lab, "P")
            im.putpalette([v % 256 for v in range(768)])
            im.save(root / d / "v1.2" / "labels" / f"img{i}.png")
    return root


# ---------------------------------------------------------------------------------------
# CamVid
# ---------------------------------------------------------------------------------------
def test_camvid_loads(tmp_path):
    ds = CamVid(make_camvid(tmp_path), "train")
    assert isinstance(ds, SegmentationDataset)
    assert len(ds) == 3 and ds.num_classes == 11 and ds.ignore_index == 255
    assert ds.classes[0] == "Sky" and ds.classes[-1] == "Bicyclist"
    img, lab = ds[1]
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert lab.shape == (H, W) and lab.dtype == torch.int64
    raw = _camvid_label(1)
    expected = np.where(raw == 11, 255, raw)
    assert (raw == 11).any()
    np.testing.assert_array_equal(lab.numpy(), expected)
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy() * 255, np.asarray(_rgb(1)), atol=1e-3)
    assert len(CamVid(tmp_path, "val")) == 3


def test_camvid_transform_applied(tmp_path):
    calls = []

    def t(image, label):
        calls.append((image.shape, label.dtype))
        return image * 0, label.clone().fill_(7)

    img, lab = CamVid(make_camvid(tmp_path), "train", transform=t)[0]
    assert calls == [((3, H, W), torch.int64)]
    assert img.abs().sum() == 0 and (lab == 7).all()


def test_camvid_missing_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainannot"):
        CamVid(tmp_path / "nope", "train")
    make_camvid(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        CamVid(tmp_path, "val")
    with pytest.raises(ValueError, match="split"):
        CamVid(tmp_path, "bogus")


def test_empty_split_lists_layout(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        CamVid(tmp_path, "train")


def test_unpaired_files_named(tmp_path):
    make_camvid(tmp_path)
    _rgb(9).save(tmp_path / "train" / "lonely_image.png")
    _gray(_camvid_label(9)).save(tmp_path / "trainannot" / "lonely_label.png")
    with pytest.raises(ValueError, match="lonely_image.png") as ei:
        CamVid(tmp_path, "train")
    assert "lonely_label.png" in str(ei.value)


def test_unreadable_image_raises_naming_file(tmp_path):
    make_camvid(tmp_path)
    bad = tmp_path / "train" / "f001.png"
    bad.write_bytes(b"not a png at all")
    ds = CamVid(tmp_path, "train")
    ds[0]
    with pytest.raises(OSError, match="f001.png"):
        ds[1]


def test_unreadable_image_skipped_at_construction(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train" / "f001.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="f001.png"):
        ds = CamVid(tmp_path, "train", skip_bad=True)
    assert len(ds) == 2
    assert all(p.name != "f001.png" for p, _ in ds.samples)
    for i in range(len(ds)):
        ds[i]


def test_truncated_image_skipped_at_load_time(tmp_path):
    make_camvid(tmp_path)
    p = tmp_path / "train" / "f001.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # header fine, pixel data truncated
    ds = CamVid(tmp_path, "train", skip_bad=True)
    assert len(ds) == 3  # header check passes
    with pytest.warns(UserWarning, match="f001.png"):
        img, lab = ds[1]  # falls back to the next index
    np.testing.assert_array_equal(lab.numpy(), CamVid(tmp_path, "train")[2][1].numpy())
    with pytest.raises(OSError, match="f001.png"):
        CamVid(tmp_path, "train")[1]


def test_out_of_range_labels_warn_and_ignore(tmp_path):
    make_camvid(tmp_path)
    lab = _camvid_label(0)
    lab[0, :3] = 40
    lab[1, 0] = 200
    _gray(lab).save(tmp_path / "trainannot" / "f000.png")
    ds = CamVid(tmp_path, "train")
    with pytest.warns(UserWarning, match=r"4 label pixel"):
        _, out = ds[0]
    assert (out[0, :3] == 255).all() and out[1, 0] == 255
    valid = out[out != 255]
    assert valid.min() >= 0 and valid.max() < 11
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # clean sample: no warning


def test_size_mismatch_names_pair(tmp_path):
    make_camvid(tmp_path)
    _gray(_camvid_label(0, H + 2, W)).save(tmp_path / "trainannot" / "f000.png")
    with pytest.raises(ValueError, match="f000.png"):
        CamVid(tmp_path, "train")[0]


def test_rgb_label_rejected(tmp_path):
    make_camvid(tmp_path)
    _rgb(0).save(tmp_path / "trainannot" / "f000.png")
    with pytest.raises(OSError, match="f000.png"):
        CamVid(tmp_path, "train")[0]


# ---------------------------------------------------------------------------------------
# Cityscapes
# ---------------------------------------------------------------------------------------
def test_cityscapes_label_mapping(tmp_path):
    ids = np.full((6, 8), 7, dtype=np.uint8)
    ids[0, :6] = [7, 8, 26, 33, 0, 6]
    ids[1, :6] = [23, 24, 11, 9, 1, 31]
    root = make_cityscapes(tmp_path, ids)
    ds = Cityscapes(root, "train")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.classes[13] == "car"
    img, lab = ds[0]
    assert img.shape == (3, 6, 8) and img.dtype == torch.float32
    assert lab.dtype == torch.int64 and lab.shape == (6, 8)
    assert lab[0, :6].tolist() == [0, 1, 13, 18, 255, 255]
    assert lab[1, :6].tolist() == [10, 11, 2, 255, 255, 16]
    assert (lab[2:] == 0).all() and (lab[:, 6:] == 0).all()
    assert [p.parent.name for p, _ in ds.samples] == ["aachen", "bonn"]


def test_cityscapes_fallback_table():
    t = CITYSCAPES_LABELID_TO_TRAINID
    assert len(t) == 35
    train_ids = sorted(v for v in t.values() if v != 255)
    assert train_ids == list(range(19))
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        return
    for lab in labels:
        assert t[lab.id] == (255 if lab.trainId in (-1, 255) else lab.trainId)


def test_cityscapes_unknown_label_id_warns(tmp_path):
    ids = np.full((6, 8), 7, dtype=np.uint8)
    ids[0, 0] = 40
    ds = Cityscapes(make_cityscapes(tmp_path, ids), "train")
    with pytest.warns(UserWarning, match="1 label pixel"):
        _, lab = ds[0]
    assert lab[0, 0] == 255 and (lab.flatten()[1:] == 0).all()


def test_cityscapes_missing_and_unpaired(tmp_path):
    with pytest.raises(FileNotFoundError, match="gtFine"):
        Cityscapes(tmp_path, "train")
    root = make_cityscapes(tmp_path, np.full((6, 8), 7, dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(root, "val")
    (root / "gtFine" / "train" / "bonn" / "bonn_000001_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(ValueError, match="bonn_000001_000019_leftImg8bit.png"):
        Cityscapes(root, "train")


# ---------------------------------------------------------------------------------------
# Mapillary Vistas
# ---------------------------------------------------------------------------------------
def test_mapillary_resized(tmp_path):
    root = make_mapillary(tmp_path)
    ds = MapillaryVistas(root, "train", size=(24, 32))
    assert len(ds) == 2 and ds.num_classes == 65 and ds.classes[-1] == "Ego Vehicle"
    img, lab = ds[0]
    assert img.shape == (3, 24, 32) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert lab.shape == (24, 32) and lab.dtype == torch.int64
    assert set(lab.unique().tolist()) == {0, 64, 255}  # nearest: no new values
    assert (lab[:, :16] == 64).all() and (lab[:12, 16:] == 255).all() and (lab[12:, 16:] == 0).all()
    _, lab_native = MapillaryVistas(root, "val", size=None)[1]
    assert lab_native.shape == (12, 16)


def test_mapillary_missing_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="v1.2/labels"):
        MapillaryVistas(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        MapillaryVistas(tmp_path, "test")


# ---------------------------------------------------------------------------------------
# Real CamVid (skipped when the data is absent)
# ---------------------------------------------------------------------------------------
def _real_camvid() -> Path | None:
    for cand in (
        Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "camvid",
        Path("/work/shared/datasets/camvid"),
    ):
        if (cand / "train").is_dir() and (cand / "valannot").is_dir():
            return cand
    return None


def test_real_camvid():
    root = _real_camvid()
    if root is None:
        pytest.skip("real CamVid not available")
    train, val = CamVid(root, "train"), CamVid(root, "val")
    assert len(train) == 367 and len(val) == 101
    for ds in (train, val):
        # sizes from headers for every file, decoded labels for a subsample
        for img_p, lbl_p in ds.samples:
            with Image.open(img_p) as a, Image.open(lbl_p) as b:
                assert a.size == b.size == (480, 360)
        for i in range(0, len(ds), 25):
            img, lab = ds[i]
            assert img.shape == (3, 360, 480) and lab.shape == (360, 480)
            vals = set(lab.unique().tolist())
            assert vals <= set(range(11)) | {255}
