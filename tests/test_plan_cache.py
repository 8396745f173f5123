"""Plans: which handlers an event runs is resolved once, not per fire.

A plan holds only callbacks with a real method for the (event, phase); a callback with only
the no-op fallback is in no plan, so it is never called; a newly registered method is picked
up at the next step or fire; each (event, phase) is planned once (`learner.plans.builds`
counts them). Each test defines its own callback classes: methods registered on `fp.on`
persist for the whole session.
"""

import pytest

import fluxpy as fp
from fluxpy.testing import test_learner

N_BATCHES = 4
#: The (event, phase) pairs a fit of training and validation plans: FitBegin and FitEnd, and
#: StepBegin, LossBegin, BackwardBegin, BackwardEnd, StepEnd (the step's plan), EpochBegin
#: and EpochEnd in each of the two phases.
PAIRS_OF_A_FIT = 2 + 2 * 7


def _planned(learner, event, phase):
    return [h.name for h in learner.plans.handlers(event, phase)]


def test_callback_without_a_handler_for_an_event_is_not_in_its_plan():
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


def test_callback_with_only_the_fallback_is_in_no_plan():
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


def test_registering_a_method_in_a_handler_takes_effect_from_the_next_step():
    class Registrar(fp.Callback):
        def __init__(self):
            self.late_calls = 0

    def _registrar_late(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Registrar, learner):
        cb.late_calls += 1

    @fp.on.dispatch
    def _registrar_step_begin(event: fp.StepBegin, phase: fp.TrainingPhase, cb: Registrar,
                              learner):
        if fp.on.which(fp.StepEnd, fp.TrainingPhase, Registrar, object) is None:
            fp.on.dispatch(_registrar_late)

    cb = Registrar()
    test_learner(cb, n_batches=N_BATCHES).fit(1)
    assert cb.late_calls == N_BATCHES - 1  # the step's plan was fetched when it began


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


def test_plans_are_built_once_per_event_and_phase():
    class Counter(fp.Callback):
        pass

    @fp.on.dispatch
    def _counter_step_end(event: fp.StepEnd, phase: fp.Phase, cb: Counter, learner):
        pass

    learner = test_learner(fp.Recorder(), Counter(), n_batches=N_BATCHES)
    learner.fit(1)
    assert learner.plans.builds == PAIRS_OF_A_FIT
    learner.fit(2)
    assert learner.plans.builds == PAIRS_OF_A_FIT


def test_a_custom_event_is_planned_at_its_first_fire_only():
    class Ping(fp.Event):
        pass

    learner = test_learner(fp.Recorder(), n_batches=N_BATCHES)
    for _ in range(5):
        learner.handle(Ping(), fp.TrainingPhase())
    assert learner.plans.builds == 1


def test_registering_a_method_replans_on_the_next_fire():
    class Replanned(fp.Callback):
        pass

    learner = test_learner(Replanned(), n_batches=N_BATCHES)
    learner.fit(1)
    assert learner.plans.builds == PAIRS_OF_A_FIT

    @fp.on.dispatch
    def _replanned_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: Replanned, learner):
        pass

    learner.fit(1)
    assert learner.plans.builds == 2 * PAIRS_OF_A_FIT
    assert _planned(learner, fp.EpochEnd(), fp.ValidationPhase()) == ["Replanned"]


def test_a_change_of_callbacks_makes_new_plans():
    learner = test_learner(fp.Recorder(), n_batches=N_BATCHES)
    learner.fit(1)
    plans = learner.plans
    learner.add_callback(fp.Metrics())
    assert learner.plans is not plans
    assert _planned(learner, fp.StepEnd(), fp.TrainingPhase()) == ["Recorder", "Metrics"]


@pytest.mark.parametrize("phase", [fp.TrainingPhase(), fp.ValidationPhase()])
def test_the_step_plan_names_the_plan_of_each_step_event(phase):
    learner = test_learner(fp.Recorder(), fp.Metrics())
    plan = learner.plans.step(phase)
    assert plan.step_end == learner.plans.handlers(fp.StepEnd(), phase)
    assert [h.name for h in plan.step_end] == ["Recorder", "Metrics"]
    assert plan.step_begin == plan.loss_begin == plan.backward_begin == plan.backward_end == ()
