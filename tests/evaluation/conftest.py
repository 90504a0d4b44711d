import pytest
import torch

from segblocks.data import ProceduralStreets
from segblocks.models import create_model

from ..torch_setup import seed_each_test  # noqa: F401  (one thread, autouse seed)


@pytest.fixture(scope="module")
def net():
    """A fixed random SwiftNet-RN18 for the 9 procedural classes."""
    torch.manual_seed(0)
    return create_model("swiftnet_rn18", num_classes=9).eval()


@pytest.fixture(scope="module")
def data():
    """4 procedural validation images of 128 x 256."""
    return ProceduralStreets(4, 128, 256, split="val")
