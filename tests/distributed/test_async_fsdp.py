"""`Checkpointer(async_save=True)` with a model sharded by `fp.FSDP`: refused, with the fix.

Sharded checkpoints are folders every rank writes with torch.distributed.checkpoint, on the
training thread; the background writer takes one-file checkpoints only.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import fluxpy as fp


@pytest.fixture
def world_of_one(monkeypatch):
    """A real one-process gloo group, as `torchrun --nproc_per_node=1` would give."""
    for name, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "0"}.items():
        monkeypatch.setenv(name, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_async_save_with_a_sharded_model_is_refused_at_fit_begin(world_of_one, tmp_path):
    batches = [(torch.randn(4, 3), torch.randn(4, 1))] * 2
    learner = fp.Learner(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)),
                         torch.nn.functional.mse_loss, data=(batches, batches),
                         optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                         distributed=fp.FSDP(), use_default_callbacks=False,
                         callbacks=[fp.Checkpointer(tmp_path, async_save=True)])
    with pytest.raises(ValueError, match=r"Checkpointer\(async_save=True\) writes one-file "
                                         r"checkpoints in the background, and this model is "
                                         r"sharded with fp\.FSDP.*Remove async_save=True"):
        learner.fit(1)
    assert list(tmp_path.iterdir()) == []
