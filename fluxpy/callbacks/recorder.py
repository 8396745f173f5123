"""`Recorder`: counts epochs and steps per phase in `learner.cbstate.history`."""

from __future__ import annotations

import time

import attrs

from ..core.access import Access, Write
from ..core.callback import Callback, on, produces, stateaccess
from ..core.events import EpochBegin, EpochEnd, StepEnd
from ..core.phases import Phase

__all__ = ["Histories", "History", "Recorder"]


@attrs.define
class History:
    """Counters of one phase: completed `epochs`, `steps` (all epochs), `steps_epoch`
    (this epoch), and each completed epoch's wall time in seconds."""

    epochs: int = 0
    steps: int = 0
    steps_epoch: int = 0
    epoch_times: list[float] = attrs.Factory(list)


class Histories(dict):
    """`learner.cbstate.history`: a `History` per phase. A phase that has not run reads as an
    empty `History` (as in FluxTraining), without being added: `phase in history` stays false."""

    def __missing__(self, phase: Phase) -> History:
        return History()


@attrs.define
class Recorder(Callback):
    """Keeps `learner.cbstate.history[phase]`, a `History`. Cancelled steps are not counted.

    History accumulates over `fit` calls, so `fit(2); fit(3)` records 5 epochs.
    """

    _started: dict = attrs.field(factory=dict, init=False, repr=False)  # phase -> perf_counter()

    def init(self, learner) -> None:
        if "history" not in learner.cbstate:
            learner.cbstate.history = Histories()

    def state_dict(self) -> dict:
        """The seconds each running epoch has taken so far (a checkpoint in the middle of an
        epoch resumes its clock), else nothing."""
        now = time.perf_counter()
        return {"running": {phase: now - started for phase, started in self._started.items()}}

    def load_state_dict(self, state: dict) -> None:
        now = time.perf_counter()
        self._started = {phase: now - float(spent) for phase, spent in state["running"].items()}


@stateaccess.dispatch
def _recorder_access(cb: Recorder):
    return Access(cbstate=Access(history=Write()))


@produces.dispatch
def _recorder_produces(callback_type: type[Recorder]):
    return ("history",)


@on.dispatch
def _recorder_epoch_begin(event: EpochBegin, phase: Phase, cb: Recorder, learner):
    history = learner.cbstate.history.setdefault(phase, History())
    history.steps_epoch = 0
    cb._started[phase] = time.perf_counter()


@on.dispatch
def _recorder_step_end(event: StepEnd, phase: Phase, cb: Recorder, learner):
    history = learner.cbstate.history[phase]
    history.steps += 1
    history.steps_epoch += 1


@on.dispatch
def _recorder_epoch_end(event: EpochEnd, phase: Phase, cb: Recorder, learner):
    if phase not in cb._started:  # cancelled at EpochBegin before this Recorder's turn
        _recorder_epoch_begin(event, phase, cb, learner)
    history = learner.cbstate.history[phase]
    history.epochs += 1
    history.epoch_times.append(time.perf_counter() - cb._started.pop(phase))
