"""fit(validate_every=fp.Every(...)): validation in the middle of training epochs."""

import pytest
import torch

import fluxpy as fp
from fluxpy.engine import budget
from fluxpy.testing import test_learner


class ModeLog(fp.Callback):
    """Records (event, phase, model.training) at epoch edges and training StepBegin."""

    def __init__(self) -> None:
        self.log = []


@fp.stateaccess.dispatch
def _modelog_access(cb: ModeLog):
    return fp.Access(model=fp.Read())


@fp.on.dispatch
def _modelog(event: fp.EpochBegin | fp.EpochEnd | fp.StepBegin, phase: fp.Phase, cb: ModeLog,
             learner):
    cb.log.append((type(event).__name__, type(phase).__name__, learner.model.training))


def _counts(learner):
    return {type(p).__name__: h.epochs for p, h in learner.cbstate.history.items()}


def test_every_4_of_16_steps_gives_4_validation_epochs_per_training_epoch():
    log = ModeLog()
    learner = test_learner(fp.Recorder(), fp.Metrics(), log, n_batches=16)
    assert learner.fit(2, validate_every=fp.Every(steps=4)) == fp.FitResult(2, None)
    assert _counts(learner) == {"TrainingPhase": 2, "ValidationPhase": 8}
    valid = next(p for p in learner.cbstate.metricsepoch if isinstance(p, fp.ValidationPhase))
    assert len(learner.cbstate.metricsepoch[valid]["loss"]) == 8
    # validation after steps 4, 8, 12, 16 of each training epoch, inside it; training mode after
    first = log.log[:log.log.index(("EpochEnd", "TrainingPhase", True)) + 1]
    assert [e[:2] for e in first if e[0] != "StepBegin"] == [
        ("EpochBegin", "TrainingPhase"),
        *[("EpochBegin", "ValidationPhase"), ("EpochEnd", "ValidationPhase")] * 4,
        ("EpochEnd", "TrainingPhase")]
    steps = [e for e in log.log if e[0] == "StepBegin" and e[1] == "TrainingPhase"]
    assert len(steps) == 32 and all(training for *_, training in steps)
    assert all(not training for _, phase, training in log.log if phase == "ValidationPhase")
    assert learner.model.training


def test_a_step_period_that_does_not_divide_the_epoch_counts_across_epochs():
    learner = test_learner(fp.Recorder(), n_batches=16)
    learner.fit(2, validate_every=fp.Every(steps=5))  # after steps 5, 10, ..., 30 of 32
    assert _counts(learner) == {"TrainingPhase": 2, "ValidationPhase": 6}


class Seen(fp.Callback):
    """Records the first x of each training batch."""

    def __init__(self) -> None:
        self.xs = []


@fp.stateaccess.dispatch
def _seen_access(cb: Seen):
    return fp.Access(batch=fp.Access(xs=fp.Read()))


@fp.on.dispatch
def _seen_step(event: fp.StepBegin, phase: fp.TrainingPhase, cb: Seen, learner):
    cb.xs.append(float(learner.batch.xs[0]))


def test_the_training_epoch_goes_on_with_the_same_batches():
    def run(validate_every):
        seen = Seen()
        learner = test_learner(seen, n_batches=8)
        learner.fit(1, validate_every=validate_every)
        return seen.xs, learner.model.coeff.detach().clone()

    (xs, coeff), (xs_validated, coeff_validated) = run(None), run(fp.Every(steps=3))
    assert xs == xs_validated and len(xs) == 8
    torch.testing.assert_close(coeff, coeff_validated)


def test_every_k_epochs_validates_after_every_kth_training_epoch():
    learner = test_learner(fp.Recorder(), n_batches=4)
    learner.fit(5, validate_every=fp.Every(epochs=2))
    assert _counts(learner) == {"TrainingPhase": 5, "ValidationPhase": 2}


def test_every_seconds_validates_at_the_first_step_after_each_period(monkeypatch):
    class Clock:
        now = 0.0

        def __call__(self):
            self.now += 1.0  # each read one second later
            return self.now

    monkeypatch.setattr(budget, "clock", Clock())
    learner = test_learner(fp.Recorder(), n_batches=16)
    learner.fit(1, validate_every=fp.Every(seconds=3.5))
    # the start reads 1 s, so due at 4.5; steps read 2, 3, 4, 5: validation after step 4,
    # then a read at 6 sets the next at 9.5: after step 8 (10 s), 12 (15 s) and 16 (20 s)
    assert _counts(learner)["ValidationPhase"] == 4


def test_validate_every_with_max_steps():
    learner = test_learner(fp.Recorder(), n_batches=16)
    result = learner.fit(max_steps=10, validate_every=fp.Every(steps=4))
    assert result == fp.FitResult(0, "max_steps=10 reached")
    assert _counts(learner) == {"TrainingPhase": 1, "ValidationPhase": 2}


@pytest.mark.parametrize("bad", [4, "steps=4", {"steps": 4}, 0.5])
def test_validate_every_must_be_an_every(bad):
    learner = test_learner(fp.Recorder())
    with pytest.raises(TypeError, match=r"validate_every must be an fp.Every, e.g. "
                                        r"validate_every=fp.Every\(steps=500\), not "):
        learner.fit(1, validate_every=bad)
    assert learner.cbstate.history == {}


class StopAtSecondValidation(fp.Callback):
    def __init__(self) -> None:
        self.seen = 0


@fp.on.dispatch
def _stop_at_second(event: fp.EpochEnd, phase: fp.ValidationPhase, cb: StopAtSecondValidation,
                    learner):
    cb.seen += 1
    if cb.seen == 2:
        raise fp.CancelFitException("no better")


def test_a_stop_in_a_mid_epoch_validation_ends_fit_without_counting_the_cut_epoch():
    log = ModeLog()
    learner = test_learner(fp.Recorder(), log, StopAtSecondValidation(), n_batches=16)
    assert learner.fit(3, validate_every=fp.Every(steps=4)) == fp.FitResult(0, "no better")
    assert _counts(learner) == {"TrainingPhase": 0, "ValidationPhase": 2}
    assert ("EpochEnd", "TrainingPhase", True) not in log.log  # as after any CancelFitException
    assert learner.model.training


def test_every_seconds_goes_on_from_a_saved_schedule(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(budget, "clock", lambda: now[0])
    runs = []
    first = budget.Budget(validate_every=fp.Every(seconds=10), validate=lambda: runs.append(now[0]))
    first.start()
    now[0] = 4.0
    first.after_step()
    now[0] = 7.0  # a step checkpoint at this step's StepEnd, before the budget counts it
    saved = first.schedule(mid_epoch=True)
    assert saved == {"every": "every 10 seconds", "steps": 1, "rounds": 0, "seconds": 7.0,
                     "due": False}
    resumed = budget.Budget(validate_every=fp.Every(seconds=10),
                            validate=lambda: runs.append(now[0]))
    now[0] = 100.0
    assert resumed.start(saved) is False
    for now[0] in (101.0, 102.5, 103.0, 110.0, 113.0):
        resumed.after_step()
    assert runs == [103.0, 113.0]  # 3 s left of the period, then every 10 s


def test_a_saved_schedule_of_another_every_is_not_used():
    saved = {"every": "every 5 steps", "steps": 4, "rounds": 0, "seconds": 0.0, "due": True}
    resumed = budget.Budget(validate_every=fp.Every(steps=3))
    assert resumed.start(saved) is False
    assert [resumed.after_step() or resumed._since_steps for _ in range(4)] == [1, 2, 0, 1]
