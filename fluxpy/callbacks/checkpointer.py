"""`Checkpointer`: saves everything needed to resume, at the end of every `every`-th epoch.

    learner = fp.Learner(..., callbacks=[fp.Checkpointer("run/checkpoints")])
    learner.fit(10)                                  # keeps epoch-0008.pt ... epoch-0010.pt
    fp.load_checkpoint(new_learner, "run/checkpoints")
    new_learner.fit(5)                               # continues as if never stopped

When it saves. An epoch is one pass through each phase of the `fit` (training, then
validation). The checkpoint is taken when the last phase's `EpochEnd` handlers are done: the
Checkpointer runs after every other callback, so their state is final, and nothing runs
between it and the next epoch, so the saved random states are the ones the next epoch's
shuffling and dropout draw from. Files are named `epoch-NNNN.pt` after the number of epochs
completed over all `fit` calls (resumed runs continue the count). What a file holds, and how
it is written atomically, is described in `fluxpy.support.checkpoint`.

With `fit(validate_every=...)` a round is its training epochs: the checkpoint is taken at the
end of the last one, before the validation that `fp.Every(epochs=k)` runs after it, and a
step checkpoint at a training step's `StepEnd`, before a validation due at that step: the
checkpoint records that it is due, and the resumed `fit` runs it first.

When `fit` stops. Whatever ends `fit` (its last epoch, `CancelFitException`, an error, Ctrl-C),
if the last completed epoch was not saved (with `every` > 1) it is written at `FitEnd`, from a
copy of the state taken when that epoch ended (so with `every` > 1 a copy of the model and
optimizer state is kept in host memory between saves). The newest checkpoint is thus always
the end of the last completed epoch: never a half epoch, and a resume from it is exact. The
half-done epoch at Ctrl-C is not saved, and neither is an epoch whose `EpochEnd` handlers were
cut short by `CancelFitException` (an `EarlyStopping` that fired).

Which files stay. The `keep_last` newest, and with `keep_best` the `keep_best` with the best
`monitor` value (`cbstate.metricsepoch[ValidationPhase()][monitor]` of their epoch, lower is
better for `mode="min"`); the other `epoch-NNNN.pt` files in the folder are removed after each
save, and so are temporary files left by writes that were killed. `best_path` is the best kept
file, and `fp.load_checkpoint(learner, folder, which="best")` loads it. A folder that holds
checkpoints beyond the learner's epoch (another run's) is an error at `FitBegin`, unless
`overwrite=True` says to delete them: load them, use another folder, or overwrite.

In the middle of epochs. With `every=fp.Every(steps=n)` (or `fp.Every(seconds=s)`) it saves
after every n-th training step (at the first step boundary s seconds after the previous save)
as `epoch-NNNN-step-SSSSSS.pt` (S steps into the round after N), and keeps the last completed
epoch for `FitEnd` as with `every` > 1. When `fit` stops in the middle of a training epoch
because of `max_steps` or `max_time`, whatever `every` is, the state at that step (before the
epoch's `EpochEnd`) is written at `FitEnd`: a job with a time limit resumes where it stopped.
`load_checkpoint(learner, folder)` loads the newest file, epoch or step, and the next `fit`
first finishes the interrupted epoch (`fluxpy.engine.position`).

Under `torch.distributed` only rank 0 writes and prunes; the other ranks wait for it. Under
FSDP every rank writes its shards into the checkpoint, a folder of the same name
(`fluxpy.support.checkpoint_sharded`), and rank 0 prunes. Every
rank resumes a mid-epoch checkpoint at the same step of its own shard (the ranks step
together); what differs between ranks in the middle of an epoch (each rank's running
`Metrics` means and other callback state, random states, `GradientAccumulation`'s
unsynchronised gradients) is gathered to rank 0 and saved per rank, and each rank resumes
its own (`fluxpy.support.checkpoint_ranks`): such a checkpoint resumes with as many ranks.

With `async_save=True` a save copies the state to host memory (pinned for a model on a GPU)
and a background thread writes the copy, the same way and to the same file, while training
goes on (`fluxpy.support.async_save`). Before it reads the learner's state again (at the next
save, or the end of a round) the Checkpointer waits for the write still running, and raises
its failure there; `FitEnd` waits for the last one and writes the state `fit` stopped at
itself, so when `fit` returns or raises every file is complete. Under DDP the other ranks
wait for rank 0's copy, not its write. Under FSDP every rank copies its own shards and its
thread writes them, with DCP's collectives on a gloo process group of their own (made at
`FitBegin`, shut down at `FitEnd`; training keeps the default one); rank 0 renames the
folder into place once every rank's shards are written. Every rank waits for its write at
the same points, and a failure on any rank is raised on every rank, so that they stop
together.
"""

from __future__ import annotations

import abc
import contextlib
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

from ..core.access import Access, Read
from ..core.callback import Callback, UnsafeCallback, on, runafter, stateaccess
from ..core.errors import CheckpointError
from ..core.events import EpochEnd, FitBegin, FitEnd, StepEnd
from ..core.every import Every
from ..core.phases import AbstractTrainingPhase, Phase, ValidationPhase
from ..support.async_save import BackgroundWriter, host_snapshot
from ..support.checkpoint import (
    best_scored,
    checkpoint_files,
    checkpoint_state,
    unwrap_model,
    write_checkpoint,
)
from ..support.checkpoint_ranks import gather_rank_states
from ..support.checkpoint_sharded import (
    background_group,
    is_sharded,
    on_writing_ranks,
    release_group,
    remove_checkpoint,
    save_sharded,
    wait_on_every_rank,
)
from ..support.distributed import on_rank_zero
from ..support.strategies import is_sharded_model

__all__ = ["Checkpointer"]

#: The clock `every=fp.Every(seconds=...)` reads (a test replaces it).
clock = time.monotonic


@attrs.define
class Checkpointer(UnsafeCallback):
    """Writes a checkpoint to `folder` at the end of every `every`-th epoch.

    Args:
        folder: where the `epoch-NNNN.pt` files go; created if missing. A folder that cannot
            be written is a `CheckpointError` here, not at the first save.
        every: save every this many epochs (and the last completed epoch when `fit` ends),
            or an `fp.Every`: `Every(epochs=n)` is `n`, `Every(steps=n)` and
            `Every(seconds=s)` save in the middle of training epochs.
        keep_last: how many of the newest checkpoints to keep; `None` keeps all.
        monitor: a validation metric name (`"loss"`, or one given to `Metrics`) by which
            `keep_best` ranks checkpoints.
        mode: `"min"` if a lower `monitor` value is better, `"max"` if higher.
        keep_best: also keep this many checkpoints with the best `monitor` values.
        overwrite: at `FitBegin`, delete the folder's checkpoints beyond this learner's epoch
            (another run's, or the later ones of a run this learner resumed from an earlier
            checkpoint) instead of refusing to mix runs in one folder.
        async_save: write each checkpoint on a background thread, from a copy of the state in
            host memory, so a training step waits for the copy only (see above). Keeps a
            copy of the model and optimizer state in host memory while a file is written.
            Under FSDP each rank copies its own shards and writes them on its own thread.

    It is an `UnsafeCallback`: it reads the whole learner (model, optimizer, scaler, every
    callback's `state_dict()`, `cbstate`), which is what a checkpoint is. Its own state
    (`epoch`, the epochs completed, `scores`, the monitor value of each kept file, and
    `mode`, by which `load_checkpoint(..., which="best")` ranks them) is saved in the
    checkpoints too.
    """

    folder: Path = attrs.field(converter=Path)
    every: int | Every = 1
    keep_last: int | None = 3
    monitor: str | None = None
    mode: str = "min"
    keep_best: int = 0
    overwrite: bool = False
    async_save: bool = False
    epoch: int = attrs.field(default=0, init=False)
    scores: dict[str, float] = attrs.field(factory=dict, init=False)
    _phases_ended: int | None = attrs.field(default=None, init=False, repr=False)  # in fit
    # (epoch, copy of its state) of an epoch not yet saved; the copy exists on rank 0 only
    _pending: tuple[int, dict | None] | None = attrs.field(default=None, init=False, repr=False)
    _steps: int = attrs.field(default=0, init=False, repr=False)  # training steps since a save
    _last_save: float = attrs.field(default=0.0, init=False, repr=False)
    _hook: Any = attrs.field(default=None, init=False, repr=False)  # in position.on_cut
    # (file name, copy of the state) taken where a limit of fit cut a training epoch
    _cut: tuple[str, dict | None] | None = attrs.field(default=None, init=False, repr=False)
    _writer: BackgroundWriter | None = attrs.field(default=None, init=False, repr=False)
    # with async_save under FSDP, in fit: the process group of the background writes' collectives
    _group: Any = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.every, Every) and self.every.epochs is not None:
            self.every = self.every.epochs
        if not isinstance(self.every, Every) and (
                not isinstance(self.every, int) or isinstance(self.every, bool) or self.every < 1):
            raise ValueError(f"Checkpointer(every={self.every!r}): every must be an int >= 1 "
                             "(epochs) or an fp.Every, e.g. every=fp.Every(steps=500)")
        if self.keep_last is not None and (not isinstance(self.keep_last, int)
                                           or self.keep_last < 1):
            raise ValueError(f"Checkpointer(keep_last={self.keep_last!r}): keep at least the "
                             "newest checkpoint (an int >= 1), or None to keep all")
        if self.mode not in ("min", "max"):
            raise ValueError(f"Checkpointer(mode={self.mode!r}): mode is 'min' or 'max'")
        if not isinstance(self.keep_best, int) or self.keep_best < 0:
            raise ValueError(f"Checkpointer(keep_best={self.keep_best!r}): an int >= 0")
        if not isinstance(self.overwrite, bool):
            raise TypeError(f"Checkpointer(overwrite={self.overwrite!r}): True or False")
        if (self.keep_best > 0) != (self.monitor is not None):
            raise ValueError(
                f"Checkpointer(monitor={self.monitor!r}, keep_best={self.keep_best}): give "
                "both or neither; monitor names the metric by which keep_best checkpoints "
                "are kept, e.g. Checkpointer(folder, monitor='loss', keep_best=1)"
            )
        _check_writable(self.folder)
        if self.async_save:
            self._writer = BackgroundWriter(
                f"Checkpointer(folder={str(self.folder)!r}, async_save=True)")

    def init(self, learner) -> None:
        others = [cb for cb in learner.callbacks if isinstance(cb, Checkpointer)]
        if len(others) > 1:
            raise ValueError(
                f"a learner takes one Checkpointer, and this one has {len(others)}: each "
                "saves after every other callback and counts the epochs in its files. Use one, "
                "with keep_last for the newest and monitor/keep_best for the best."
            )

    def state_dict(self) -> dict:
        # `mode` tells `fp.load_checkpoint(..., which="best")` how to rank the scores
        return {"epoch": self.epoch, "scores": dict(self.scores), "mode": self.mode}

    @property
    def best_path(self) -> Path | None:
        """The kept checkpoint with the best `monitor` value (the earlier on a tie), or None
        (no `monitor`, or none saved yet)."""
        return best_scored(self.folder, self.scores, self.mode)

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.scores = {str(k): float(v) for k, v in state["scores"].items()}

    @property
    def _epochs_only(self) -> bool:
        return not isinstance(self.every, Every)

    def _save(self, epoch: int | str, state: dict, background: bool = True) -> None:
        name = epoch if isinstance(epoch, str) else f"epoch-{epoch:04d}.pt"
        if is_sharded(state):  # every rank writes its shards; rank 0 prunes
            save_sharded(state, self.folder / name, self._writer if background else None,
                         self._group, then=lambda: (_remove_leftovers(self.folder),
                                                    self._prune()))
            return
        if self._writer is None or not background:
            self._write(name, state)
        else:  # the training thread waits for the copy only
            snapshot = host_snapshot(state)
            self._writer.submit(lambda: self._write(name, snapshot), self.folder / name)

    def _write(self, name: str, state: dict) -> None:
        _remove_leftovers(self.folder)
        write_checkpoint(state, self.folder / name)
        self._prune()

    def _wait_for_write(self) -> None:
        """With `async_save`, before the state (`scores` included) is read or changed: wait
        for the write in progress (it prunes), raise its failure; every rank waits for rank 0
        (under FSDP: for its own write, and raises if any rank's failed)."""
        if self._group is not None:
            wait_on_every_rank(self._writer)
        elif self._writer is not None:
            on_rank_zero(self._writer.wait)

    def _step_name(self, learner) -> str:
        return f"epoch-{self.epoch:04d}-step-{learner.position.steps:06d}.pt"

    def _prune(self) -> None:
        files = checkpoint_files(self.folder)
        newest = files if self.keep_last is None else files[-self.keep_last:]
        keep = {path.name for _, path in newest}
        if self.keep_best:
            present = {path.name for _, path in files}
            scored = [(s, n) for n, s in self.scores.items() if n in present and not math.isnan(s)]
            scored.sort(key=lambda item: item[0], reverse=self.mode == "max")
            keep |= {name for _, name in scored[:self.keep_best]}
        for _, path in files:
            if path.name not in keep:
                remove_checkpoint(path)
        self.scores = {n: s for n, s in self.scores.items() if n in keep}

    def _score(self, learner) -> float:
        values = learner.cbstate.__dict__.get("metricsepoch", {}).get(ValidationPhase(), {})
        series = values.get(self.monitor)
        if not series:
            available = ", ".join(repr(n) for n in values) or "none"
            raise ValueError(
                f"Checkpointer(monitor={self.monitor!r}): no {self.monitor!r} value recorded "
                f"for ValidationPhase this epoch (validation metrics: {available}); keep_best "
                "needs validation data and Metrics with that metric"
            )
        return float(series[-1])


class _AnyOtherCallback(abc.ABC):  # noqa: B024 (virtual: isinstance only, no methods)
    """What `isinstance` finds in every callback but a `Checkpointer` (for `runafter`)."""

    @classmethod
    def __subclasshook__(cls, other: type) -> bool:
        return issubclass(other, Callback) and not issubclass(other, Checkpointer)


@runafter.dispatch
def _checkpointer_after(cb: Checkpointer):
    return (_AnyOtherCallback,)  # so every other callback's state is final when it is saved


@stateaccess.dispatch
def _checkpointer_access(cb: Checkpointer):
    return Access(model=Read(), optimizer=Read(), scaler=Read(), cbstate=Read(),
                  callbacks=Read(), rng=Read())


@on.dispatch
def _checkpointer_fit_begin(event: FitBegin, phase: Phase, cb: Checkpointer, learner):
    if cb.async_save and is_sharded_model(unwrap_model(learner.model)):
        cb._group = background_group()  # released at FitEnd
    cb._phases_ended, cb._steps, cb._cut, cb._last_save = 0, 0, None, clock()
    cb._hook = lambda: _take_cut(cb, learner)
    learner.position.on_cut.append(cb._hook)
    pending = learner.position.pending
    if pending is not None:  # a resumed round: its earlier phases ended before the checkpoint
        cb._phases_ended = pending["phase"]
    here = (cb.epoch, 0 if pending is None else pending["steps"])
    later = [path for key, path in checkpoint_files(cb.folder) if key > here]
    if later and cb.overwrite:
        on_rank_zero(lambda: [path.unlink(missing_ok=True) for path in later])
    elif later:
        raise CheckpointError(
            cb.folder, f"already holds {later[-1].name}, beyond this learner's epoch {cb.epoch}: "
            "it is another run's. Resume it with fp.load_checkpoint(learner, folder) before fit, "
            "give the Checkpointer an empty folder, or Checkpointer(folder, overwrite=True) to "
            "delete them."
        )


@on.dispatch
def _checkpointer_epoch_end(event: EpochEnd, phase: Phase, cb: Checkpointer, learner):
    if cb._phases_ended is None:  # an epoch run outside fit
        return
    phases = learner.epoch_phases
    budget = learner.budget
    if budget is not None and budget.cut_short:  # a limit cut it: saved at the step (_take_cut)
        return
    if budget is not None and budget.validate_every is not None:
        # fit(validate_every=...) runs validation on its own schedule, inside training epochs
        # or after rounds: a round is its training epochs
        if not isinstance(phase, AbstractTrainingPhase):
            return
        phases = [p for p in phases if isinstance(p, AbstractTrainingPhase)]
    cb._phases_ended += 1
    if cb._phases_ended < len(phases):
        return
    cb._phases_ended = 0
    cb._wait_for_write()
    cb.epoch += 1
    epoch = cb.epoch
    if cb.monitor is not None:
        cb.scores[f"epoch-{epoch:04d}.pt"] = cb._score(learner)
    cb._pending = None
    if cb._epochs_only and epoch % cb.every == 0:
        on_writing_ranks(learner, lambda: cb._save(epoch, checkpoint_state(learner)))
    else:
        cb._pending = (epoch, on_writing_ranks(
            learner, lambda: host_snapshot(checkpoint_state(learner))))


@on.dispatch
def _checkpointer_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: Checkpointer,
                           learner):
    every = cb.every
    if cb._phases_ended is None or not isinstance(every, Every):
        return
    cb._steps += 1
    if every.steps is not None:
        if cb._steps < every.steps:
            return
    elif clock() - cb._last_save < every.seconds:
        return
    cb._steps = 0
    cb._wait_for_write()
    state = _mid_epoch_state(learner)  # first: data that cannot resume is refused here
    on_writing_ranks(learner, lambda: cb._save(cb._step_name(learner), state))
    cb._last_save = clock()


def _take_cut(cb: Checkpointer, learner) -> None:
    """At a step where a limit of `fit` ends a training epoch early, before its `EpochEnd`."""
    cb._wait_for_write()
    state = _mid_epoch_state(learner)  # first: data that cannot resume is refused here
    cb._cut = (cb._step_name(learner), on_writing_ranks(learner, lambda: host_snapshot(state)))


@on.dispatch
def _checkpointer_fit_end(event: FitEnd, phase: Phase, cb: Checkpointer, learner):
    pending, cb._pending, cb._phases_ended = cb._pending, None, None
    cut, cb._cut = cb._cut, None
    with contextlib.suppress(ValueError):
        learner.position.on_cut.remove(cb._hook)
    try:
        cb._wait_for_write()  # the last background write: complete when fit ends
    finally:
        if cb._group is not None:  # no collective of it is left on any rank
            group, cb._group = cb._group, None
            release_group(group)
    if pending is not None:
        on_writing_ranks(learner, lambda: cb._save(*pending, background=False))
    if cut is not None:
        on_writing_ranks(learner, lambda: cb._save(*cut, background=False))


def _mid_epoch_state(learner) -> dict:
    """`checkpoint_state`, with every rank's own part under DDP (a collective: every rank
    saves at the same step)."""
    return gather_rank_states(learner, checkpoint_state(learner))


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            folder, f"cannot hold checkpoints: {exc.strerror or exc}. Give the Checkpointer a "
            "folder this process can create and write files in."
        ) from exc


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary files of writes that were killed (`.epoch-NNNN.pt.*.tmp`)."""
    for entry in os.scandir(folder):
        if entry.name.startswith(".epoch-") and entry.name.endswith(".tmp"):
            remove_checkpoint(Path(entry.path))
