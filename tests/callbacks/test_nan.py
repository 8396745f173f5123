"""StopOnNaNLoss: a non-finite loss ends fit normally, before it reaches the weights."""

import io
import math

import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()


def poisoned(value, at=2, n=4):
    """`n` good batches, except that batch `at` has a `value` label."""
    batches = test_batches(n, generator=torch.Generator().manual_seed(1))
    xs, ys = batches[at]
    ys = ys.clone()
    ys[0] = value
    batches[at] = (xs, ys)
    return batches


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_training_loss_stops_fit_before_the_update(value):
    data = poisoned(value)
    learner = test_learner(fp.Recorder(), fp.StopOnNaNLoss())
    result = learner.fit(3, data=(data, None))
    clean = test_learner()
    clean.fit(1, data=(data[:2], None))
    assert result.epochs == 0
    assert result.stop_reason == (f"StopOnNaNLoss: the TrainingPhase loss is {value}; "
                                  "stopped before the optimizer update")
    assert learner.cbstate.history[TRAIN].steps == 2
    assert learner.model.coeff.item() == clean.model.coeff.item()


def test_non_finite_validation_loss_stops_fit():
    learner = test_learner(fp.Recorder(), fp.StopOnNaNLoss())
    result = learner.fit(3, data=(test_batches(2), poisoned(math.nan)))
    assert result.stop_reason.startswith("StopOnNaNLoss: the ValidationPhase loss is nan")
    assert learner.cbstate.history[TRAIN].epochs == 1
    assert learner.cbstate.history[VALID].steps == 3  # checked at StepEnd, after Recorder


def test_finite_losses_run_every_epoch():
    result = test_learner(fp.StopOnNaNLoss()).fit(2)
    assert result == fp.FitResult(epochs=2, stop_reason=None)


def test_stop_runs_fit_end_handlers():
    ends = []
    learner = test_learner(fp.StopOnNaNLoss(),
                           fp.CustomCallback(lambda learner: ends.append(1), fp.FitEnd))
    learner.fit(1, data=(poisoned(math.nan, at=0), None))
    assert ends == [1]


def test_is_a_default_callback():
    learner = test_learner(use_default_callbacks=True)
    learner.replace_callback(fp.ProgressPrinter, fp.ProgressPrinter(enabled=False))
    learner.replace_callback(fp.MetricsPrinter, fp.MetricsPrinter(file=io.StringIO()))
    learner.model.coeff.data.fill_(math.nan)
    assert learner.fit(2).stopped_early


def test_reads_only_the_loss():
    assert fp.stateaccess(fp.StopOnNaNLoss()) == fp.Access(batch=fp.Access(loss=fp.Read()))
