"""Where a fit is inside a training epoch, so a checkpoint taken there resumes there exactly.

`learner.position` is a `Position`. The built-in training epoch iterates its data through
`Position.start_epoch`, which records what is needed to rebuild the epoch's batch order
(the data's length, batch size and, for a `DataLoader`, the random state its sampler draws
the order from, taken before the epoch's iterator is made) and keeps the iterator, so the
number of steps done is read from it when asked (`steps`), not counted per step: the loop
pays nothing per step.

A checkpoint taken during a training epoch holds `Position.state()`; `load_checkpoint` gives
it back with `Position.resume`, and the next training epoch then starts at that step:

- a list or tuple of batches: iteration starts at batch k;
- torchdata's `StatefulDataLoader` (and any DataLoader with `state_dict`/`load_state_dict`):
  its own `state_dict()` is saved and given back to it;
- a `DataLoader` over a map-style dataset (any sampler, e.g. `RandomSampler` with or
  without a `generator`, `SequentialSampler`, `DistributedSampler`): the epoch's index order
  is drawn again from the saved random state (as the uninterrupted run drew it, so the
  generators end where they would have) and the batches start at index k * batch_size. The
  dataset is not read for the skipped batches.

Other data (generators, iterators, an `IterableDataset`) cannot be resumed in the middle of
an epoch: `state()` raises `CheckpointError` naming the fix, so a mid-epoch checkpoint of
such data is refused rather than resumed differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

from ..core.errors import CheckpointError

__all__ = ["Position", "UNRESUMABLE", "generator_state_of", "mismatch"]

UNRESUMABLE = ("cannot be resumed in the middle of an epoch: fluxpy resumes a list or tuple "
               "of batches and a DataLoader over a map-style dataset. Use one of those, or "
               "checkpoint only at epoch ends (Checkpointer(folder, every=1)).")


@attrs.define(eq=False)
class Position:
    """The running training epoch: which phase of the round, and the data's state.

    Attributes:
        phase: the index, in the round's phases, of the training epoch running now; `None`
            between training epochs.
        pending: a saved position (`state()`) the next training epoch resumes from.
        generator_state: a saved state of the training DataLoader's `generator`
            (`generator_state_of`), set on it when the next training epoch begins.
        schedule: the `validate_every` schedule a loaded checkpoint saved
            (`Budget.schedule`), which the next `fit` goes on with.
        on_cut: called (no arguments) when a limit of `fit` ends a training epoch before its
            last batch, before `EpochEnd`: the `Checkpointer` takes its final checkpoint there.
    """

    phase: int | None = None
    pending: dict | None = None
    generator_state: torch.Tensor | None = None
    schedule: dict | None = None
    on_cut: list[Callable[[], None]] = attrs.field(factory=list)
    _data: Any = None
    _iterator: Any = None
    _start: int = 0
    _record: dict | None = None  # what state() returns but the steps

    @property
    def steps(self) -> int:
        """Training steps done in the running epoch (the current one included at `StepEnd`)."""
        it = self._iterator
        if it is None:
            return 0
        if self._record["kind"] is None:
            self.state()  # raises: the steps of such data are not counted
        if hasattr(it, "_num_yielded"):  # a DataLoader's iterator
            return self._start + it._num_yielded
        return self._record["length"] - it.__length_hint__()  # a list's iterator

    def start_epoch(self, data: Any) -> Iterator[Any]:
        """The iterator a training epoch over `data` runs on: from the pending position if
        there is one (then checked against `data`), else from the start."""
        pending, self.pending = self.pending, None
        saved, self.generator_state = self.generator_state, None
        if saved is not None and generator_state_of(data) is not None:
            data.generator.set_state(saved)
        self._data, self._start = data, 0
        self._record = _record(data)
        if pending is not None:
            problem = mismatch(pending, data)
            if problem:
                raise CheckpointError("the checkpoint", problem, "position")
            self._start = 0 if pending["kind"] == "stateful" else pending["steps"]
            self._record["rng"] = pending["rng"]
            self._iterator = _resumed(data, pending)
        else:
            self._iterator = iter(data)
        return self._iterator

    def end_steps(self) -> None:
        """The training epoch's steps are over (before its `EpochEnd`, so a checkpoint there
        is an epoch-end one). A DataLoader whose batches all ran is iterated to its end (a
        limit of `fit` at the last batch stops before that): its sampler draws the rest of
        its random numbers there, and the next epoch's order depends on them."""
        record = self._record
        if record is not None and record["kind"] in ("dataloader", "stateful") and (
                self.steps == record["length"]):
            next(self._iterator, None)
        self.phase, self._data, self._iterator, self._record = None, None, None, None

    @property
    def resumed_at_end(self) -> bool:
        """Whether the running epoch was resumed after its last step (a checkpoint at the
        last step's `StepEnd`): it has no batch left, only its `EpochEnd`."""
        return self._record is not None and 0 < self._record["length"] == self._start

    @property
    def mid_epoch(self) -> bool:
        """Whether a training epoch is running (a checkpoint now is a mid-epoch one)."""
        return self.phase is not None and self._iterator is not None

    def state(self) -> dict:
        """What a checkpoint holds to resume here; `CheckpointError` for data that cannot."""
        if self._record is None or self._record.get("kind") is None:
            raise CheckpointError(
                "a checkpoint in the middle of a training epoch",
                f"the training data ({type(self._data).__name__}) {UNRESUMABLE}", "position")
        state = {**self._record, "phase": self.phase, "steps": self.steps}
        if state["kind"] == "stateful":
            state["loader"] = self._data.state_dict()
        return state


def generator_state_of(data: Any) -> torch.Tensor | None:
    """The state of a DataLoader's own `generator` (its shuffling draws from it, not from the
    global RNG a checkpoint saves anyway), or `None`."""
    generator = getattr(data, "generator", None) if isinstance(data, DataLoader) else None
    return None if generator is None else generator.get_state()


def _is_stateful(data: Any) -> bool:
    """A torchdata `StatefulDataLoader` (or another DataLoader that saves its own position)."""
    return isinstance(data, DataLoader) and callable(getattr(data, "state_dict", None)) \
        and callable(getattr(data, "load_state_dict", None))


def _record(data: Any) -> dict:
    """The data's description, and for a DataLoader the random state its order comes from
    (read now, before the epoch's iterator draws from it)."""
    if _is_stateful(data):  # it saves and restores its own position
        return {"kind": "stateful", "length": _length(data), "batch_size": data.batch_size or 0,
                "dataset_length": _length(data.dataset), "rng": None}
    if isinstance(data, (list, tuple)):
        return {"kind": "list", "length": len(data), "batch_size": 0, "dataset_length": 0,
                "rng": None}
    if (isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset)
            and data.batch_sampler is not None):
        generator = data.generator
        rng = torch.get_rng_state() if generator is None else generator.get_state()
        return {"kind": "dataloader", "length": len(data), "batch_size": data.batch_size or 0,
                "dataset_length": len(data.dataset), "rng": rng}
    return {"kind": None, "length": _length(data)}


def _length(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return 0


def mismatch(saved: dict, data: Any) -> str | None:
    """Why `data` is not the data `saved` was taken on, or `None`."""
    now = _record(data)
    if now["kind"] is None:
        return f"was taken in the middle of an epoch, and the training data " \
               f"({type(data).__name__}) {UNRESUMABLE}"
    for key, what in (("kind", "kind"), ("batch_size", "batch size"),
                      ("dataset_length", "dataset length"), ("length", "number of batches")):
        if now[key] != saved[key]:
            return (f"was taken at step {saved['steps']} of an epoch over other training data: "
                    f"its {what} was {saved[key]!r}, this learner's is {now[key]!r}. Resume "
                    "with the data it was trained on, or load an epoch-end checkpoint.")
    return None


def _resumed(data: Any, saved: dict) -> Iterator[Any]:
    start = saved["steps"]
    if saved["kind"] == "stateful":
        data.load_state_dict(saved["loader"])
        generator = data.generator  # at its state of the checkpoint (the saved data_rng):
        drawn = None if generator is None else generator.get_state()
        iterator = iter(data)  # the iterator drew its seed before the checkpoint already
        if drawn is not None:
            generator.set_state(drawn)
        return iterator
    if saved["kind"] == "list":
        return iter(data[start:])
    generator = data.generator
    if generator is None:  # the order comes from the global torch RNG: draw it as it was
        now = torch.get_rng_state()
        torch.set_rng_state(saved["rng"])
    else:
        generator.set_state(saved["rng"])
    batches = _BatchesFrom(data.batch_sampler, start)
    loader = DataLoader(
        data.dataset, batch_sampler=batches, num_workers=data.num_workers,
        collate_fn=data.collate_fn, pin_memory=data.pin_memory, timeout=data.timeout,
        worker_init_fn=data.worker_init_fn, generator=generator,
        prefetch_factor=data.prefetch_factor, persistent_workers=False,
        multiprocessing_context=data.multiprocessing_context)
    iterator = iter(loader)  # draws the worker seed, as the epoch's first iter(data) did
    batches.draw()  # then the sampler's order, as the epoch's first batch did
    if generator is None:
        torch.set_rng_state(now)
    return iterator


class _BatchesFrom:
    """The batches of `batch_sampler` from the `start`-th on, without reading the skipped
    ones: the sampler's order is drawn once (`draw`), cut at `start * batch_size`."""

    def __init__(self, batch_sampler: Any, start: int) -> None:
        self.batch_sampler, self.start = batch_sampler, start
        self._batches: list | None = None

    def draw(self) -> None:
        sampler = self.batch_sampler
        if type(sampler) is BatchSampler:
            size = sampler.batch_size
            indices = list(sampler.sampler)[self.start * size:]
            batches = [indices[i:i + size] for i in range(0, len(indices), size)]
            if sampler.drop_last and batches and len(batches[-1]) < size:
                batches.pop()
        else:  # another batch sampler: its batches are index lists, skipped without reads
            batches = list(sampler)[self.start:]
        self._batches = batches

    def __iter__(self) -> Iterator[list]:  # a generator: nothing is drawn at iter()
        if self._batches is None:
            self.draw()
        batches, self._batches = self._batches, None
        yield from batches

    def __len__(self) -> int:
        return len(self.batch_sampler) - self.start
