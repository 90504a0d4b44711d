import pytest
import torch

# The block tests run many tiny ops; with 2 intra-op threads every parallel region pays a
# thread wake-up (milliseconds when the cores are busy with anything else), which dominated the
# runtime. One thread keeps the suite fast and its numerics reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state (tests are deterministic and order-free)."""
    torch.manual_seed(0)
    yield
