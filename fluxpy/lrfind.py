"""`lr_find`: sweep the learning rate exponentially and watch the loss (Smith, 2015).

    result = fp.lr_find(learner)
    result.suggestion          # the LR where the loss falls fastest
    result.plot("lr.png")

The sweep is a short `fit` of one training phase over the training batches (cycled if there
are fewer than `n_steps`), so it runs the learner's own step and loss, and a custom phase's
step when one is given. The learning rate follows `fluxpy.support.schedules.Exponential` through a
`Scheduler` of its own, and an `LRSweep` callback reads the loss at each `StepEnd`. Of the
learner's callbacks it runs those that change the computation: the ones that write learner
state outside `cbstate` (`ToDevice`, mixed precision, gradient clipping, MixUp, a user's loss
changes). Observers sit it out (callbacks that only read, or only write `cbstate`:
`Recorder`, `Metrics`, printers, loggers, checkpoints, `EarlyStopping`, `ActivationStats`),
and so do the learner's `Scheduler`s; so nothing is recorded in its history or metrics.

Afterwards everything is put back exactly: the model's parameters, buffers and gradients, the
optimizer (state and `param_groups`), the gradient scaler, the callbacks (and the state of
those that have `state_dict`), the RNG states (Python, NumPy, torch, CUDA) and the model's
train/eval mode; a `fit` after `lr_find` is the `fit` that would have run without it.

The sweep reads each step's loss to the host (one sync per step): it must stop as soon as
the loss diverges, and it is a short diagnostic run, not training.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import numpy as np
import torch

from .callbacks.scheduler import LearningRate, Scheduler
from .core.access import Access, Read
from .core.callback import Callback, on, stateaccess
from .core.errors import CallbackGraphError, CancelFitException
from .core.events import StepEnd
from .core.phases import Phase, TrainingPhase
from .support.figures import new_figure, save_figure
from .support.schedules import Exponential

__all__ = ["LRFindResult", "lr_find"]


@attrs.frozen
class LRFindResult:
    """What `lr_find` measured: the learning rates tried and the smoothed loss at each.

    Attributes:
        lrs: the learning rate of each step, increasing exponentially.
        losses: the exponentially smoothed, bias-corrected training loss after each step.
        stop_reason: why the sweep ended before `n_steps` (the loss diverged), or `None`.
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    stop_reason: str | None = None

    @property
    def suggestion(self) -> float | None:
        """The learning rate at the steepest descent of the smoothed loss: where the gradient
        of `losses` against `log10(lrs)` (`numpy.gradient`) is most negative, looked for
        between the first tenth of the points (where the average still holds few steps, as
        fastai skips them too) and the lowest loss (what follows is the climb to divergence).
        `None` when there is no descent to measure (fewer than two points up to the lowest)."""
        losses, lrs = np.asarray(self.losses), np.asarray(self.lrs)
        end = int(np.argmin(losses)) + 1 if len(losses) else 0
        start = len(losses) // 10 if end - len(losses) // 10 >= 2 else 0
        if end - start < 2:
            return None
        slopes = np.gradient(losses[start:end], np.log10(lrs[start:end]))
        return self.lrs[start + int(np.argmin(slopes))]

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """The smoothed loss against the learning rate (log scale) with the suggestion
        marked; saved to `path` when given. Returns the matplotlib figure."""
        fig, ax = new_figure()
        ax.plot(self.lrs, self.losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss (smoothed)")
        suggestion = self.suggestion
        if suggestion is not None:
            i = self.lrs.index(suggestion)
            ax.plot([suggestion], [self.losses[i]], "o", color="red",
                    label=f"steepest descent: {suggestion:.2e}")
            ax.legend()
        save_figure(fig, path)
        return fig


@attrs.define
class LRSweep(Callback):
    """The callback `lr_find` adds beside a `Scheduler` of the learning rate: reads and
    smooths each step's loss at `StepEnd`, and stops the sweep when it diverges."""

    schedule: Exponential
    smoothing: float
    diverge: float
    lrs: list[float] = attrs.Factory(list)
    losses: list[float] = attrs.Factory(list)
    _mean: float = 0.0
    _best: float = math.inf


@stateaccess.dispatch
def _sweep_access(cb: LRSweep):
    return Access(batch=Access(loss=Read()))


@on.dispatch
def _sweep_step_end(event: StepEnd, phase: Phase, cb: LRSweep, learner):
    loss = learner.batch.loss
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    lr = cb.schedule(len(cb.lrs))
    cb._mean = cb.smoothing * cb._mean + (1 - cb.smoothing) * value
    smoothed = cb._mean / (1 - cb.smoothing ** (len(cb.lrs) + 1))
    if not math.isfinite(smoothed):
        raise CancelFitException(f"lr_find: the loss became {value} at lr {lr:.3g}")
    cb.lrs.append(lr)
    cb.losses.append(smoothed)
    if smoothed > cb.diverge * cb._best:
        raise CancelFitException(
            f"lr_find: the smoothed loss {smoothed:.4g} exceeded {cb.diverge} x the best "
            f"{cb._best:.4g} at lr {lr:.3g}"
        )
    cb._best = min(cb._best, smoothed)


@attrs.frozen
class _Cycle:
    """`n_steps` batches from `data`, starting over when it runs out."""

    data: Any
    n_steps: int

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self) -> Iterator[Any]:
        count = 0
        while True:
            empty = True
            for batch in self.data:
                empty = False
                yield batch
                count += 1
                if count == self.n_steps:
                    return
            if empty:
                raise ValueError("lr_find: the training data yielded no batches")


def lr_find(learner: Any, start: float = 1e-7, end: float = 10.0, n_steps: int = 100,
            smoothing: float = 0.98, diverge: float = 4.0, *, phase: Phase | None = None,
            data: Any = None) -> LRFindResult:
    """lr_find(learner, start=1e-7, end=10, n_steps=100, smoothing=0.98, diverge=4.0)

    Train for up to `n_steps` steps with the learning rate rising exponentially from `start`
    to `end`, recording the loss smoothed as `mean = smoothing * mean + (1 - smoothing) *
    loss` and divided by `1 - smoothing ** steps` (bias correction). Stops early once the
    smoothed loss exceeds `diverge` times the best so far, or is not finite. Then restores the
    learner exactly (see the module docstring).

    Args:
        phase: the training phase whose step runs (default `fp.TrainingPhase()`); pass your
            own phase to sweep with its custom step.
        data: the batches to use (default: the learner's training data).

    Returns:
        An `LRFindResult`; its `suggestion` is the LR at the steepest descent of the loss.
    """
    if not (0 < start < end):
        raise ValueError(f"lr_find(start={start}, end={end}): need 0 < start < end")
    if not isinstance(n_steps, int) or n_steps < 2:
        raise ValueError(f"lr_find(n_steps={n_steps!r}): need an int >= 2")
    if not 0 <= smoothing < 1:
        raise ValueError(f"lr_find(smoothing={smoothing}): need 0 <= smoothing < 1")
    if data is None:
        if learner.data is None or learner.data.training is None:
            raise ValueError("lr_find needs training data: give the learner data=(train, "
                             "valid), or pass data= to lr_find")
        data = learner.data.training
    phase = TrainingPhase() if phase is None else phase
    schedule = Exponential(n_steps - 1, start, end)
    sweep = LRSweep(schedule, smoothing, diverge)
    taking_part = [cb for cb in learner.callbacks if _takes_part(cb)]
    with _restoring(learner, taking_part):
        try:
            learner.set_callbacks([*_select(learner.given_callbacks, taking_part),
                                    Scheduler({LearningRate: schedule}), sweep])
        except CallbackGraphError as exc:
            exc.add_note("lr_find runs only the callbacks that write learner state outside "
                         f"cbstate: {', '.join(type(c).__name__ for c in taking_part)}")
            raise
        result = learner.fit(1, phases=[(phase, _Cycle(data, n_steps))])
    return LRFindResult(tuple(sweep.lrs), tuple(sweep.losses), result.stop_reason)


def _takes_part(cb: Callback) -> bool:
    if isinstance(cb, Scheduler):
        return False
    return any(path[0] != "cbstate" for path in stateaccess(cb).writes())


def _select(roots: Sequence[Callback], keep: list[Callback]) -> list[Callback]:
    """The roots to run: a kept callback with its children, else its kept descendants."""
    kept = {id(cb) for cb in keep}
    selected: list[Callback] = []

    def visit(cb: Callback) -> None:
        if id(cb) in kept:
            selected.append(cb)
            return
        for child in cb.subcallbacks():
            visit(child)

    for cb in roots:
        visit(cb)
    return selected


@contextmanager
def _restoring(learner: Any, taking_part: list[Callback]) -> Iterator[None]:
    """Snapshot the learner, and put it back afterwards (also after an error)."""
    model, optimizer, scaler = learner.model, learner.optimizer, learner.scaler
    roots, batch, rng = learner.given_callbacks, learner.batch, _rng_state()
    training = model.training
    model_state = copy.deepcopy(model.state_dict())
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    scaler_state = None if scaler is None else copy.deepcopy(scaler.state_dict())
    callback_states = [(cb, copy.deepcopy(cb.state_dict())) for cb in taking_part
                       if callable(getattr(cb, "state_dict", None))]
    try:
        yield
    finally:
        learner.set_callbacks(roots)
        model.load_state_dict(model_state)
        for p, grad in zip(model.parameters(), grads):
            p.grad = grad
        model.train(training)
        optimizer.load_state_dict(optimizer_state)
        learner.scaler = scaler
        if scaler is not None:
            scaler.load_state_dict(scaler_state)
        for cb, state in callback_states:
            cb.load_state_dict(state)
        learner.batch = batch
        _set_rng_state(rng)


def _rng_state() -> tuple[Any, ...]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Any, ...]) -> None:
    python, numpy, cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
