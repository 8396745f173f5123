"""fit's limits: n_epochs, max_steps and max_time, each counted from the call."""

import datetime

import pytest

import fluxpy as fp
from fluxpy.engine import budget
from fluxpy.testing import test_learner


class FakeClock:
    """A clock that moves `tick` seconds each time it is read."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick, self.reads = 1000.0, tick, 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now


def _history(learner):
    history = learner.cbstate.history
    return {type(p).__name__: (h.epochs, h.steps) for p, h in history.items()}


def test_max_steps_stops_mid_epoch_with_its_reason():
    learner = test_learner(fp.Recorder(), n_batches=16)
    result = learner.fit(max_steps=10)
    assert result == fp.FitResult(epochs=0, stop_reason="max_steps=10 reached")
    # the cut epoch ended as a cancelled one does: EpochEnd fired, no validation followed
    assert _history(learner) == {"TrainingPhase": (1, 10)}


def test_max_steps_spans_epochs_and_counts_from_each_call():
    learner = test_learner(fp.Recorder(), n_batches=16)
    assert learner.fit(max_steps=40) == fp.FitResult(2, "max_steps=40 reached")
    assert _history(learner) == {"TrainingPhase": (3, 40), "ValidationPhase": (2, 32)}
    assert learner.fit(max_steps=4) == fp.FitResult(0, "max_steps=4 reached")
    assert _history(learner)["TrainingPhase"] == (4, 44)


def test_max_steps_at_an_epoch_end_completes_the_round():
    learner = test_learner(fp.Recorder(), n_batches=16)
    assert learner.fit(max_steps=32) == fp.FitResult(2, "max_steps=32 reached")
    assert _history(learner) == {"TrainingPhase": (2, 32), "ValidationPhase": (2, 32)}


def test_the_first_limit_reached_ends_fit():
    learner = test_learner(fp.Recorder(), n_batches=16)
    assert learner.fit(1, max_steps=100) == fp.FitResult(1, None)
    assert learner.fit(3, max_steps=20) == fp.FitResult(1, "max_steps=20 reached")
    assert learner.fit(3) == fp.FitResult(3, None)  # positional n_epochs as before


def test_max_time_stops_within_one_step_of_the_budget(monkeypatch):
    clock = FakeClock(tick=1.0)  # one second per read: the start, then one read per step
    monkeypatch.setattr(budget, "clock", clock)
    learner = test_learner(fp.Recorder(), n_batches=16)
    result = learner.fit(max_time=5.5)
    assert result == fp.FitResult(0, "max_time=5.5 s reached")
    assert _history(learner) == {"TrainingPhase": (1, 6)}  # 6 s after 6 steps: >= 5.5


def test_max_time_takes_a_timedelta(monkeypatch):
    monkeypatch.setattr(budget, "clock", FakeClock(tick=60.0))
    learner = test_learner(n_batches=16)
    result = learner.fit(max_time=datetime.timedelta(hours=1))
    assert result == fp.FitResult(3, "max_time=3600 s reached")  # 60 steps: 3 rounds + 12


def test_without_max_time_the_clock_is_not_read(monkeypatch):
    clock = FakeClock(tick=1.0)
    monkeypatch.setattr(budget, "clock", clock)
    test_learner(n_batches=4).fit(2, max_steps=100)
    assert clock.reads == 0


def test_fit_without_a_limit_names_the_fix():
    with pytest.raises(ValueError, match=r"fit\(\) needs a limit: give n_epochs \(fit\(3\)\), "
                                         r"max_steps= or max_time="):
        test_learner().fit()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_steps": 0}, "fit(max_steps=0): max_steps must be a whole number >= 1"),
    ({"max_steps": -5}, "fit(max_steps=-5): max_steps must be a whole number >= 1"),
    ({"max_steps": 2.0}, "fit(max_steps=2.0): max_steps must be a whole number >= 1"),
    ({"max_steps": True}, "fit(max_steps=True): max_steps must be a whole number >= 1"),
    ({"max_time": 0}, "fit(max_time=0): max_time must be seconds > 0 (a number) or a "
                      "datetime.timedelta"),
    ({"max_time": -1.5}, "fit(max_time=-1.5): max_time must be seconds > 0"),
    ({"max_time": "1h"}, "fit(max_time='1h'): max_time must be seconds > 0"),
    ({"max_time": True}, "fit(max_time=True): max_time must be seconds > 0"),
    ({"max_time": datetime.timedelta(0)}, "max_time must be seconds > 0"),
    ({"n_epochs": -1}, "fit(n_epochs=-1): n_epochs must be an int >= 0"),
    ({"n_epochs": 2.5}, "fit(n_epochs=2.5): n_epochs must be an int >= 0"),
])
def test_a_bad_limit_is_an_error_naming_the_fix(kwargs, message):
    learner = test_learner(fp.Recorder())
    with pytest.raises(ValueError) as info:
        learner.fit(**kwargs)
    assert message in str(info.value)
    assert learner.cbstate.history == {}  # nothing ran


def test_limits_need_a_training_phase():
    learner = test_learner(n_batches=2)
    valid = [(fp.ValidationPhase(), learner.data.validation)]
    with pytest.raises(ValueError, match="max_steps= counts training steps: the phases"):
        learner.fit(max_steps=3, phases=valid)


class RankZero:
    """The agreement of a DDP budget, faked: returns rank 0's readings (the `k`-th call the
    `k`-th of `readings`) and keeps the ones this rank passed in."""

    def __init__(self, readings) -> None:
        self.readings, self.passed = list(readings), []

    def __call__(self, seconds: float) -> float:
        self.passed.append(seconds)
        return self.readings[len(self.passed) - 1]


def _steps_until_stop(b: budget.Budget, n: int = 100) -> int:
    b.start()
    b.begin_epoch(range(n))
    for step in range(1, n + 1):
        if b.after_step():
            return step
    return n


def test_under_ddp_max_time_decides_on_rank_zeros_clock(monkeypatch):
    monkeypatch.setattr(budget, "clock", FakeClock(tick=10.0))  # this rank runs far ahead
    b = budget.make_budget(None, None, 5.5, None, distributed=True)
    b.agree = RankZero(range(1, 100))  # rank 0: 1 s after step 1, 2 s after step 2, ...
    assert _steps_until_stop(b) == 6
    assert b.stop_reason == "max_time=5.5 s reached"
    assert b.agree.passed == [10.0 * k for k in range(1, 7)]  # its own seconds since start


def test_under_ddp_validation_by_seconds_follows_rank_zeros_clock(monkeypatch):
    monkeypatch.setattr(budget, "clock", FakeClock(tick=10.0))
    b = budget.make_budget(None, 8, None, fp.Every(seconds=2.5), distributed=True)
    validated = []
    b.validate = lambda: validated.append(b.steps)
    b.agree = RankZero(range(1, 100))
    assert _steps_until_stop(b) == 8
    # rank 0 reads 1, 2, 3 (due: validate, then 4 sets the next at 6.5), 5, 6, 7 (validate,
    # 8 sets 10.5), 9, 10
    assert validated == [3, 6]
    assert len(b.agree.passed) == 10  # once per step, once after each validation


def test_under_ddp_without_a_clock_limit_the_ranks_do_not_communicate(monkeypatch):
    clock = FakeClock(tick=1.0)
    monkeypatch.setattr(budget, "clock", clock)
    b = budget.make_budget(None, 10, None, fp.Every(steps=2), distributed=True)
    b.agree = RankZero([])
    assert _steps_until_stop(b) == 10
    assert (b.agree.passed, clock.reads) == ([], 0)


def test_a_ddp_budget_without_its_agreement_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(budget, "clock", FakeClock(tick=1.0))
    b = budget.make_budget(None, None, 5.0, None, distributed=True)
    with pytest.raises(RuntimeError, match=r"needs the ranks' clock agreement \(Budget.agree\)"):
        _steps_until_stop(b)
