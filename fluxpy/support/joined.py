"""Validation and prediction under FSDP: every rank runs as many forward passes.

Under FSDP a forward pass is a collective: each sharded module gathers its parameters from
every rank. A rank with fewer batches than another would leave that one waiting forever in
its next forward. The validation shards of `fit` are unpadded (each example counted once, so
the metrics are exact: 13 examples in batches of 3 give one rank 3 batches and the other 2),
and `predict` and `evaluate` take each rank's own data, so the ranks' numbers of batches can
differ.

`Joined(data, learner)` is `data` as such a phase iterates it: before each step the ranks
agree whether any of them still has a batch (one small CPU all-reduce per step); a rank whose
batches are over runs the model on the inputs of its last step meanwhile (outputs dropped, no
events, nothing counted), until no rank has a batch left. A step that a handler cancelled
before its forward pass (`CancelStepException` at `StepBegin`, on one rank) gets that forward
pass all the same, so the ranks stay in step. A rank that has had no batch at all cannot
join: it raises an error, and torchrun ends the other ranks.

Each step of such a phase must make one forward pass, as the built-in step does: a custom
validation step that makes several must run as many on every rank itself.

Training needs none of this: its shards hold the same number of batches on every rank
(`fluxpy.support.sharding`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .distributed import any_rank, rank

__all__ = ["Joined"]

_END = object()


class Joined:
    """`data`, iterated in step with the other ranks (see the module docstring)."""

    def __init__(self, data: Any, learner: Any) -> None:
        self.data = data
        self.learner = learner

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.data)
        inputs = None  # the model's inputs at this rank's last step
        while True:
            batch = next(batches, _END)
            if not any_rank(batch is not _END):
                return
            if batch is not _END:
                yield batch
                step = vars(self.learner.batch)
                inputs = step.get("xs", inputs)
                if "preds" not in step and inputs is not None:  # a handler cancelled the step
                    self.learner.model(inputs)                   # before its forward pass
            elif inputs is None:
                raise RuntimeError(
                    f"rank {rank()} has no batch in this epoch while another rank has some: "
                    "under FSDP every forward pass is a collective, so every rank needs at "
                    "least one batch to run the forward passes the others run. Give every "
                    "rank data (for validation: at least one batch per rank)."
                )
            else:
                self.learner.model(inputs)
