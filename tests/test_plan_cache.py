"""The plan cache: which handlers an event runs is resolved once, not per fire.

A plan holds only callbacks with a real method for the (event, phase); the no-op fallback is
never called; a newly registered method is picked up at the next fire; each (event, phase)
is planned once. Each test defines its own callback classes: methods registered on `fp.on`
persist for the whole session.
"""

import collections

import pytest

import fluxpy as fp
import fluxpy.core.callback
from fluxpy.testing import test_learner

N_BATCHES = 4


def _counting_fallback(event, phase, callback, learner):
    # Runs as the code of `fp.on`'s fallback, so it sees fluxpy.core.callback's globals.
    _FALLBACK_CALLS.append(type(callback).__name__)  # noqa: F821


@pytest.fixture
def fallback_calls(monkeypatch):
    """The names of the callbacks the no-op fallback of `fp.on` was called for."""
    calls = []
    monkeypatch.setattr(fluxpy.core.callback, "_FALLBACK_CALLS", calls, raising=False)
    monkeypatch.setattr(fp.on.fallback, "__code__", _counting_fallback.__code__)
    return calls


@pytest.fixture
def plan_builds(monkeypatch):
    """`(event type, phase type) -> times planned`, for every learner made in the test."""
    builds = collections.Counter()
    plan = fp.Learner._plan

    def counting_plan(self, event, phase):
        builds[type(event).__name__, type(phase).__name__] += 1
        return plan(self, event, phase)

    monkeypatch.setattr(fp.Learner, "_plan", counting_plan)
    return builds


def _planned(learner, event, phase):
    return [h.name for h in learner._plan(event, phase)]


def test_the_fallback_spy_sees_a_direct_call(fallback_calls):
    class Direct(fp.Callback):
        pass

    fp.on(fp.StepEnd(), fp.TrainingPhase(), Direct(), None)
    assert fallback_calls == ["Direct"]


def test_callback_without_a_handler_for_an_event_is_not_in_its_plan(fallback_calls):
    class EpochEndOnly(fp.Callback):
        def __init__(self):
            self.epoch_ends = 0

    @fp.on.dispatch
    def _epoch_end_only(event: fp.EpochEnd, phase: fp.Phase, cb: EpochEndOnly, learner):
        cb.epoch_ends += 1

    cb = EpochEndOnly()
    learner = test_learner(fp.Recorder(), cb, n_batches=N_BATCHES)
    learner.fit(2)
    assert _planned(learner, fp.StepEnd(), fp.TrainingPhase()) == ["Recorder"]
    assert _planned(learner, fp.EpochEnd(), fp.TrainingPhase()) == ["Recorder", "EpochEndOnly"]
    assert cb.epoch_ends == 4  # 2 epochs of training and validation
    assert fallback_calls == []


def test_callback_with_only_the_fallback_is_in_no_plan_and_never_called(fallback_calls):
    class Silent(fp.Callback):
        pass

    learner = test_learner(Silent(), n_batches=N_BATCHES)
    result = learner.fit(2)
    for event in (fp.StepBegin(), fp.LossBegin(), fp.BackwardBegin(), fp.BackwardEnd(),
                  fp.StepEnd(), fp.EpochBegin(), fp.EpochEnd()):
        for phase in (fp.TrainingPhase(), fp.ValidationPhase()):
            assert _planned(learner, event, phase) == []
    assert _planned(learner, fp.FitBegin(), fp.Phase()) == []
    assert result.epochs == 2
    assert fallback_calls == []


def test_registering_a_method_makes_it_run_at_the_next_fire():
    class Late(fp.Callback):
        def __init__(self):
            self.steps = 0

    cb = Late()
    learner = test_learner(cb, n_batches=N_BATCHES)
    learner.fit(1)
    assert _planned(learner, fp.StepEnd(), fp.TrainingPhase()) == []

    @fp.on.dispatch
    def _late_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Late, learner):
        cb.steps += 1

    learner.handle(fp.StepEnd(), fp.TrainingPhase())
    assert cb.steps == 1
    learner.fit(1)
    assert cb.steps == 1 + N_BATCHES


def test_registering_a_method_in_a_handler_takes_effect_within_the_epoch():
    class Registrar(fp.Callback):
        def __init__(self):
            self.late_calls = 0

    def _registrar_late(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Registrar, learner):
        cb.late_calls += 1

    @fp.on.dispatch
    def _registrar_step_begin(event: fp.StepBegin, phase: fp.TrainingPhase, cb: Registrar,
                              learner):
        if fp.on.which(fp.StepEnd, fp.TrainingPhase, Registrar, fp.Learner) is None:
            fp.on.dispatch(_registrar_late)

    cb = Registrar()
    test_learner(cb, n_batches=N_BATCHES).fit(1)
    assert cb.late_calls == N_BATCHES  # from the first step on


def test_a_callback_added_in_a_handler_runs_from_the_next_epoch():
    class Late(fp.Callback):
        def __init__(self):
            self.backward_ends = 0

    @fp.on.dispatch
    def _late_backward_end(event: fp.BackwardEnd, phase: fp.TrainingPhase, cb: Late, learner):
        cb.backward_ends += 1

    class Adder(fp.UnsafeCallback):
        def __init__(self):
            self.late, self.asked = Late(), False

    @fp.on.dispatch
    def _adder_step_begin(event: fp.StepBegin, phase: fp.TrainingPhase, cb: Adder, learner):
        if not cb.asked:  # it joins at the next epoch boundary
            cb.asked = True
            learner.add_callback(cb.late)

    cb = Adder()
    test_learner(cb, n_batches=N_BATCHES).fit(2)
    assert cb.late.backward_ends == N_BATCHES  # the second training epoch's steps


def test_plans_are_built_once_per_event_and_phase(plan_builds):
    class Counter(fp.Callback):
        pass

    @fp.on.dispatch
    def _counter_step_end(event: fp.StepEnd, phase: fp.Phase, cb: Counter, learner):
        pass

    learner = test_learner(fp.Recorder(), Counter(), n_batches=N_BATCHES)
    learner.fit(3)
    assert plan_builds[("StepEnd", "TrainingPhase")] == 1
    assert plan_builds[("StepEnd", "ValidationPhase")] == 1
    assert plan_builds[("EpochEnd", "TrainingPhase")] == 1
    assert plan_builds[("FitBegin", "Phase")] == 1
    assert set(plan_builds.values()) == {1}


def test_a_custom_event_is_planned_at_its_first_fire_only(plan_builds):
    class Ping(fp.Event):
        pass

    learner = test_learner(fp.Recorder(), n_batches=N_BATCHES)
    for _ in range(5):
        learner.handle(Ping(), fp.TrainingPhase())
    assert plan_builds[("Ping", "TrainingPhase")] == 1


def test_registering_a_method_replans_on_the_next_fire(plan_builds):
    class Replanned(fp.Callback):
        pass

    learner = test_learner(Replanned(), n_batches=N_BATCHES)
    learner.fit(1)
    assert plan_builds[("StepEnd", "TrainingPhase")] == 1

    @fp.on.dispatch
    def _replanned_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: Replanned, learner):
        pass

    learner.fit(1)
    assert plan_builds[("StepEnd", "TrainingPhase")] == 2
