"""What the torchrun worker scripts of tests/distributed share: their data, a stop asked for
by one rank, and how they run their scenarios and end."""

from __future__ import annotations

import os
import sys

import attrs
import torch
import torch.distributed as dist

import fluxpy as fp
from fluxpy.support import distributed


def regression(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 3, generator=g)
    ys = xs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3 + 0.1 * torch.randn(n, 1, generator=g)
    return xs, ys


def batches(n: int, seed: int, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    xs, ys = regression(n * size, seed)
    return [(xs[i:i + size], ys[i:i + size]) for i in range(0, n * size, size)]


@attrs.define
class StopOnRankOne(fp.Callback):
    """Raises CancelFitException at StepEnd of training step `at`, on rank 1 only."""

    at: int
    steps: int = 0


@fp.on.dispatch
def _stop_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: StopOnRankOne, learner):
    cb.steps += 1
    if cb.steps == cb.at and distributed.rank() == 1:
        raise fp.CancelFitException("rank 1 asked to stop")


def exit_rank() -> None:
    """Leaves the process group and ends this rank with status 0, skipping the interpreter's
    teardown: torch's C++ destructors at exit abort now and then ("terminate called without
    an active exception") after everything was written."""
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_scenarios(scenarios: dict[str, object]) -> None:
    """Runs, on one thread, the scenarios (functions of `scenarios`, a worker's `globals()`)
    named on the command line after OUTDIR, in order, then ends this rank (`exit_rank`).
    An argument that names none is an argument of the scenario before it."""
    torch.set_num_threads(1)
    for name in sys.argv[2:]:
        if name in scenarios:
            scenarios[name]()
    exit_rank()
