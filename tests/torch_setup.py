"""One intra-op thread and a seeded RNG per test, for the conftest.py of the training,
evaluation and measuring tests (small tensors only: one thread keeps them fast and
reproducible on a busy machine; see tests/blocks/conftest.py)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seed_each_test():
    torch.manual_seed(0)
    yield
