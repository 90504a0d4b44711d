import numpy as np
import pytest
import torch
from PIL import Image

from segblocks.data import PALETTE
from segblocks.evaluation.visualize import (
    colorize,
    decision_overlay,
    save_decision_figure,
    save_hr_histogram,
    save_miou_vs_gmacs,
    save_png,
)


def _check_png(path, size=None):
    assert path.exists() and path.stat().st_size > 0
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        if size is not None:
            assert im.size == size  # (W, H)
        return im.size


def test_colorize():
    lab = torch.tensor([[0, 1, 255], [8, 2, -1]])
    c = colorize(lab, PALETTE)
    assert c.dtype == np.uint8 and c.shape == (2, 3, 3)
    assert tuple(c[0, 0]) == PALETTE[0] and tuple(c[0, 1]) == PALETTE[1]
    assert tuple(c[1, 0]) == PALETTE[8]
    assert tuple(c[0, 2]) == (0, 0, 0) and tuple(c[1, 2]) == (0, 0, 0)
    with pytest.raises(ValueError):
        colorize(torch.zeros(1, 2, 2), PALETTE)


def test_decision_overlay_marks_hr_blocks():
    img = torch.full((3, 128, 256), 0.5)
    grid = torch.zeros(2, 4, dtype=torch.bool)
    grid[1, 2] = True
    ov = decision_overlay(img, grid)
    assert ov.dtype == np.uint8 and ov.shape == (128, 256, 3)
    hr = ov[64:128, 128:192].astype(int)
    lr = ov[0:64, 0:64].astype(int)
    assert (hr[..., 0] > hr[..., 1]).all()  # red tint / outline
    assert (lr[..., 0] == lr[..., 1]).all()  # LR blocks untinted (only darkened)
    assert lr.mean() < 127
    # padded input: explicit block size, grid covers more than the image
    ov2 = decision_overlay(
        torch.rand(3, 100, 200), torch.ones(1, 2, 4, dtype=torch.bool), block_size=64
    )
    assert ov2.shape == (100, 200, 3)
    # HWC uint8 input works too
    ov3 = decision_overlay(np.zeros((64, 64, 3), np.uint8), np.ones((1, 1), bool))
    assert ov3.shape == (64, 64, 3)


def test_save_files(tmp_path):
    img = torch.rand(3, 128, 256)
    pred = torch.randint(0, 9, (128, 256))
    grid = torch.rand(2, 4) > 0.5
    _check_png(save_png(tmp_path / "seg.png", colorize(pred, PALETTE)), (256, 128))
    _check_png(save_decision_figure(tmp_path / "a" / "dec.png", img, pred, grid, PALETTE))
    _check_png(save_hr_histogram(tmp_path / "hist.png", [0.1, 0.5, 0.55, 1.0]), (500, 320))
    _check_png(save_hr_histogram(tmp_path / "empty_hist.png", []))
    runs = [
        {"name": "SegBlocks tau=0.3", "gmacs": 10.0, "miou": 0.70},
        {"name": "SegBlocks tau=0.5", "gmacs": 15.0, "miou": 0.73},
        {"name": "SwiftNet", "gmacs": 25.0, "miou": 0.75},
    ]
    _check_png(save_miou_vs_gmacs(tmp_path / "fig7.png", runs), (550, 400))
    with pytest.raises(ValueError, match="miou"):
        save_miou_vs_gmacs(tmp_path / "bad.png", [{"name": "x", "gmacs": 1.0}])


def test_miou_vs_cost_skips_runs_without_a_cost(tmp_path):
    from segblocks.evaluation.visualize import save_miou_vs_cost

    runs = [
        {"name": "a", "miou": 0.5, "latency_ms": 10.0},
        {"name": "b", "miou": 0.6, "latency_ms": None},
        {"name": "c", "miou": 0.7, "latency_ms": 20.0, "group": "x"},
    ]
    p = save_miou_vs_cost(tmp_path / "l.png", runs, "latency_ms", "latency (ms)")
    assert p.stat().st_size > 1000
    with pytest.raises(ValueError, match="lacks"):
        save_miou_vs_cost(tmp_path / "m.png", [{"name": "a", "miou": 0.5}], "latency_ms", "ms")
