"""Fixtures for the callback tests."""

import pytest
import torch

from fluxpy.callbacks import metrics

#: The ways a tensor's value reaches the host (each a sync on an accelerator).
HOST_READS = ("item", "tolist", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def host_reads(monkeypatch):
    """A list that gets the method name of every read of a tensor's value to the host.

    `Metrics` treats CPU values as it treats accelerator ones here (it reads CPU values every
    step, where that is free), so the reads counted are those that would sync a device.
    """
    monkeypatch.setattr(metrics, "READ_CPU_VALUES", False)
    reads = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads
