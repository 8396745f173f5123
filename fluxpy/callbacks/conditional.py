"""`ConditionalCallback` and `throttle`: run a callback's handlers only when a condition holds.

The wrapper forwards `stateaccess`, `runafter`, `resolveconflict` and `init` to the callback it
wraps, so a throttled callback takes the same place in the graph as the callback itself, and
its `state_dict` holds the wrapped callback's state (and the throttle's count), so checkpoints
keep them.
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
from ..core.events import Event
from ..core.phases import Phase

__all__ = ["ConditionalCallback", "Throttle", "throttle"]


@attrs.define
class ConditionalCallback(Callback):
    """Runs `callback`'s handlers only when `condition(event, phase)` is true."""

    callback: Callback
    condition: Callable[[Event, Phase], bool]

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
    """True for one in every `every` firings of `event`, or at most once per `seconds`;
    always true for other events."""

    event: type
    every: int | None = None
    seconds: float | None = None
    _count: int = attrs.field(default=0, init=False)
    _last: float = attrs.field(default=float("-inf"), init=False)

    def state_dict(self) -> dict:
        """The firings counted; the time of the last one means nothing in another process."""
        return {"count": self._count}

    def load_state_dict(self, state: dict) -> None:
        self._count = int(state["count"])

    def __call__(self, event: Event, phase: Phase) -> bool:
        if not isinstance(event, self.event):
            return True
        self._count += 1
        if self.every is not None:
            return self._count % self.every == 0
        now = time.monotonic()
        if now - self._last >= self.seconds:
            self._last = now
            return True
        return False


def throttle(callback: Callback, event: type, every: int | None = None,
             seconds: float | None = None) -> ConditionalCallback:
    """`callback` whose `event` handlers run every `every`-th time, or at most every `seconds`."""
    if (every is None) == (seconds is None):
        raise ValueError("throttle needs exactly one of every= or seconds=")
    if every is not None and every < 1:
        raise ValueError(f"throttle(every={every}): every must be >= 1")
    return ConditionalCallback(callback, Throttle(event, every, seconds))


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
