"""Events fired by callbacks: `fp.fires` declares them, the learner checks each fire.

A handler fires an event as a custom step does, with `learner.handle(MyEvent(), phase)` on
its view. Its callback declares what it fires:

    @fp.fires.dispatch
    def _(cb: Pinger):
        return (Ping,)

Its view then has `handle`, and `fp.explain` lists the events it fires. Firing is declared,
never implicit: `handle` on the view of a callback that declares nothing is refused, and an
event that is not an instance of a declared type is a `fp.CallbackDeclarationError` naming
the declaration to add, so the handlers a callback sets off are written where it is defined
and `explain` never misses one. (`UnsafeCallback`s get the raw learner and may fire anything.)

The handlers of a fired event run with their own views, one after the other in the firing
handler's thread (a thread pool waiting on itself could run out of threads), before
`handle` returns. A handler they run may fire in turn, with its own declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from ..core.callback import Callback
from ..core.dispatch import GenericFunction
from ..core.errors import CallbackDeclarationError
from ..core.events import Event

__all__ = ["check_fire", "fires", "firing", "firing_callback"]


def _fires(callback: Callback):
    """fires(callback) -> tuple[type[fp.Event], ...]

    The event types `callback`'s handlers fire with `learner.handle` (subclasses included).
    Default: none.
    """
    return ()


fires = GenericFunction(_fires, arity=1, params="callback")

#: The callback whose handler is running, while it is one that declares `fires`.
_FIRING: ContextVar[Callback | None] = ContextVar("fluxpy_firing", default=None)


def firing_callback() -> Callback | None:
    """The declaring callback whose handler runs in this thread now, if any."""
    return _FIRING.get()


def firing(method: Callable[..., Any], callback: Callback) -> Callable[..., Any]:
    """`method`, run as `callback`'s: what it fires is checked against `fires(callback)`."""

    def run(event: Event, phase: Any, cb: Callback, learner: Any) -> Any:
        token = _FIRING.set(callback)
        try:
            return method(event, phase, cb, learner)
        finally:
            _FIRING.reset(token)

    run.__module__, run.__qualname__ = method.__module__, method.__qualname__
    return run


def check_fire(callback: Callback, event: Event) -> None:
    """Raise `CallbackDeclarationError` unless `fires(callback)` covers `event`."""
    declared = fires(callback)
    if isinstance(event, declared):
        return
    name, kind = type(callback).__name__, type(event).__name__
    listed = ", ".join(t.__name__ for t in declared)
    raise CallbackDeclarationError(
        f"{name} fired {kind}, which fires({name}) does not declare (it declares {listed}). "
        f"Add it: @fp.fires.dispatch def _(cb: {name}): return ({listed}, {kind})"
    )
