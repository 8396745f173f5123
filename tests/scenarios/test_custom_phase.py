"""A user's own phase with its own step and its own event, trained through fit(phases=...)."""

import attrs
import torch

import fluxpy as fp
from fluxpy.testing import test_batches, test_learner


class TwoPassPhase(fp.AbstractTrainingPhase):
    """Trains with the loss of two forward passes, firing `Halfway` between them."""


class Halfway(fp.Event):
    """Fired by TwoPassPhase's step after the first forward pass."""


@fp.step.dispatch
def _two_pass_step(learner, phase: TwoPassPhase, batch):
    xs, ys = batch
    with fp.run_step(learner, phase, xs=xs, ys=ys) as state:
        first = learner.model(state.xs)
        learner.handle(Halfway(), phase)
        state.preds = learner.model(state.xs)
        state.loss = learner.loss_fn(first, state.ys) + learner.loss_fn(state.preds, state.ys)
        state.loss.backward()
        fp.update_parameters(learner)


@attrs.define
class Tally(fp.Callback):
    """Counts `Halfway` events and training-phase step ends, and the phases they came in."""

    halfway: int = 0
    steps: int = 0
    phases: set = attrs.Factory(set)


@fp.on.dispatch
def _tally_halfway(event: Halfway, phase: fp.Phase, cb: Tally, learner):
    cb.halfway += 1
    cb.phases.add(type(phase))


@fp.on.dispatch
def _tally_step_end(event: fp.StepEnd, phase: fp.AbstractTrainingPhase, cb: Tally, learner):
    cb.steps += 1
    cb.phases.add(type(phase))


def fit_two_pass(n_epochs=1):
    tally = Tally()
    learner = test_learner(fp.Recorder(), tally)
    data = test_batches(4, generator=torch.Generator().manual_seed(1))
    learner.fit(n_epochs, phases=[(TwoPassPhase(), data)])
    return learner, tally


def test_custom_step_fires_the_custom_event_once_per_step():
    _, tally = fit_two_pass(2)
    assert tally.halfway == 8


def test_handler_for_abstract_training_phase_fires_in_the_custom_phase():
    _, tally = fit_two_pass(2)
    assert tally.steps == 8
    assert tally.phases == {TwoPassPhase}


def test_recorder_counts_the_custom_phase():
    learner, _ = fit_two_pass(3)
    history = learner.cbstate.history[TwoPassPhase()]
    assert (history.epochs, history.steps, history.steps_epoch) == (3, 12, 4)
    assert fp.TrainingPhase() not in learner.cbstate.history


def test_custom_phase_trains_the_model():
    learner = test_learner()
    data = test_batches(16, generator=torch.Generator().manual_seed(1))
    learner.fit(5, phases=[(TwoPassPhase(), data)])
    assert abs(learner.model.coeff.item() - 3.0) < 0.1


def test_custom_phase_runs_in_train_mode():
    learner = test_learner()
    learner.model.eval()
    learner.fit(1, phases=[(TwoPassPhase(), test_batches(1))])
    assert learner.model.training


def test_explain_lists_the_custom_event_for_the_custom_phase():
    text = fp.explain(test_learner(Tally()), phases=[TwoPassPhase()])
    assert "Halfway  Tally" in text


def test_custom_step_cancelled_at_step_begin_skips_that_step_only():
    calls = []

    def cancel_first(learner):
        calls.append(1)
        if len(calls) == 1:
            raise fp.CancelStepException()

    tally = Tally()
    learner = test_learner(fp.Recorder(), tally,
                           fp.CustomCallback(cancel_first, fp.StepBegin, TwoPassPhase))
    learner.fit(1, phases=[(TwoPassPhase(), test_batches(4))])
    assert learner.cbstate.history[TwoPassPhase()].steps == 3
    assert tally.halfway == 3


def test_custom_phase_epoch_cancelled_at_epoch_begin_goes_on_with_the_next_phase():
    def cancel(learner):
        raise fp.CancelEpochException()

    learner = test_learner(fp.Recorder(), fp.CustomCallback(cancel, fp.EpochBegin, TwoPassPhase))
    result = learner.fit(2, phases=[(TwoPassPhase(), test_batches(4)),
                                    (fp.ValidationPhase(), test_batches(2))])
    assert result.epochs == 2
    assert learner.cbstate.history[TwoPassPhase()].epochs == 2
    assert learner.cbstate.history[TwoPassPhase()].steps == 0
    assert learner.cbstate.history[fp.ValidationPhase()].steps == 4
