"""Callbacks and the generic functions that describe them.

A callback is an object of a `Callback` subclass. What it does is given by methods of the
generic functions below, picked by multiple dispatch over the Event, Phase and Callback
hierarchies (the most specific method wins):

- `on(event, phase, callback, learner)`: the handler. `learner` is the callback's protected
  view of the learner. The fallback `(Event, Phase, Callback)` does nothing, and the loop skips
  callbacks for which only the fallback applies.
- `stateaccess(callback) -> Access`: what learner state the handlers may read and write.
- `runafter(callback) -> tuple[type, ...]`: callback types this one must run after.
- `resolveconflict(a, b)`: how two callbacks that share state (one writes what the other
  reads or writes) are ordered; looked up in both argument orders.
- `produces(callback_type) -> tuple[str, ...]`: the `cbstate` keys a callback type publishes
  for others to read; dispatched on the class (`cb: type[Recorder]`), since the graph asks it
  about callbacks that are missing from a learner.

Extending:
    Define the methods at module level in your own code:

        @fp.on.dispatch
        def _(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Printer, learner):
            print(learner.batch.loss)

        @fp.stateaccess.dispatch
        def _(cb: Printer):
            return fp.Access(batch=fp.Access(loss=fp.Read()))

    A callback may also carry other callbacks, a group: it returns them from
    `subcallbacks()`, and the learner adds them recursively, after the group. `init(learner)`
    runs once when a learner adopts the callback, with its protected view.
"""

from __future__ import annotations

import attrs

from .access import Access
from .dispatch import GenericFunction
from .events import BUILTIN_EVENTS, Event
from .phases import Phase

__all__ = [
    "Callback",
    "NoConflict",
    "NotDefined",
    "RunFirst",
    "UnsafeCallback",
    "Unresolvable",
    "handler_of",
    "on",
    "produces",
    "resolveconflict",
    "runafter",
    "sit_out",
    "stateaccess",
]


class Callback:
    """Base class of callbacks. Subclass it (usually with `@attrs.define`)."""

    def init(self, learner) -> None:
        """Called once when a learner adopts this callback (with the protected view)."""

    def subcallbacks(self) -> tuple[Callback, ...]:
        """The callbacks this one carries (a group); the learner adds them after it.

        Override it to make a group; the default, `()`, is a plain callback.
        """
        return ()


class UnsafeCallback(Callback):
    """A callback whose handlers get the raw learner: no permission checks, no graph edges.

    The escape hatch for debugging and for code that must reach everything; `fp.explain`
    flags these. Prefer declaring `stateaccess`.
    """


@attrs.frozen
class NotDefined:
    """`resolveconflict` default: a writer runs before its readers; two writers are an error."""


@attrs.frozen
class Unresolvable:
    """The two callbacks cannot be used together."""


@attrs.frozen
class NoConflict:
    """The two callbacks' writes commute. A writer still runs before the other's reads of what
    it writes; a pair nothing else orders keeps the order given (never at the same time)."""


@attrs.frozen
class RunFirst:
    """`callback` (one of the two arguments) runs before the other, for all the state they
    share: also how a reader asks for a value before the other callback writes it."""

    callback: Callback = attrs.field(eq=False)


def _on(event: Event, phase: Phase, callback: Callback, learner):
    """on(event, phase, callback, learner)

    Handle `event` fired during `phase` for `callback`. `learner` is the callback's protected
    view: reads and writes outside `stateaccess(callback)` raise `fp.ProtectedError`.
    """


def _stateaccess(callback: Callback):
    """stateaccess(callback) -> fp.Access

    The learner state `callback`'s handlers read and write. Default: nothing.
    """
    return Access()


def _runafter(callback: Callback):
    """runafter(callback) -> tuple[type, ...]

    Callback types that must run before `callback` when both are present. Default: none.
    """
    return ()


def _resolveconflict(first: Callback, second: Callback):
    """resolveconflict(first, second) -> NotDefined | Unresolvable | NoConflict | RunFirst

    Consulted for every pair whose declared paths overlap with at least one write (read/write
    pairs included); looked up in both argument orders.
    """
    return NotDefined()


def _produces(callback_type):
    """produces(callback_type) -> tuple[str, ...]

    The `cbstate` keys that callbacks of the class `callback_type` publish for others to read,
    e.g. `("history",)` for `Recorder`. A callback that reads a key no other callback writes is
    a `MissingStateError` naming the classes that declare the key, so declare it on the class:

        @fp.produces.dispatch
        def _(callback_type: type[Counter]):
            return ("count",)

    Subclasses inherit the declaration. Default: none.
    """
    return ()


on = GenericFunction(_on, arity=4, params="event, phase, callback, learner")
stateaccess = GenericFunction(_stateaccess, arity=1, params="callback")
runafter = GenericFunction(_runafter, arity=1, params="callback")
resolveconflict = GenericFunction(_resolveconflict, arity=2, params="first, second")
produces = GenericFunction(_produces, arity=1, params="callback_type")


def handler_of(event: type[Event], phase: type[Phase], callback: type[Callback]):
    """The `on` method that runs for a callback of type `callback` when `event` fires in
    `phase`, or `None` when only the no-op fallback applies.

    Handlers receive a protected view, never a `Learner`, so the fourth parameter is resolved
    for any object: annotate it as nothing (or `Any`).
    """
    return on.which(event, phase, callback, object)


def sit_out(callback: type[Callback], phase: type[Phase]) -> None:
    """Callbacks of type `callback` take no part in phases of type `phase`: for every
    built-in event in such a phase the no-op applies, so they are in no plan there and
    `fp.explain` does not list them. Methods for a subclass of `callback` still run in
    `phase` (they win the tie), and so do methods for a subclass of `phase`, or for exactly
    `(event, phase, callback)` registered after this call (a later method replaces it).

        fp.sit_out(MyLogger, fp.PredictionPhase)  # logs training runs, not predict/evaluate
    """
    for event in BUILTIN_EVENTS:
        on.dispatch_fallback(event, phase, callback, object)
