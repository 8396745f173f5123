"""A tiny learner for testing callbacks: learn `y = coeff * x` with one parameter.

    learner = fluxpy.testing.test_learner(MyCallback())
    learner.fit(5)
    assert abs(learner.model.coeff.item() - 3) < 0.1

It runs on the CPU in milliseconds, converges in a few epochs with SGD (lr 1e-3) on an L1
loss, and is deterministic for a given `seed`. Default callbacks are off unless asked for.
Strict mode is on (`strict=False` turns it off): a handler that changes, in place, a tensor,
module or optimizer its callback only declared `Read()` for fails the test.
"""

from __future__ import annotations

from typing import Any

import torch

from .core.callback import Callback
from .learner import Learner

__all__ = ["CoeffModel", "test_batches", "test_learner"]


class CoeffModel(torch.nn.Module):
    """`x -> x * coeff` with a single trainable coefficient."""

    def __init__(self, coeff: float) -> None:
        super().__init__()
        self.coeff = torch.nn.Parameter(torch.tensor([float(coeff)]))

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        return xs * self.coeff


Batches = list[tuple[torch.Tensor, torch.Tensor]]


def test_batches(n: int = 16, coeff: float = 3.0, batch_size: int = 8,
                 generator: torch.Generator | None = None) -> Batches:
    """`n` batches of `(xs, coeff * xs)` with `xs` drawn from 1..100."""
    batches = []
    for _ in range(n):
        xs = torch.randint(1, 101, (batch_size,), generator=generator).float()
        batches.append((xs, xs * coeff))
    return batches


def test_learner(*callbacks: Callback, n_batches: int = 16, coeff: float = 3.0,
                 batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                 use_default_callbacks: bool = False, **kwargs: Any) -> Learner:
    """A `Learner` on the `y = coeff * x` problem; training and validation data are the same."""
    generator = torch.Generator().manual_seed(seed)
    data = test_batches(n_batches, coeff, batch_size, generator)
    start = torch.rand((), generator=generator).item()
    model = CoeffModel(start)
    kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=lr))
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("strict", True)  # tests of a callback also check what it only reads
    return Learner(model, torch.nn.functional.l1_loss, data=(data, data), callbacks=callbacks,
                   use_default_callbacks=use_default_callbacks, **kwargs)


# Not tests themselves, though pytest would collect the names when imported into a test module.
test_learner.__test__ = False  # type: ignore[attr-defined]
test_batches.__test__ = False  # type: ignore[attr-defined]
