"""The committed CamVid checkpoints (results/camvid.md) rebuild their models from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segblocks.data.datasets import CamVid
from segblocks.models.segblocks_model import SegBlocksModel

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "checkpoints" / "camvid").glob("*.pt"))


@pytest.mark.skipif(not FILES, reason="no checkpoints/camvid/*.pt in this checkout")
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_checkpoint_rebuilds_its_model(path):
    ck = torch.load(path, weights_only=True)
    floats = [v for v in ck["state_dict"].values() if v.is_floating_point()]
    assert all(v.dtype == torch.float16 for v in floats), "committed in half precision"
    assert path.stat().st_size < 12 * 2**20
    model = SegBlocksModel.from_checkpoint(path)
    assert model.dataset == "camvid" and model.class_names == list(CamVid.classes)
    assert model.block_size == 32
    torch.manual_seed(0)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 360, 480))
    assert out.logits.shape == (1, 11, 360, 480) and torch.isfinite(out.logits).all()
    assert out.grid.shape == (1, 12, 15)
