"""Data sharding for distributed data-parallel training: each rank gets its own part.

`shard(data, training=..., rank=..., world_size=..., seed=...)` returns what one rank iterates:

- A `DataLoader` over a map-style dataset with its default sampler (sequential or random) is
  rebuilt the way Accelerate and Lightning do it: the same dataset, `batch_size`,
  `collate_fn`, `num_workers`, `pin_memory`, `drop_last` (and the other loader settings), with
  a new sampler.
  - Training: a `DistributedSampler`, shuffling if the loader shuffled. It pads the dataset
    (repeating a few samples) to a multiple of the world size, so every rank takes the same
    number of steps, which DDP's gradient all-reduce needs. Call its `set_epoch(n)` each epoch
    (the learner does) so the shuffle differs per epoch and agrees across ranks.
  - Validation: an `UnpaddedDistributedSampler`, never shuffled and never padded: every
    sample is seen exactly once over all ranks, so the reduced validation loss is the loss of
    the whole set. Ranks may get one sample (and so one batch) more than others.
- A list or tuple of batches is sharded by taking every `world_size`-th batch, starting at
  the rank. For training the last `len % world_size` batches are dropped so that every rank
  takes the same number of steps; validation keeps them all.
- A loader that is already sharded (its sampler is a `DistributedSampler` or an
  `UnpaddedDistributedSampler`) is kept as it is.
- Anything else (an `IterableDataset`, a custom sampler or batch sampler, a generator) cannot
  be sharded from outside: it is kept as it is with a warning, and must yield each rank's own
  part, with the same number of training batches on every rank.

Extending:
    Give the learner data that is already sharded (for example a `DataLoader` with your own
    `DistributedSampler`) and it is used unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch.utils.data as tud

__all__ = ["UnpaddedDistributedSampler", "shard"]


class UnpaddedDistributedSampler(tud.Sampler[int]):
    """Indices `rank, rank + world_size, ...` of a dataset of `size` items: no padding, no
    shuffling, so the shards of all ranks together hold every index exactly once."""

    def __init__(self, size: int, world_size: int, rank: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.size, self.world_size, self.rank = size, world_size, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def shard(data: Any, *, training: bool, rank: int, world_size: int, seed: int = 0) -> Any:
    """This rank's part of `data` (see the module docstring for what each kind becomes).

    Args:
        training: shard for a training phase (equal step counts on all ranks, shuffling
            carried over) rather than for validation (every sample exactly once).
        seed: the shuffling seed of a training `DistributedSampler`; the same on every rank.
    """
    if isinstance(data, (list, tuple)):
        return _shard_batches(data, training, rank, world_size)
    if isinstance(data, tud.DataLoader):
        return _shard_loader(data, training, rank, world_size, seed)
    _warn_unsharded(data, f"fluxpy shards DataLoaders and lists of batches, not "
                          f"{type(data).__name__}")
    return data


def _shard_batches(batches: list | tuple, training: bool, rank: int, world_size: int) -> list:
    n = len(batches)
    if training:
        n -= n % world_size
    if n < world_size:
        raise ValueError(
            f"the {'training' if training else 'validation'} data is a list of "
            f"{len(batches)} batches: too few for {world_size} ranks to get one each. Give "
            "at least as many batches as ranks."
        )
    return list(batches[rank:n:world_size])


def _shard_loader(loader: tud.DataLoader, training: bool, rank: int, world_size: int,
                  seed: int) -> tud.DataLoader:
    sampler = loader.sampler
    if isinstance(sampler, (tud.DistributedSampler, UnpaddedDistributedSampler)):
        return loader
    if isinstance(loader.dataset, tud.IterableDataset):
        _warn_unsharded(loader, "its dataset is an IterableDataset, which has no indices to "
                                "split")
        return loader
    custom_batches = loader.batch_sampler is not None and type(loader.batch_sampler) is not (
        tud.BatchSampler)
    if custom_batches or not isinstance(sampler, (tud.SequentialSampler, tud.RandomSampler)):
        _warn_unsharded(loader, f"it has a custom sampler ({type(sampler).__name__}) or batch "
                                "sampler, which fluxpy cannot split without changing it")
        return loader
    size = len(loader.dataset)
    if training:
        new: tud.Sampler = tud.DistributedSampler(
            loader.dataset, num_replicas=world_size, rank=rank,
            shuffle=isinstance(sampler, tud.RandomSampler), seed=seed,
        )
    else:
        new = UnpaddedDistributedSampler(size, world_size, rank)
    smallest = size // world_size
    batches = (smallest if loader.batch_size is None else
               smallest // loader.batch_size if loader.drop_last else
               math.ceil(smallest / loader.batch_size))
    if batches == 0:
        raise ValueError(
            f"the {'training' if training else 'validation'} DataLoader has {size} samples"
            f"{f' in batches of {loader.batch_size}' if loader.batch_size else ''}"
            f"{' with drop_last=True' if loader.drop_last else ''}: split over {world_size} "
            "ranks, some rank would get no batch. Use more data, a smaller batch_size or "
            "drop_last=False."
        )
    return _rebuild(loader, new)


def _rebuild(loader: tud.DataLoader, sampler: tud.Sampler) -> tud.DataLoader:
    """`loader` with `sampler`, every other setting carried over."""
    settings: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "collate_fn": loader.collate_fn,
        "num_workers": loader.num_workers,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        settings["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        settings["in_order"] = loader.in_order
    try:
        return type(loader)(loader.dataset, sampler=sampler, **settings)
    except TypeError as exc:
        exc.add_note(
            f"fluxpy rebuilds DataLoaders with a DistributedSampler under DDP; "
            f"{type(loader).__name__} does not take DataLoader's arguments. Give it a "
            "DistributedSampler yourself, or pass distributed=False to fp.Learner."
        )
        raise


def _warn_unsharded(data: Any, why: str) -> None:
    warnings.warn(
        f"fluxpy cannot shard {type(data).__name__} across ranks ({why}), so it is used as it "
        "is: make it yield this rank's part, with the same number of training batches on "
        "every rank (else DDP waits forever for the rank with fewer).",
        stacklevel=3,
    )
