"""`CustomCallback`: a function run on one event, for one-off behaviour without a class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ..core.access import Access
from ..core.callback import Callback, on, stateaccess
from ..core.events import Event
from ..core.phases import Phase

__all__ = ["CustomCallback"]


@attrs.define
class CustomCallback(Callback):
    """Calls `fn(learner)` when an `event` fires in a `phase` (types; subclasses match).

    Args:
        fn: called with the protected view of the learner.
        event: the event type (default: every event).
        phase: the phase type (default: every phase).
        access: what `fn` reads and writes, as for `stateaccess`.

    Example:
        `fp.CustomCallback(lambda l: print(l.batch.loss), fp.StepEnd, fp.TrainingPhase,
        access=fp.Access(batch=fp.Access(loss=fp.Read())))`
    """

    fn: Callable[[Any], Any]
    event: type = Event
    phase: type = Phase
    access: Access = attrs.field(factory=Access)

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.event, type) and issubclass(self.event, Event)):
            raise TypeError(f"CustomCallback(event={self.event!r}): pass an event type such "
                            "as fp.StepEnd (the class, not an instance)")
        if not (isinstance(self.phase, type) and issubclass(self.phase, Phase)):
            raise TypeError(f"CustomCallback(phase={self.phase!r}): pass a phase type such as "
                            "fp.TrainingPhase (the class, not an instance)")


@stateaccess.dispatch
def _custom_access(cb: CustomCallback):
    return cb.access


@on.dispatch
def _custom_on(event: Event, phase: Phase, cb: CustomCallback, learner):
    if isinstance(event, cb.event) and isinstance(phase, cb.phase):
        cb.fn(learner)
