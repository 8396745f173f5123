"""The limits of one `fit` (`max_steps`, `max_time`) and validation in the middle of epochs.

`Learner.fit` checks its arguments with `make_budget`, and while it runs a `Budget` is
`learner.budget` (else `None`). The built-in training epoch calls `Budget.after_step` after
each training step (each batch of a training phase, cancelled steps too; with
`GradientAccumulation` each batch is a step): it counts the step, runs the validation phases
when `validate_every` says so, and answers whether a limit is reached, which ends the training
epoch there, as a cancelled epoch ends (`EpochEnd` fires). Per step that costs an int compare
for `max_steps` and a clock read only when `max_time` or `Every(seconds=...)` is set; a fit
without a budget pays one `is None` test per step.

The clock is `fluxpy.engine.budget.clock` (`time.monotonic`), read when it is called, so a
test replaces it with a fake one (`monkeypatch.setattr(budget, "clock", fake)`). Time is
measured from `start` (seconds since this fit began), read once per step and once more after
a validation the clock started.

A checkpoint saves where the validation schedule is (`Budget.schedule`: training steps or
rounds since the last validation, seconds since it ended, and whether one was due at the
checkpoint and has not run yet), and the next `fit` with the same `validate_every` goes on
with it (`start`), so a resumed run validates at the steps the uninterrupted run does.

Under DDP every rank must stop, and validate, at the same step, yet the ranks' clocks differ.
So a budget made for a distributed fit decides on an agreed reading: `agree` (set by
`fluxpy.ddp` before the first training epoch) takes this rank's seconds since the start and
returns rank 0's, broadcast. It is called at the same points on every rank (the ranks run
the same number of training steps), once per training step, and only when `max_time` or
`Every(seconds=...)` is set; budgets without them never call it.
"""

from __future__ import annotations

import datetime
import numbers
import time
from collections.abc import Callable
from typing import Any

import attrs

from ..core.every import Every

__all__ = ["Budget", "clock", "make_budget"]

#: The clock `max_time` and `Every(seconds=...)` read: seconds, monotonic.
clock: Callable[[], float] = time.monotonic


@attrs.define(eq=False)
class Budget:
    """What one `fit` may still do, and when it validates in the middle of training epochs.

    Attributes:
        max_steps: training steps this fit may run, or `None`.
        max_time: seconds this fit may run (checked after each training step), or `None`.
        validate_every: an `Every`, or `None` (validation after each training epoch).
        validate: runs the validation phases once (set by `fit`).
        distributed: whether the ranks must agree on the clock (a DDP fit).
        agree: under DDP, this rank's seconds since the start -> rank 0's, on every rank (a
            collective; set by `fluxpy.ddp`). `None` in one process.
        steps: training steps run so far in this fit.
        stop_reason: why training must end, once a limit is reached.
        cut_short: whether the training epoch that reached the limit still had batches.
    """

    max_steps: int | None = None
    max_time: float | None = None
    validate_every: Every | None = None
    validate: Callable[[], None] = lambda: None
    distributed: bool = False
    agree: Callable[[float], float] | None = None
    steps: int = 0
    stop_reason: str | None = None
    cut_short: bool = False
    _timed: bool = False
    _origin: float = 0.0
    _next_validation: float = float("inf")
    _since_steps: int = 0  # training steps since the last validation (Every(steps=))
    _since_rounds: int = 0  # rounds since the last validation (Every(epochs=))
    _epoch_steps: int = 0
    _epoch_length: int | None = None

    @property
    def validates_mid_epoch(self) -> bool:
        """Whether validation runs between training steps (`Every(steps=)`/`Every(seconds=)`)
        rather than after training epochs."""
        every = self.validate_every
        return every is not None and every.epochs is None

    def round_ended(self) -> bool:
        """A training round ended: whether `Every(epochs=k)` runs the validation phases now
        (rounds are counted since the last validation, across resumed fits)."""
        every = self.validate_every
        if every is None or every.epochs is None:
            return False
        self._since_rounds += 1
        if self._since_rounds < every.epochs:
            return False
        self._since_rounds = 0
        return True

    def start(self, schedule: dict | None = None) -> bool:
        """Start the clock of `max_time` and `Every(seconds=...)` (read only when one is set),
        and go on with the validation schedule a checkpoint saved (`schedule`, see
        `schedule`). Returns whether a validation that was due when the checkpoint was
        taken must run now, before the first training step."""
        every = self.validate_every
        period = _seconds(every)
        since_seconds, due = 0.0, False
        if schedule is not None and every is not None and schedule["every"] == str(every):
            self._since_steps, self._since_rounds = schedule["steps"], schedule["rounds"]
            since_seconds, due = schedule["seconds"], schedule["due"]
        self._timed = self.max_time is not None or period is not None
        if self._timed:
            self._origin = clock()
            self._next_validation = float("inf") if period is None else period - since_seconds
        if due:
            self._since_steps = self._since_rounds = 0
        return due

    def validate_due(self) -> None:
        """Run the validation that `start` found due (it was due at the checkpoint)."""
        self.validate()
        every = self.validate_every
        if every is not None and every.seconds is not None:
            self._next_validation = self._elapsed() + every.seconds

    def schedule(self, mid_epoch: bool) -> dict | None:
        """What a checkpoint taken now saves so that a resumed fit with the same
        `validate_every` validates where this one would (`None` without `validate_every`).

        A mid-epoch checkpoint is taken at a training step's `StepEnd`, before the step is
        counted here (a step checkpoint; a validation due at that step is then recorded as
        `due`), or after it is counted, once a limit of `fit` stopped it (the validation due
        there ran). An epoch-end checkpoint is taken at the round's last training `EpochEnd`,
        before the round is counted and `Every(epochs=k)` validates after it."""
        every = self.validate_every
        if every is None:
            return None
        uncounted = mid_epoch and self.stop_reason is None
        steps, rounds = self._since_steps + uncounted, self._since_rounds + (not mid_epoch)
        seconds = 0.0
        if every.seconds is not None and self._timed:
            elapsed = clock() - self._origin
            seconds = float(max(0.0, elapsed - (self._next_validation - every.seconds)))
        if every.steps is not None:
            due = uncounted and steps >= every.steps
        elif every.epochs is not None:
            due = not mid_epoch and rounds >= every.epochs
        else:
            due = uncounted and seconds >= every.seconds
        return {"every": str(every), "steps": steps, "rounds": rounds, "seconds": seconds,
                "due": due}

    def begin_epoch(self, data: Any) -> None:
        """A training epoch over `data` begins: its length tells a cut epoch from a full one."""
        self._epoch_steps = 0
        self._epoch_length = len(data) if hasattr(data, "__len__") else None

    def after_step(self) -> bool:
        """Count a training step, validate if due; whether a limit is now reached."""
        self.steps += 1
        self._epoch_steps += 1
        every = self.validate_every
        now = self._elapsed() if self._timed else 0.0
        if every is not None:
            if every.steps is not None:
                self._since_steps += 1
                if self._since_steps >= every.steps:
                    self._since_steps = 0
                    self.validate()
            elif every.seconds is not None and now >= self._next_validation:
                self.validate()
                now = self._elapsed()
                self._next_validation = now + every.seconds
        if self.max_steps is not None and self.steps >= self.max_steps:
            return self._stop(f"max_steps={self.max_steps} reached")
        if self.max_time is not None and now >= self.max_time:
            return self._stop(f"max_time={self.max_time:g} s reached")
        return False

    def _elapsed(self) -> float:
        """Seconds since `start`: this rank's clock, or under DDP rank 0's (a collective)."""
        seconds = clock() - self._origin
        if not self.distributed:
            return seconds
        if self.agree is None:
            raise RuntimeError("a distributed fit with max_time= or fp.Every(seconds=...) "
                               "needs the ranks' clock agreement (Budget.agree), which "
                               "fluxpy.ddp sets in its epoch; run epochs through learner.ddp")
        return self.agree(seconds)

    def _stop(self, reason: str) -> bool:
        self.stop_reason = reason
        self.cut_short = self._epoch_steps != self._epoch_length
        return True


def _seconds(every: Every | None) -> float | None:
    return None if every is None else every.seconds


def make_budget(n_epochs: Any, max_steps: Any, max_time: Any, validate_every: Any,
                distributed: bool) -> Budget | None:
    """Check `fit`'s limits and `validate_every`; the `Budget`, or `None` when the fit has
    only `n_epochs` (then the loop runs as it did before limits existed). A `distributed`
    budget decides on the clock reading the ranks agree on (see the module docstring)."""
    if n_epochs is not None and (not isinstance(n_epochs, int) or isinstance(n_epochs, bool)
                                 or n_epochs < 0):
        raise ValueError(f"fit(n_epochs={n_epochs!r}): n_epochs must be an int >= 0")
    if max_steps is not None and (isinstance(max_steps, bool)
                                  or not isinstance(max_steps, numbers.Integral) or max_steps < 1):
        raise ValueError(f"fit(max_steps={max_steps!r}): max_steps must be a whole number >= 1, "
                         "e.g. fit(max_steps=1000)")
    seconds = _as_seconds(max_time)
    if validate_every is not None and not isinstance(validate_every, Every):
        raise TypeError("validate_every must be an fp.Every, e.g. "
                        f"validate_every=fp.Every(steps=500), not {validate_every!r}")
    if n_epochs is None and max_steps is None and seconds is None:
        raise ValueError("fit() needs a limit: give n_epochs (fit(3)), max_steps= or max_time= "
                         "(seconds or a datetime.timedelta)")
    if max_steps is None and seconds is None and validate_every is None:
        return None
    return Budget(None if max_steps is None else int(max_steps), seconds, validate_every,
                  distributed=distributed)


def _as_seconds(max_time: Any) -> float | None:
    if max_time is None:
        return None
    value = max_time.total_seconds() if isinstance(max_time, datetime.timedelta) else max_time
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"fit(max_time={max_time!r}): max_time must be seconds > 0 (a number) "
                         "or a datetime.timedelta, e.g. fit(max_time=3600)")
    return float(value) if not isinstance(value, int) else value
