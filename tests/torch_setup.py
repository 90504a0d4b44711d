"""One intra-op thread and a seeded RNG per test, for the conftest.py of the training,
evaluation and measuring tests (small tensors only: one thread keeps them fast and
reproducible on a busy machine; see tests/blocks/conftest.py), and a free port for the
torch.distributed tests."""

import socket

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seed_each_test():
    torch.manual_seed(0)
    yield


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (``MASTER_PORT`` of a 2-process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
