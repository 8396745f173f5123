"""Plans: which handlers an event runs, resolved once per (event, phase).

A plan is the tuple of `Handler`s that run when an event fires in a phase: the callbacks with
a real `on` method for that pair, in the graph's order, each with the `.after` it must wait
for. Plum resolves once, when a pair is first fired, not at every fire; a callback with only
the no-op fallback is in no plan, and an event whose plan is empty costs one test.

`Plans` holds the plans of one set of callbacks (the learner makes a new one when its
callbacks change) and forgets them when a method is added to `fp.on`: it remembers
`on.registrations` from when it planned, and a different number means start again. The
built-in step fetches a `StepPlan`, the plans of its events in one named object, once per
step; a method registered during a step runs from the next one.

Extending:
    Executors get a plan for each fired event (`Executor.run(event, phase, handlers)`);
    `learner.plans.handlers(event, phase)` shows one without firing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import plum

from ..core.callback import Callback, handler_of, on
from ..core.errors import AmbiguousHandlerError
from ..core.events import BackwardBegin, BackwardEnd, Event, LossBegin, StepBegin, StepEnd
from ..core.graph import CallbackGraph
from ..core.phases import Phase
from .executors import Handler

__all__ = ["Plans", "StepPlan", "method_for"]

#: What a `Plans` does to each callback's method before it is planned: `(callback index in
#: the graph, method) -> the function to run` (strict mode's checks, the firing context), or
#: `None` when that callback does not run here (a `RankZeroOnly` callback on another rank).
Prepare = Callable[[int, Callable[..., Any]], Callable[..., Any] | None]


@attrs.frozen
class StepPlan:
    """The handlers of each event of the built-in step in one phase."""

    step_begin: tuple[Handler, ...]
    loss_begin: tuple[Handler, ...]
    backward_begin: tuple[Handler, ...]
    backward_end: tuple[Handler, ...]
    step_end: tuple[Handler, ...]


_STEP_EVENTS = (StepBegin(), LossBegin(), BackwardBegin(), BackwardEnd(), StepEnd())


class Plans:
    """The plans of the callbacks of `graph`, handed `views` (one per callback, in the
    graph's order); `prepare` adapts or drops each method (see `Prepare`).

    Attributes:
        builds: how many plans were resolved so far (each (event, phase) once per version).
    """

    def __init__(self, graph: CallbackGraph, views: Sequence[Any], prepare: Prepare) -> None:
        self.graph = graph
        self.views = tuple(views)
        self.prepare = prepare
        self.builds = 0
        self._version = on.registrations
        self._plans: dict[tuple[Event, Phase], tuple[Handler, ...]] = {}
        self._steps: dict[Phase, StepPlan] = {}

    def handlers(self, event: Event, phase: Phase) -> tuple[Handler, ...]:
        """The plan of `event` fired in `phase`; empty when no callback handles it."""
        if self._version != on.registrations:
            self._forget()
        plan = self._plans.get((event, phase))
        if plan is None:
            plan = self._plans[(event, phase)] = self._plan(event, phase)
        return plan

    def step(self, phase: Phase) -> StepPlan:
        """The plans of the built-in step's events in `phase`."""
        if self._version != on.registrations:
            self._forget()
        plan = self._steps.get(phase)
        if plan is None:
            plan = self._steps[phase] = StepPlan(*(self.handlers(e, phase) for e in _STEP_EVENTS))
        return plan

    def _forget(self) -> None:
        self._version = on.registrations
        self._plans.clear()
        self._steps.clear()

    def _plan(self, event: Event, phase: Phase) -> tuple[Handler, ...]:
        graph = self.graph
        handlers: list[Handler] = []
        index: list[int] = []
        for i in graph.order:
            method = method_for(type(event), type(phase), graph.callbacks[i])
            if method is not None:
                method = self.prepare(i, method)
            if method is not None:
                handlers.append(Handler(graph.callbacks[i], graph.names[i], method, event, phase,
                                        self.views[i]))
                index.append(i)
        for k, handler in enumerate(handlers):
            ancestors = graph.ancestors[index[k]]
            handler.after = tuple(handlers[m] for m in range(k) if index[m] in ancestors)
        self.builds += 1
        return tuple(handlers)


def method_for(event: type[Event], phase: type[Phase], callback: Callback):
    """The `on` method `callback` runs for `event` in `phase`, or `None` (only the no-op);
    an `AmbiguousHandlerError` when two methods fit equally well."""
    try:
        return handler_of(event, phase, type(callback))
    except plum.AmbiguousLookupError as exc:
        raise AmbiguousHandlerError(event, phase, callback,
                                    [_describe(m) for m in exc.methods]) from None


def _describe(method: plum.Method) -> str:
    """`module.function(StepEnd, Phase, MyCallback, Any)`: where a method is and what it takes."""
    impl = method.implementation
    types = ", ".join(getattr(t, "__name__", str(t)) for t in method.signature.types)
    return f"{impl.__module__}.{impl.__qualname__}({types})"
