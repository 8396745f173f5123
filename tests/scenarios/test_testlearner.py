"""FluxTraining.jl's own expectations, ported: y = 3x with one parameter, L1 loss, SGD lr 1e-3,
16 batches of 8 (fluxpy.testing.test_learner)."""

import math

import fluxpy as fp
from fluxpy.testing import test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()


def cancel_step(learner):
    raise fp.CancelStepException()


def test_five_epochs_learn_the_coefficient_within_a_tenth():
    learner = test_learner()
    learner.fit(5)
    assert abs(learner.model.coeff.item() - 3.0) < 0.1


def test_recorder_counts_ten_epochs_of_sixteen_steps():
    learner = test_learner(fp.Recorder())
    learner.fit(10)
    history = learner.cbstate.history[TRAIN]
    assert (history.epochs, history.steps, history.steps_epoch) == (10, 160, 16)
    assert len(history.epoch_times) == 10


def test_throttled_cancel_of_every_second_step_halves_the_steps():
    canceller = fp.throttle(fp.CustomCallback(cancel_step, fp.StepBegin, fp.TrainingPhase),
                            fp.StepBegin, every=2)
    learner = test_learner(fp.Recorder(), canceller)
    learner.fit(10)
    history = learner.cbstate.history[TRAIN]
    assert (history.epochs, history.steps, history.steps_epoch) == (10, 80, 8)
    assert learner.cbstate.history[VALID].steps == 160


def test_nan_weights_end_fit_with_no_training_epoch_and_no_exception():
    learner = test_learner(fp.Recorder(), fp.StopOnNaNLoss())
    learner.model.coeff.data.fill_(math.nan)
    result = learner.fit(5)
    assert result.epochs == 0
    assert learner.cbstate.history[TRAIN].epochs == 0
    assert result.stopped_early
    assert "nan" in result.stop_reason.lower()


def test_metric_restricted_to_validation_appears_only_there():
    def abs_error(preds, ys):
        return (preds - ys).abs().mean()

    learner = test_learner(fp.Metrics(fp.Metric(abs_error, phase=fp.ValidationPhase)))
    learner.fit(2)
    epochs = learner.cbstate.metricsepoch
    assert set(epochs[TRAIN]) == {"loss"}
    assert set(epochs[VALID]) == {"loss", "abs_error"}
    assert len(epochs[VALID]["abs_error"]) == 2
