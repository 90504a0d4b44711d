import pytest
import torch

# Small tensors only: one intra-op thread keeps the tests fast and reproducible on a busy
# machine (see tests/blocks/conftest.py).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
