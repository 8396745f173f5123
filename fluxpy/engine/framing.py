"""How steps and epochs are framed: the events at their edges, and what a cancel skips.

`run_step` and `run_epoch` frame the built-in step and epoch, and custom ones alike.

What fires under each kind of termination:

| raised                   | rest of step | `StepEnd` | `EpochEnd` | rest of fit | `FitEnd` |
|--------------------------|--------------|-----------|------------|-------------|----------|
| `CancelStepException`    | skipped      | no        | yes        | continues   | yes      |
| `CancelEpochException`   | skipped      | no        | yes        | continues   | yes      |
| `CancelFitException`     | skipped      | no        | no         | ends normally | yes    |
| any other error, Ctrl-C  | skipped      | no        | no         | propagates  | yes      |

Raised by a handler of the event that closes its scope (`StepEnd`, `EpochEnd`, `FitEnd`), a
cancel exception skips the remaining handlers of that event, and the loop goes on as above.

"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ..core.errors import CancelEpochException, CancelFitException, CancelStepException
from ..core.events import EpochBegin, EpochEnd, Event, StepBegin, StepEnd
from ..core.phases import Phase
from ..core.state import Batch
from .plans import StepPlan

__all__ = ["StepFrame", "run_epoch", "run_step"]

STEP_BEGIN, STEP_END = StepBegin(), StepEnd()
EPOCH_BEGIN, EPOCH_END = EpochBegin(), EpochEnd()


@contextmanager
def run_epoch(learner, phase: Phase, begin: bool = True) -> Iterator[None]:
    """Frame an epoch: `EpochBegin`, the body, `EpochEnd` (also after `CancelEpochException`).

    A context manager cannot skip its body, so `CancelEpochException` raised at `EpochBegin`
    fires `EpochEnd` and then leaves the `with` statement; `Learner.fit` catches it. A
    `CancelFitException` raised at `EpochEnd` leaves with `epoch_ended` set on it: `fit`
    counts that epoch as run. `begin=False` (an epoch resumed from a mid-epoch checkpoint,
    which began before it) fires no `EpochBegin`.
    """
    try:
        if begin:
            learner.handle(EPOCH_BEGIN, phase)
    except CancelEpochException:
        _end_epoch(learner, phase)
        raise
    with suppress(CancelEpochException):
        yield
    _end_epoch(learner, phase)


def _end_epoch(learner, phase: Phase) -> None:
    try:
        learner.handle(EPOCH_END, phase)
    except CancelEpochException:  # raised at EpochEnd: skips its remaining handlers
        pass
    except CancelFitException as stop:
        stop.epoch_ended = True
        raise


class StepFrame:
    """A step being run (see `run_step`): its phase, its plan and how it fires events."""

    __slots__ = ("batch", "learner", "phase", "plan")

    def __init__(self, learner, phase: Phase, batch: Batch) -> None:
        self.learner = learner
        self.phase = phase
        self.batch = batch
        self.plan: StepPlan = learner.plans.step(phase)

    def fire(self, event: Event, handlers: tuple) -> Batch:
        """Run `handlers`, this step's plan for `event`; returns `learner.batch`, which they
        may have replaced."""
        self.learner.executor.run(event, self.phase, handlers)
        return self.learner.batch

    def __enter__(self) -> Batch:
        self.learner.batch = self.batch
        if self.plan.step_begin:
            return self.fire(STEP_BEGIN, self.plan.step_begin)
        return self.batch

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> bool:
        if kind is not None:
            return issubclass(kind, CancelStepException)
        if self.plan.step_end:
            try:  # noqa: SIM105 (a `suppress` would cost 0.2 us a step)
                self.fire(STEP_END, self.plan.step_end)
            except CancelStepException:  # raised at StepEnd: skips its remaining handlers
                pass
        return False


def run_step(learner, phase: Phase, **state: Any) -> StepFrame:
    """Frame a step: a fresh `learner.batch` from `state`, `StepBegin`, the body, `StepEnd`.

    `with fp.run_step(learner, phase, xs=xs, ys=ys) as batch:` gives the body
    `learner.batch`. `CancelStepException` raised in the body (or a handler) ends the step
    without `StepEnd`. Raised at `StepBegin`, it leaves the `with` statement (a context
    manager cannot skip its body): the built-in epoch catches it and goes on with the next
    batch; a custom epoch that calls `fp.step` itself does the same with
    `contextlib.suppress(fp.CancelStepException)`.
    """
    return StepFrame(learner, phase, Batch(**state))
