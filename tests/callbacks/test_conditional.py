"""throttle and ConditionalCallback: run a callback's handlers only sometimes, keeping its
place in the graph."""

import attrs
import pytest

import fluxpy as fp
from fluxpy.callbacks import conditional
from fluxpy.testing import test_learner

TRAIN = fp.TrainingPhase()


@attrs.define
class Counter(fp.Callback):
    """Counts step ends and epoch ends."""

    steps: int = 0
    epochs: int = 0


@fp.on.dispatch
def _counter_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Counter, learner):
    cb.steps += 1


@fp.on.dispatch
def _counter_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: Counter, learner):
    cb.epochs += 1


@attrs.define
class WritesX(fp.Callback):
    """Writes cbstate.x (to make write conflicts)."""


@attrs.define
class AlsoWritesX(fp.Callback):
    """Writes cbstate.x too, and must run after WritesX."""


@fp.stateaccess.dispatch
def _writesx_access(cb: WritesX | AlsoWritesX):
    return fp.Access(cbstate=fp.Access(x=fp.Write()))


@fp.resolveconflict.dispatch
def _writesx_conflict(a: WritesX, b: AlsoWritesX):
    return fp.RunFirst(a)


@attrs.define
class After(fp.Callback):
    """Runs after Recorder."""


@fp.runafter.dispatch
def _after_runafter(cb: After):
    return (fp.Recorder,)


def test_throttle_every_runs_every_nth_time():
    counter = Counter()
    test_learner(fp.throttle(counter, fp.StepEnd, every=4)).fit(2)
    assert counter.steps == 8


def test_throttle_leaves_other_events_alone():
    counter = Counter()
    test_learner(fp.throttle(counter, fp.StepEnd, every=4)).fit(2)
    assert counter.epochs == 4


def test_throttle_seconds_runs_at_most_once_per_interval(monkeypatch):
    clock = iter([0.0, 0.4, 1.1, 1.5, 2.2] + [2.3] * 11)

    class FakeTime:
        @staticmethod
        def monotonic():
            return next(clock)

    monkeypatch.setattr(conditional, "time", FakeTime)
    counter = Counter()
    test_learner(fp.throttle(counter, fp.StepEnd, seconds=1.0)).fit(1, phases=[
        (TRAIN, test_learner().data.training)])
    assert counter.steps == 3  # at 0.0, 1.1 and 2.2


def test_condition_gets_event_and_phase():
    counter = Counter()
    only_training = fp.ConditionalCallback(
        counter, lambda event, phase: isinstance(phase, fp.TrainingPhase))
    test_learner(only_training).fit(3)
    assert counter.epochs == 3


def test_throttle_needs_exactly_one_of_every_and_seconds():
    with pytest.raises(ValueError, match="exactly one of every= or seconds="):
        fp.throttle(Counter(), fp.StepEnd)
    with pytest.raises(ValueError, match="exactly one of every= or seconds="):
        fp.throttle(Counter(), fp.StepEnd, every=2, seconds=1.0)


def test_throttle_every_must_be_positive():
    with pytest.raises(ValueError, match=r"every=0\): every must be >= 1"):
        fp.throttle(Counter(), fp.StepEnd, every=0)


def test_wrapper_forwards_stateaccess():
    metrics = fp.Metrics()
    assert fp.stateaccess(fp.throttle(metrics, fp.StepEnd, every=2)) == fp.stateaccess(metrics)


def test_throttled_metrics_still_feeds_metrics_printer():
    throttled = fp.throttle(fp.Metrics(), fp.StepEnd, every=2)
    learner = test_learner(fp.MetricsPrinter(), throttled)
    assert [type(c) for c in (learner.callbacks[i] for i in learner.graph.order)] == [
        fp.ConditionalCallback, fp.MetricsPrinter]


def test_wrapper_forwards_runafter():
    learner = test_learner(fp.throttle(After(), fp.StepEnd, every=2), fp.Recorder())
    ordered = [type(learner.callbacks[i]) for i in learner.graph.order]
    assert ordered == [fp.Recorder, fp.ConditionalCallback]


@pytest.mark.parametrize("wrap", ["first", "second", "both"])
def test_wrapper_forwards_resolveconflict(wrap):
    first, second = WritesX(), AlsoWritesX()
    if wrap in ("first", "both"):
        first = fp.throttle(first, fp.StepEnd, every=2)
    if wrap in ("second", "both"):
        second = fp.throttle(second, fp.StepEnd, every=2)
    learner = test_learner(second, first)
    ordered = [learner.callbacks[i] for i in learner.graph.order]
    assert ordered == [first, second]


def test_wrapper_forwards_init():
    learner = test_learner(fp.throttle(fp.Recorder(), fp.StepEnd, every=2))
    assert learner.cbstate.history == {}


def test_throttled_recorder_counts_every_second_step():
    learner = test_learner(fp.throttle(fp.Recorder(), fp.StepEnd, every=2))
    learner.fit(1)
    assert learner.cbstate.history[TRAIN].steps == 8
