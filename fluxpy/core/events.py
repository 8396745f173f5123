"""Events: the points of the training loop that callbacks react to.

Events form a class hierarchy so that a handler for a base class covers its subclasses
(`plum` picks the most specific method). Instances are frozen attrs values compared by
type, so `fp.StepEnd() == fp.StepEnd()`.

Where each built-in event fires in the built-in training step:

| event           | fired                                   | `learner.batch` holds          |
|-----------------|-----------------------------------------|--------------------------------|
| `FitBegin`      | once, before the first epoch            | (nothing)                      |
| `EpochBegin`    | before the first step of an epoch       | (nothing)                      |
| `StepBegin`     | after the batch is unpacked             | `xs`, `ys`, `update`           |
| `LossBegin`     | after the forward pass                  | + `preds`                      |
| `BackwardBegin` | after the loss (training only)          | + `loss` (may be replaced)     |
| `BackwardEnd`   | after backward (training only)          | gradients on the parameters    |
| `StepEnd`       | after the optimizer update              | everything above               |
| `EpochEnd`      | after the last step of an epoch         | the last step's batch          |
| `FitEnd`        | once, always (also after errors/Ctrl-C) | the last step's batch          |

`FitBegin` and `FitEnd` are fired with a plain `fp.Phase()`.

Extending:
    Subclass `Event` (decorated with `@attrs.frozen`) and fire it from a custom step with
    `learner.handle(MyEvent(), phase)`, or from a handler whose callback declares it with
    `fp.fires` (see `fluxpy.engine.firing`); handlers are written as for built-in events.
"""

from __future__ import annotations

import attrs

__all__ = [
    "BackwardBegin",
    "BackwardEnd",
    "BatchBegin",
    "BatchEnd",
    "EpochBegin",
    "EpochEnd",
    "Event",
    "FitBegin",
    "FitEnd",
    "LossBegin",
    "StepBegin",
    "StepEnd",
]


@attrs.frozen(cache_hash=True)
class Event:
    """Base of all events; subclass it for your own."""

    def __str__(self) -> str:
        return type(self).__name__


@attrs.frozen(cache_hash=True)
class FitBegin(Event):
    """Fired once at the start of `Learner.fit`, with `fp.Phase()`."""


@attrs.frozen(cache_hash=True)
class FitEnd(Event):
    """Fired once at the end of `Learner.fit`, always: also after a cancel, an error or Ctrl-C."""


@attrs.frozen(cache_hash=True)
class EpochBegin(Event):
    """Fired before the first step of an epoch of a phase."""


@attrs.frozen(cache_hash=True)
class EpochEnd(Event):
    """Fired after the last step of an epoch, also after `CancelEpochException`."""


@attrs.frozen(cache_hash=True)
class StepBegin(Event):
    """Fired at the start of a step; `learner.batch.xs` and `.ys` hold the batch."""


@attrs.frozen(cache_hash=True)
class StepEnd(Event):
    """Fired at the end of a step that was not cancelled."""


@attrs.frozen(cache_hash=True)
class LossBegin(Event):
    """Fired after the forward pass; `learner.batch.preds` is set."""


@attrs.frozen(cache_hash=True)
class BackwardBegin(Event):
    """Fired before backward; `learner.batch.loss` is set and may be replaced."""


@attrs.frozen(cache_hash=True)
class BackwardEnd(Event):
    """Fired after backward, before the optimizer update: gradients are on the parameters."""


BatchBegin = StepBegin
BatchEnd = StepEnd

#: The events of a training epoch and of a validation epoch, in the order they fire.
TRAINING_EVENTS: tuple[type[Event], ...] = (
    EpochBegin, StepBegin, LossBegin, BackwardBegin, BackwardEnd, StepEnd, EpochEnd,
)
VALIDATION_EVENTS: tuple[type[Event], ...] = (EpochBegin, StepBegin, LossBegin, StepEnd, EpochEnd)
#: Every built-in event, in the order a fit fires them.
BUILTIN_EVENTS: tuple[type[Event], ...] = (FitBegin, *TRAINING_EVENTS, FitEnd)
