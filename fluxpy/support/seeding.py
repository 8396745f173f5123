"""`seed_everything(seed)`: one seed for every random number generator a run draws from."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> int:
    """Seed Python's `random`, NumPy's global generator and torch (the CPU and every CUDA
    device, when there is one) with `seed`; returns it.

    Then a run that draws the same numbers in the same order repeats itself: weights
    initialised after the call, shuffled DataLoaders (their workers are seeded from torch),
    dropout. It does not make nondeterministic kernels deterministic; for that see
    `torch.use_deterministic_algorithms`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed_everything(seed={seed!r}): the seed is an int in [0, 2**32) "
                         "(NumPy's range)")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator: the CPU's and each CUDA device's
    return seed
