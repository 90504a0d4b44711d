import time

import numpy as np
import pytest
import torch

from segblocks.data import (
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    ProceduralStreets,
    block_content,
    thin_object_mask,
)
from segblocks.data.procedural import PEDESTRIAN, POLE, ROAD, SIGN, SKY

H, W = 256, 512


@pytest.fixture(scope="module")
def samples():
    ds = ProceduralStreets(8, seed=0, split="train")
    return [ds[i] for i in range(len(ds))]


def test_constants():
    assert CLASSES == (
        "sky",
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "pole",
        "sign",
        "car",
        "pedestrian",
    )
    assert NUM_CLASSES == 9
    assert IGNORE_INDEX == 255
    assert len(PALETTE) == NUM_CLASSES
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTE)
    assert len(set(PALETTE)) == NUM_CLASSES


def test_shapes_dtypes_ranges(samples):
    assert len(ProceduralStreets(8)) == 8
    for image, label in samples:
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert label.shape == (H, W) and label.dtype == torch.int64
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert label.min() >= 0 and label.max() < NUM_CLASSES
        assert torch.isfinite(image).all()


def test_other_size():
    image, label = ProceduralStreets(1, height=128, width=192)[0]
    assert image.shape == (3, 128, 192) and label.shape == (128, 192)
    assert label.min() >= 0 and label.max() < NUM_CLASSES


def test_deterministic(samples):
    ds = ProceduralStreets(8, seed=0, split="train")
    for i in (0, 5):
        image, label = ds[i]
        assert torch.equal(image, samples[i][0]) and torch.equal(label, samples[i][1])
    # negative indices wrap; out-of-range raises
    assert torch.equal(ds[-1][0], samples[7][0])
    with pytest.raises(IndexError):
        ds[8]
    # different index -> different scene
    assert not torch.equal(samples[0][0], samples[1][0])
    assert not torch.equal(samples[0][1], samples[1][1])
    # different seed -> different scene
    other = ProceduralStreets(8, seed=1)[0]
    assert not torch.equal(other[1], samples[0][1])


def test_splits_differ(samples):
    train_labels = [lab for _, lab in samples[:4]]
    for split in ("val", "test"):
        ds = ProceduralStreets(4, seed=0, split=split)
        for i in range(4):
            _, lab = ds[i]
            assert all(not torch.equal(lab, t) for t in train_labels)
    a, b = ProceduralStreets(1, split="val")[0], ProceduralStreets(1, split="test")[0]
    assert not torch.equal(a[0], b[0])
    with pytest.raises(ValueError):
        ProceduralStreets(1, split="training")


def test_every_class_appears(samples):
    seen = torch.zeros(NUM_CLASSES, dtype=torch.bool)
    for _, label in samples:
        seen |= torch.bincount(label.flatten(), minlength=NUM_CLASSES).bool()
    assert seen.all(), [c for c, s in zip(CLASSES, seen, strict=True) if not s]


def test_thin_objects_present_and_small(samples):
    for _, label in samples:
        frac = torch.bincount(label.flatten(), minlength=NUM_CLASSES).double() / label.numel()
        assert frac[POLE] > 0
        assert frac[POLE] < 0.03
        assert frac[SIGN] < 0.03
        thin = thin_object_mask(label)
        assert thin.dtype == np.bool_ and thin.shape == (H, W)
        expected = (label == POLE) | (label == SIGN) | (label == PEDESTRIAN)
        assert np.array_equal(thin, expected.numpy())
        assert 0 < thin.mean() < 0.1
        # large smooth regions exist too
        assert frac[SKY] > 0.1 and frac[ROAD] > 0.1


def test_sky_on_top(samples):
    for _, label in samples:
        top = label[: H // 10]
        assert (top == SKY).double().mean() > 0.95
        bottom = label[-H // 10 :]
        assert (bottom == SKY).sum() == 0


def test_image_has_detail_and_smooth_regions(samples):
    # not a flat colouring of the label map: noise and texture are present
    for image, label in samples:
        sky = image[:, label == SKY]
        assert sky.std(dim=1).max() > 0.005
        # the image is not constant per class (windows, wheels, markings, noise)
        road = image[:, label == ROAD]
        assert road.std(dim=1).max() > 0.01


def test_block_content(samples):
    for _, label in samples:
        bc = block_content(label, 32)
        assert set(bc) == {"thin", "only_sky_or_road"}
        for grid in bc.values():
            assert grid.shape == (H // 32, W // 32) and grid.dtype == np.bool_
        assert bc["thin"].any()
        assert bc["only_sky_or_road"].any()
        # a block cannot be both
        assert not (bc["thin"] & bc["only_sky_or_road"]).any()


def test_block_content_reference():
    label = np.full((64, 96), SKY, dtype=np.int64)
    label[40:64, :] = ROAD
    label[10, 70] = POLE  # block (0, 2)
    label[50:52, 5] = PEDESTRIAN  # block (1, 0)
    label[60:64, 40:44] = 3  # building in block (1, 1)
    label[0, 0] = IGNORE_INDEX  # ignored pixels count for neither
    bc = block_content(torch.from_numpy(label), 32)
    np.testing.assert_array_equal(bc["thin"], [[False, False, True], [True, False, False]])
    np.testing.assert_array_equal(
        bc["only_sky_or_road"], [[True, True, False], [False, False, True]]
    )
    # non-multiple sizes: edge blocks are judged on their valid pixels
    bc = block_content(label[:55, :80], 32)
    assert bc["thin"].shape == (2, 3)
    np.testing.assert_array_equal(bc["thin"], [[False, False, True], [True, False, False]])
    with pytest.raises(ValueError):
        block_content(label[None], 32)


def test_transform():
    def flip(image, label):
        return image.flip(-1), label.flip(-1)

    plain = ProceduralStreets(2, seed=3)[1]
    flipped = ProceduralStreets(2, seed=3, transform=flip)[1]
    assert torch.equal(flipped[0], plain[0].flip(-1))
    assert torch.equal(flipped[1], plain[1].flip(-1))


def test_dataloader_batches():
    loader = torch.utils.data.DataLoader(ProceduralStreets(4, height=64, width=128), batch_size=2)
    images, labels = next(iter(loader))
    assert images.shape == (2, 3, 64, 128) and labels.shape == (2, 64, 128)


def test_speed():
    ds = ProceduralStreets(3)
    ds[0]  # warm-up
    t0 = time.perf_counter()
    ds[1]
    ds[2]
    assert (time.perf_counter() - t0) / 2 < 0.2
