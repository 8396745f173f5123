"""Fixtures of the distributed tests that run in this one process."""

import pytest
import torch.distributed as dist


@pytest.fixture
def world_of_one(monkeypatch):
    """A real one-process gloo group, as `torchrun --nproc_per_node=1` would give."""
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}.items():
        monkeypatch.setenv(name, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
