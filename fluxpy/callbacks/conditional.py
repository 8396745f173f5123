"""`ConditionalCallback` and `throttle`: run a callback's handlers only when a condition holds.

The wrapper forwards `stateaccess`, `runafter`, `resolveconflict` and `init` to the callback it
wraps, so a throttled callback takes the same place in the graph as the callback itself, and
its `state_dict` holds the wrapped callback's state (and the throttle's count, and for a period
in seconds how long ago it last let a firing through), so checkpoints keep them and a resumed run
keeps the same period.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from ..core.callback import (
    Callback,
    RunFirst,
    handler_of,
    on,
    resolveconflict,
    runafter,
    stateaccess,
)
from ..core.events import EpochBegin, EpochEnd, Event
from ..core.every import Every
from ..core.phases import Phase
from .periodic import as_every

__all__ = ["ConditionalCallback", "Throttle", "throttle"]


@attrs.define
class ConditionalCallback(Callback):
    """Runs `callback`'s handlers only when `condition(event, phase)` is true."""

    callback: Callback
    condition: Callable[[Event, Phase], bool]

    @property
    def every(self) -> Every | None:
        """The condition's `fp.Every` when it is a `Throttle` (what `explain` shows)."""
        return getattr(self.condition, "every", None)

    def init(self, learner) -> None:
        self.callback.init(learner)

    def state_dict(self) -> dict:
        """The wrapped callback's state and the condition's (a `Throttle`'s count), for
        checkpoints: a throttled `Scheduler` resumes at its step."""
        state = {}
        for part in ("callback", "condition"):
            if callable(getattr(getattr(self, part), "state_dict", None)):
                state[part] = getattr(self, part).state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for part in ("callback", "condition"):
            if callable(getattr(getattr(self, part), "load_state_dict", None)):
                getattr(self, part).load_state_dict(state[part])


@attrs.define
class Throttle:
    """True for the firings of `event` that `every` picks; always true for other events.

    It counts the firings that reach it: those of the phases the wrapped callback has a
    handler for (a `Scheduler`'s are training steps; a `CustomCallback` has one for every
    phase, so validation steps count too). `Every(steps=n)` on a step event, or `Every(epochs=n)`
    on `EpochBegin`/`EpochEnd`: the n-th firing, the 2n-th, ... `Every(seconds=s)`: the first
    firing, then the first at least `s` seconds after the last one let through, by `clock`
    (`None`: `time.monotonic`).
    """

    event: type
    every: Every
    clock: Callable[[], float] | None = None
    _count: int = attrs.field(default=0, init=False)
    _last: float | None = attrs.field(default=None, init=False)

    def _now(self) -> float:
        return self.clock() if self.clock is not None else time.monotonic()

    def state_dict(self) -> dict:
        """The firings counted and, for seconds, how long ago the last one was let through
        (a time itself means nothing in another process)."""
        state: dict = {"count": self._count}
        if self.every.seconds is not None and self._last is not None:
            state["since"] = self._now() - self._last
        return state

    def load_state_dict(self, state: dict) -> None:
        self._count = int(state["count"])
        since = state.get("since")
        self._last = None if since is None else self._now() - float(since)

    def __call__(self, event: Event, phase: Phase) -> bool:
        if not isinstance(event, self.event):
            return True
        self._count += 1
        if self.every.seconds is None:
            return self._count % self.every.amount == 0
        now = self._now()
        if self._last is None or now - self._last >= self.every.seconds:
            self._last = now
            return True
        return False


def throttle(callback: Callback, event: type, every: Every | int | None = None,
             seconds: float | None = None) -> ConditionalCallback:
    """`callback` whose `event` handlers run only at the firings `every` picks.

    Args:
        callback: the callback to wrap; its other handlers run as usual.
        event: the event to throttle (`fp.StepEnd`, `fp.EpochEnd`, ...).
        every: `fp.Every(steps=n)` (every n-th firing of a step event), `fp.Every(epochs=n)`
            (every n-th firing of `EpochBegin`/`EpochEnd`) or `fp.Every(seconds=s)` (the first
            firing, then the first at least `s` seconds after the last one that ran). A plain
            int `n` is the n-th firing: `Every(epochs=n)` on epoch events, else `Every(steps=n)`.
        seconds: the same as `every=fp.Every(seconds=seconds)`.
    """
    if (every is None) == (seconds is None):
        raise ValueError("throttle needs exactly one of every= or seconds=, e.g. "
                         "fp.throttle(callback, fp.StepEnd, every=fp.Every(steps=10))")
    if seconds is not None:
        every = Every(seconds=seconds)
    name = getattr(event, "__name__", repr(event))
    args = f"{type(callback).__name__}(...), fp.{name}, "
    if isinstance(event, type) and issubclass(event, (EpochBegin, EpochEnd)):
        every = as_every("throttle", every, ("epochs", "seconds"), int_means="epochs", args=args,
                         why=f"{name} fires once per epoch, so it counts epochs")
    else:
        every = as_every("throttle", every, ("steps", "seconds"), args=args,
                         why=f"{name} is not an epoch event (throttle fp.EpochEnd to count "
                             "epochs)")
    return ConditionalCallback(callback, Throttle(event, every))


@on.dispatch
def _conditional_on(event: Event, phase: Phase, cb: ConditionalCallback, learner):
    method = handler_of(type(event), type(phase), type(cb.callback))
    if method is not None and cb.condition(event, phase):
        method(event, phase, cb.callback, learner)


@stateaccess.dispatch
def _conditional_access(cb: ConditionalCallback):
    return stateaccess(cb.callback)


@runafter.dispatch
def _conditional_runafter(cb: ConditionalCallback):
    return runafter(cb.callback)


def _forward(answer: Any, inner: Callback, wrapper: Callback) -> Any:
    if isinstance(answer, RunFirst) and answer.callback is inner:
        return RunFirst(wrapper)
    return answer


@resolveconflict.dispatch
def _conditional_first(a: ConditionalCallback, b: Callback):
    return _forward(resolveconflict(a.callback, b), a.callback, a)


@resolveconflict.dispatch
def _conditional_second(a: Callback, b: ConditionalCallback):
    return _forward(resolveconflict(a, b.callback), b.callback, b)


@resolveconflict.dispatch
def _conditional_both(a: ConditionalCallback, b: ConditionalCallback):
    answer = resolveconflict(a.callback, b.callback)
    return _forward(_forward(answer, a.callback, a), b.callback, b)
