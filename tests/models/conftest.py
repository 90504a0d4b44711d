import pytest
import torch

# Small models, many small ops: one intra-op thread keeps the suite fast on a busy 2-core box
# and the numerics reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state (tests are deterministic and order-free)."""
    torch.manual_seed(0)
    yield
