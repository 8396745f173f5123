"""The data of the callback tests that train against PyTorch's own loop: y = 2 x1 - x2 plus
noise, in N_BATCHES batches of 8 samples, for training and for validation."""

import torch

N_BATCHES = 3


def batches(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(x, x @ torch.tensor([[2.0], [-1.0]]) + torch.randn(8, 1, generator=g))
            for x in (torch.randn(8, 2, generator=g) for _ in range(N_BATCHES))]


TRAIN, VALID = batches(1), batches(2)
