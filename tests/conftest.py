"""Shared test setup: deterministic, single-threaded torch so tests are fast and repeatable."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
