"""Property: cancel exceptions thrown at random events, each within the scope it cancels, end
fit normally with FitEnd fired exactly once and the Recorder's counters consistent."""

from collections import Counter

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

import fluxpy as fp
from fluxpy.testing import test_batches, test_learner

STEP_EVENTS = ("StepBegin", "LossBegin", "BackwardBegin", "BackwardEnd", "StepEnd")
VALIDATION_STEP_EVENTS = ("StepBegin", "LossBegin", "StepEnd")
#: Where each exception may be raised: inside the scope it ends.
SCOPES = {
    fp.CancelStepException: STEP_EVENTS,
    fp.CancelEpochException: ("EpochBegin", *STEP_EVENTS, "EpochEnd"),
    fp.CancelFitException: ("FitBegin", "EpochBegin", *STEP_EVENTS, "EpochEnd", "FitEnd"),
}


@attrs.define
class Injector(fp.Callback):
    """Raises `plan[(event, phase, n)]` at the n-th firing of event in phase; counts steps begun
    and steps it cancelled, per phase."""

    plan: dict
    fired: Counter = attrs.Factory(Counter)
    steps_begun: Counter = attrs.Factory(Counter)
    steps_cancelled: Counter = attrs.Factory(Counter)
    fit_cancelled: bool = False
    active: bool = True


@fp.on.dispatch
def _inject(event: fp.Event, phase: fp.Phase, cb: Injector, learner):
    key = (type(event).__name__, type(phase).__name__)
    cb.fired[key] += 1
    if key[0] == "StepBegin":
        cb.steps_begun[key[1]] += 1
    exc = cb.plan.get((*key, cb.fired[key])) if cb.active else None
    if exc is None:
        return
    if key[0] in STEP_EVENTS:
        cb.steps_cancelled[key[1]] += 1
    cb.fit_cancelled |= exc is fp.CancelFitException
    raise exc(f"injected at {key}")


@attrs.define
class Observer(fp.Callback):
    """Counts the events that got past the injector."""

    seen: Counter = attrs.Factory(Counter)
    steps_this_epoch: Counter = attrs.Factory(Counter)
    in_epoch: set = attrs.Factory(set)


@fp.on.dispatch
def _observe(event: fp.Event, phase: fp.Phase, cb: Observer, learner):
    name, phase_name = type(event).__name__, type(phase).__name__
    cb.seen[name, phase_name] += 1
    if name == "EpochBegin":
        cb.steps_this_epoch[phase_name] = 0
        cb.in_epoch.add(phase_name)
    elif name == "EpochEnd":
        if phase_name not in cb.in_epoch:  # its EpochBegin was cancelled: no step ran
            cb.steps_this_epoch[phase_name] = 0
        cb.in_epoch.discard(phase_name)
    elif name == "StepEnd":
        cb.steps_this_epoch[phase_name] += 1


def _injection(phases):
    def for_kind(kind):
        events = st.sampled_from(SCOPES[kind])
        return st.tuples(events, st.sampled_from(phases), st.integers(1, 6)).map(
            lambda t: _fit_phase(t, kind))

    return st.sampled_from(list(SCOPES)).flatmap(for_kind)


def _fit_phase(injection, kind):
    event, phase, n = injection
    if event in ("FitBegin", "FitEnd"):
        phase, n = "Phase", 1
    elif phase == "ValidationPhase" and event in ("BackwardBegin", "BackwardEnd"):
        event = "StepEnd"
    return (event, phase, n), kind


runs = st.fixed_dictionaries({
    "epochs": st.integers(1, 3),
    "n_train": st.integers(1, 4),
    "n_valid": st.integers(0, 3),
    "injections": st.lists(_injection(["TrainingPhase", "ValidationPhase"]), max_size=4),
})


def check_counters(learner, injector, observer):
    history = learner.cbstate.history
    for phase in (fp.TrainingPhase(), fp.ValidationPhase()):
        name = type(phase).__name__
        if observer.seen["EpochBegin", name] + observer.seen["EpochEnd", name] == 0:
            assert phase not in history  # every epoch of it was cancelled before Recorder's turn
            continue
        h = history[phase]
        assert h.steps == injector.steps_begun[name] - injector.steps_cancelled[name]
        assert h.steps == observer.seen["StepEnd", name]
        assert h.epochs == observer.seen["EpochEnd", name] == len(h.epoch_times)
        assert h.steps_epoch == observer.steps_this_epoch[name]


@settings(max_examples=50, deadline=None)
@given(runs)
def test_random_cancels_keep_recorder_consistent_and_fit_end_once(run):
    plan = dict(run["injections"])
    injector, observer = Injector(plan), Observer()
    learner = test_learner(injector, fp.Recorder(), observer, n_batches=run["n_train"])
    valid = test_batches(run["n_valid"]) or None
    data = (test_batches(run["n_train"]), valid)

    result = learner.fit(run["epochs"], data=data)
    assert injector.fired["FitEnd", "Phase"] == 1
    assert result.stopped_early == injector.fit_cancelled
    check_counters(learner, injector, observer)

    injector.active = False  # a clean fit afterwards keeps counting from there
    assert learner.fit(1, data=data).epochs == 1
    assert injector.fired["FitEnd", "Phase"] == 2
    check_counters(learner, injector, observer)
