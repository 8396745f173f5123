"""The loop: event order, what fires when something stops it, and what handlers may change."""

import attrs
import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()


@attrs.define
class EventLog(fp.Callback):
    """Records every event as (event name, phase name)."""

    events: list = attrs.Factory(list)

    def names(self, phase=None):
        return [(e, p) for e, p in self.events if phase is None or p == phase]


@fp.on.dispatch
def _log_event(event: fp.Event, phase: fp.Phase, cb: EventLog, learner):
    cb.events.append((type(event).__name__, type(phase).__name__))


def raising(exc, after=0):
    """A handler body that raises `exc` from its (after + 1)-th call on."""
    calls = []

    def fn(learner):
        calls.append(1)
        if len(calls) > after:
            raise exc

    return fn


BATCH = (torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0]))


# -- event order -------------------------------------------------------------------------------


def test_training_step_fires_its_events_in_order():
    log = EventLog()
    test_learner(log).fit(1, phases=[(TRAIN, [BATCH])])
    assert log.names() == [
        ("FitBegin", "Phase"),
        ("EpochBegin", "TrainingPhase"),
        ("StepBegin", "TrainingPhase"),
        ("LossBegin", "TrainingPhase"),
        ("BackwardBegin", "TrainingPhase"),
        ("BackwardEnd", "TrainingPhase"),
        ("StepEnd", "TrainingPhase"),
        ("EpochEnd", "TrainingPhase"),
        ("FitEnd", "Phase"),
    ]


def test_validation_step_fires_its_events_in_order():
    log = EventLog()
    test_learner(log).fit(1, phases=[(VALID, [BATCH])])
    assert log.names("ValidationPhase") == [
        ("EpochBegin", "ValidationPhase"),
        ("StepBegin", "ValidationPhase"),
        ("LossBegin", "ValidationPhase"),
        ("StepEnd", "ValidationPhase"),
        ("EpochEnd", "ValidationPhase"),
    ]


def test_each_epoch_runs_training_then_validation():
    log = EventLog()
    test_learner(log, n_batches=1).fit(2)
    epochs = [(e, p) for e, p in log.events if e in ("EpochBegin", "FitBegin", "FitEnd")]
    assert epochs == [("FitBegin", "Phase"),
                      ("EpochBegin", "TrainingPhase"), ("EpochBegin", "ValidationPhase"),
                      ("EpochBegin", "TrainingPhase"), ("EpochBegin", "ValidationPhase"),
                      ("FitEnd", "Phase")]


def test_fit_returns_the_epochs_run():
    result = test_learner(n_batches=1).fit(3)
    assert result == fp.FitResult(epochs=3, stop_reason=None)
    assert not result.stopped_early


# -- what fires when the loop is stopped -------------------------------------------------------


def test_fit_end_fires_once_after_an_error_in_a_handler():
    log = EventLog()
    boom = fp.CustomCallback(raising(RuntimeError("boom")), fp.LossBegin, fp.TrainingPhase)
    learner = test_learner(log, boom)
    with pytest.raises(RuntimeError, match="boom"):
        learner.fit(1)
    assert log.names()[-2:] == [("LossBegin", "TrainingPhase"), ("FitEnd", "Phase")]
    assert log.names().count(("FitEnd", "Phase")) == 1


def test_fit_end_fires_once_after_cancel_fit_and_the_reason_is_kept():
    log = EventLog()
    stop = fp.CustomCallback(raising(fp.CancelFitException("enough"), after=2), fp.StepEnd,
                             fp.TrainingPhase)
    result = test_learner(log, stop).fit(3)
    assert result == fp.FitResult(epochs=0, stop_reason="enough")
    assert log.names()[-2:] == [("StepEnd", "TrainingPhase"), ("FitEnd", "Phase")]
    assert log.names().count(("FitEnd", "Phase")) == 1


def test_fit_end_fires_once_after_keyboard_interrupt_in_a_handler():
    log = EventLog()
    interrupt = fp.CustomCallback(raising(KeyboardInterrupt()), fp.BackwardEnd)
    with pytest.raises(KeyboardInterrupt):
        test_learner(log, interrupt).fit(1)
    assert log.names()[-2:] == [("BackwardEnd", "TrainingPhase"), ("FitEnd", "Phase")]
    assert log.names().count(("FitEnd", "Phase")) == 1


def test_epoch_end_fires_after_cancel_epoch_and_fit_goes_on():
    log = EventLog()
    cancel = fp.CustomCallback(raising(fp.CancelEpochException(), after=2), fp.StepBegin,
                               fp.TrainingPhase)
    learner = test_learner(fp.Recorder(), log, cancel)
    result = learner.fit(1)
    training = log.names("TrainingPhase")
    assert training[-2:] == [("StepBegin", "TrainingPhase"), ("EpochEnd", "TrainingPhase")]
    assert learner.cbstate.history[TRAIN].steps_epoch == 2
    assert learner.cbstate.history[VALID].steps == 16
    assert result.epochs == 1


def test_cancel_step_skips_the_rest_of_the_step_without_step_end():
    log = EventLog()
    cancel = fp.CustomCallback(raising(fp.CancelStepException()), fp.LossBegin, fp.TrainingPhase)
    test_learner(log, cancel).fit(1, phases=[(TRAIN, [BATCH])])
    assert log.names("TrainingPhase") == [
        ("EpochBegin", "TrainingPhase"),
        ("StepBegin", "TrainingPhase"),
        ("LossBegin", "TrainingPhase"),
        ("EpochEnd", "TrainingPhase"),
    ]


def test_cancelled_step_after_backward_does_not_update_or_keep_gradients():
    cancel = fp.CustomCallback(raising(fp.CancelStepException()), fp.BackwardEnd)
    learner = test_learner(cancel)
    before = learner.model.coeff.detach().clone()
    learner.fit(1, phases=[(TRAIN, [BATCH])])
    assert torch.equal(learner.model.coeff.detach(), before)
    assert learner.model.coeff.grad is None


def test_cancel_epoch_at_epoch_begin_fires_epoch_end_and_skips_the_epoch():
    log = EventLog()
    cancel = fp.CustomCallback(raising(fp.CancelEpochException()), fp.EpochBegin,
                               fp.TrainingPhase)
    result = test_learner(cancel, log).fit(1, phases=[(TRAIN, [BATCH]), (VALID, [BATCH])])
    assert log.names()[:3] == [("FitBegin", "Phase"), ("EpochEnd", "TrainingPhase"),
                               ("EpochBegin", "ValidationPhase")]
    assert result.epochs == 1


def test_cancel_at_a_closing_event_skips_its_remaining_handlers():
    log = EventLog()
    cancels = [fp.CustomCallback(raising(fp.CancelStepException()), fp.StepEnd),
               fp.CustomCallback(raising(fp.CancelEpochException()), fp.EpochEnd)]
    result = test_learner(*cancels, log).fit(2, phases=[(TRAIN, [BATCH, BATCH])])
    assert ("StepEnd", "TrainingPhase") not in log.names()
    assert ("EpochEnd", "TrainingPhase") not in log.names()
    assert log.names().count(("StepBegin", "TrainingPhase")) == 4
    assert result.epochs == 2


def test_cancel_fit_at_fit_end_keeps_the_reason():
    log = EventLog()
    stop = fp.CustomCallback(raising(fp.CancelFitException("at the end")), fp.FitEnd)
    result = test_learner(stop, log).fit(1, phases=[(TRAIN, [BATCH])])
    assert result == fp.FitResult(epochs=1, stop_reason="at the end")
    assert ("FitEnd", "Phase") not in log.names()


# -- run_step and run_epoch --------------------------------------------------------------------


def test_run_step_swallows_cancel_step_without_step_end():
    log = EventLog()
    learner = test_learner(log)
    with fp.run_step(learner, TRAIN, xs=1, ys=2) as batch:
        assert (batch.xs, batch.ys) == (1, 2)
        raise fp.CancelStepException()
    assert log.names() == [("StepBegin", "TrainingPhase")]


def test_run_step_cancelled_at_step_begin_leaves_the_with_statement():
    log = EventLog()
    learner = test_learner(fp.CustomCallback(raising(fp.CancelStepException()), fp.StepBegin),
                           log)
    body = []
    with pytest.raises(fp.CancelStepException), fp.run_step(learner, TRAIN, xs=1, ys=2):
        body.append(1)
    assert body == []
    assert log.names() == []


def test_run_step_fires_step_end_on_normal_exit_with_a_fresh_batch():
    log = EventLog()
    learner = test_learner(log)
    learner.batch.stale = True
    with fp.run_step(learner, TRAIN, xs=1, ys=2) as batch:
        batch.loss = 3
    assert log.names() == [("StepBegin", "TrainingPhase"), ("StepEnd", "TrainingPhase")]
    assert vars(learner.batch) == {"xs": 1, "ys": 2, "loss": 3}


def test_run_step_lets_other_errors_through_without_step_end():
    log = EventLog()
    learner = test_learner(log)
    with pytest.raises(ValueError, match="bad"), fp.run_step(learner, TRAIN, xs=1, ys=2):
        raise ValueError("bad")
    assert log.names() == [("StepBegin", "TrainingPhase")]


def test_run_epoch_fires_epoch_end_after_cancel_epoch():
    log = EventLog()
    learner = test_learner(log)
    with fp.run_epoch(learner, TRAIN):
        raise fp.CancelEpochException()
    assert log.names() == [("EpochBegin", "TrainingPhase"), ("EpochEnd", "TrainingPhase")]


def test_run_epoch_cancelled_at_epoch_begin_fires_epoch_end_and_leaves_the_with_statement():
    log = EventLog()
    learner = test_learner(fp.CustomCallback(raising(fp.CancelEpochException()), fp.EpochBegin),
                           log)
    body = []
    with pytest.raises(fp.CancelEpochException), fp.run_epoch(learner, TRAIN):
        body.append(1)
    assert body == []
    assert log.names() == [("EpochEnd", "TrainingPhase")]


def test_step_for_a_phase_without_one_names_the_fix():
    with pytest.raises(NotImplementedError, match=r"no step for Phase: define one with"):
        fp.step(test_learner(), fp.Phase(), BATCH)


# -- what handlers may change ------------------------------------------------------------------


def _double_loss(learner):
    learner.batch.loss = learner.batch.loss * 2


def _step_size(*callbacks):
    learner = test_learner(*callbacks, seed=3)
    before = learner.model.coeff.item()
    learner.fit(1, phases=[(TRAIN, [BATCH])])
    return learner.model.coeff.item() - before


def test_loss_replaced_at_backward_begin_is_what_is_differentiated():
    doubler = fp.CustomCallback(_double_loss, fp.BackwardBegin,
                                access=fp.Access(batch=fp.Access(loss=fp.Write())))
    plain = _step_size()
    assert plain != 0
    assert _step_size(doubler) == pytest.approx(2 * plain, rel=1e-4)


def test_inputs_replaced_at_step_begin_are_what_the_model_sees():
    seen = []

    def zero_inputs(learner):
        learner.batch.xs = torch.zeros(2)

    def record_preds(learner):
        seen.append(learner.batch.preds.detach().clone())

    test_learner(
        fp.CustomCallback(zero_inputs, fp.StepBegin,
                          access=fp.Access(batch=fp.Access(xs=fp.Write()))),
        fp.CustomCallback(record_preds, fp.LossBegin,
                          access=fp.Access(batch=fp.Access(preds=fp.Read()))),
    ).fit(1, phases=[(TRAIN, [BATCH]), (VALID, [BATCH])])
    assert [p.tolist() for p in seen] == [[0.0, 0.0], [0.0, 0.0]]


def test_update_false_at_backward_end_skips_the_optimizer_step():
    def skip(learner):
        learner.batch.update = False

    learner = test_learner(fp.CustomCallback(
        skip, fp.BackwardEnd, access=fp.Access(batch=fp.Access(update=fp.Write()))))
    before = learner.model.coeff.item()
    learner.fit(1, phases=[(TRAIN, [BATCH])])
    assert learner.model.coeff.item() == before
    assert learner.model.coeff.grad is not None


def test_training_step_clears_gradients_after_the_update():
    learner = test_learner()
    learner.fit(1, phases=[(TRAIN, [BATCH])])
    assert learner.model.coeff.grad is None


# -- modes -------------------------------------------------------------------------------------


def _mode_probe(modes):
    def probe(learner):
        modes.append((learner.model.training, torch.is_inference_mode_enabled()))

    return fp.CustomCallback(probe, fp.LossBegin, access=fp.Access(model=fp.Read()))


def test_validation_runs_in_eval_and_inference_mode_and_training_does_not():
    modes = []
    test_learner(_mode_probe(modes), n_batches=1).fit(1)
    assert modes == [(True, False), (False, True)]


def test_validation_restores_train_mode_after_fit():
    learner = test_learner(n_batches=1)
    learner.fit(1)
    assert learner.model.training


@pytest.mark.parametrize("training", [True, False])
def test_validation_epoch_restores_the_previous_mode(training):
    learner = test_learner()
    learner.model.train(training)
    fp.epoch(learner, VALID, test_batches(2))
    assert learner.model.training is training


def test_training_epoch_puts_the_model_in_train_mode():
    modes = []
    learner = test_learner(_mode_probe(modes))
    learner.model.eval()
    fp.epoch(learner, TRAIN, test_batches(1))
    assert modes == [(True, False)]
