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
events, nothing counted), until no rank has a batch left. A step that made no forward pass
(a handler cancelled it at `StepBegin`, on one rank) gets one all the same, so the ranks stay
in step; a forward hook on the model counts them. A rank that has had no batch at all cannot
join: it raises an error, and torchrun ends the other ranks.

A rank whose batches are over makes one forward pass per step of the others, as the built-in
step does: a custom validation step that makes several per step must keep the ranks in step
itself.

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
        model = self.learner.model
        forwards = 0

        def count(module: Any, args: Any) -> None:
            nonlocal forwards
            forwards += 1

        hook = model.register_forward_pre_hook(count)
        try:
            batches = iter(self.data)
            inputs = None  # the model's inputs at this rank's last step
            while True:
                batch = next(batches, _END)
                if not any_rank(batch is not _END):
                    return
                if batch is not _END:
                    before = forwards
                    yield batch
                    inputs = vars(self.learner.batch).get("xs", inputs)
                    if forwards == before and inputs is not None:  # cancelled before it
                        model(inputs)
                elif inputs is None:
                    raise RuntimeError(
                        f"rank {rank()} has no batch in this epoch while another rank has "
                        "some: under FSDP every forward pass is a collective, so every rank "
                        "needs at least one batch to run the forward passes the others run. "
                        "Give every rank data (for validation: at least one batch per rank)."
                    )
                else:
                    model(inputs)
        finally:
            hook.remove()
