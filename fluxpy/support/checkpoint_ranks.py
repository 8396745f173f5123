"""What differs between the ranks in the middle of an epoch, kept per rank in a checkpoint.

Under DDP the ranks step together on their own shards, so a checkpoint taken in the middle of
a training epoch is the same on every rank but for: each callback's state (`Metrics`' running
means of the epoch), the random states (dropout), and, inside a `GradientAccumulation` group,
the gradients accumulated without DDP's all-reduce. `gather_rank_states` collects those of
every rank into the state rank 0 writes, as

    ranks       [{"callbacks": ..., "rng": ..., "grads": ...}, ...]  one per rank, in rank order
                ("grads" only while the gradients are unsynchronised)

and `own_rank_state` gives each rank loading the file a state with its own entry in place of
rank 0's. A checkpoint written by N ranks is refused by a run with another world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError
from .distributed import all_gather_object, gradients_unsynchronised, is_distributed, rank
from .distributed import world_size as current_world_size

__all__ = ["gather_rank_states", "own_rank_state"]

_PER_RANK = ("callbacks", "rng", "grads")


def gather_rank_states(learner, state: dict[str, Any]) -> dict[str, Any]:
    """`state` (this rank's `checkpoint_state`) with every rank's entry under "ranks", when it
    is a mid-epoch state under DDP; else `state` itself.

    A collective: every rank calls it at the same step (the Checkpointer's save points are).
    """
    if not is_distributed() or "position" not in state:
        return state
    mine = {"callbacks": state["callbacks"], "rng": state["rng"]}
    if gradients_unsynchronised(learner.model):
        mine["grads"] = _on_cpu(state["grads"])
    return {**state, "ranks": all_gather_object(mine)}


def own_rank_state(state: dict[str, Any], file: Path) -> dict[str, Any]:
    """`state` with this rank's entry of "ranks" in place of rank 0's parts (unchanged when
    it has none); a `CheckpointError` when it was written by another number of ranks."""
    ranks = state.get("ranks")
    if ranks is None:
        return state
    if not isinstance(ranks, list) or not all(
            isinstance(entry, dict) and {"callbacks", "rng"} <= set(entry)
            and set(entry) <= set(_PER_RANK) for entry in ranks):
        raise CheckpointError(file, "is damaged: its 'ranks' entry is not one state per rank.",
                              "ranks")
    size = current_world_size() if is_distributed() else 1
    if len(ranks) != size:
        raise CheckpointError(
            file, f"was written in the middle of an epoch by {len(ranks)} ranks, and this run "
            f"has {size} rank{'s' if size != 1 else ''}: each rank resumes its own shard and "
            f"state. Resume it with {len(ranks)} ranks, or load an epoch-end checkpoint "
            "(epoch-NNNN.pt).", "ranks")
    own = ranks[rank() if is_distributed() else 0]
    return {**state, **own}


def _on_cpu(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: grad.detach().to("cpu", copy=True) for name, grad in grads.items()}
