"""throttle and ConditionalCallback: run a callback's handlers only sometimes, keeping its
place in the graph."""

import re

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


STEPS = "fp.Every(steps=100) or fp.Every(seconds=60)"


@pytest.mark.parametrize(("event", "every", "message"), [
    (fp.StepEnd, 0, f"throttle(Counter(...), fp.StepEnd, every=0): every is an fp.Every ({STEPS}) "
                    "or a whole number of steps >= 1"),
    (fp.StepEnd, "2", "throttle(Counter(...), fp.StepEnd, every='2'): every is an fp.Every"),
    (fp.StepEnd, 1.5, "throttle(Counter(...), fp.StepEnd, every=1.5): every is an fp.Every"),
    (fp.EpochEnd, -1, "throttle(Counter(...), fp.EpochEnd, every=-1): every is an fp.Every "
                      "(fp.Every(epochs=1) or fp.Every(seconds=60)) or a whole number of epochs "
                      ">= 1"),
    (fp.StepEnd, fp.Every(epochs=2),
     "throttle(Counter(...), fp.StepEnd, every=fp.Every(epochs=2)): StepEnd is not an epoch "
     f"event (throttle fp.EpochEnd to count epochs); use {STEPS}"),
    (fp.EpochEnd, fp.Every(steps=2),
     "throttle(Counter(...), fp.EpochEnd, every=fp.Every(steps=2)): EpochEnd fires once per "
     "epoch, so it counts epochs; use fp.Every(epochs=1) or fp.Every(seconds=60)"),
])
def test_a_wrong_every_is_an_error_naming_the_fix(event, every, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fp.throttle(Counter(), event, every=every)


# -- every=fp.Every(...) ----------------------------------------------------------------------


def recording(into, event):
    """Appends the training phase's step index (StepEnd) or epoch count (EpochEnd)."""
    def record(learner):
        history = learner.cbstate.history[TRAIN]
        into.append(history.steps - 1 if event is fp.StepEnd else history.epochs)

    return fp.CustomCallback(record, event, fp.TrainingPhase,
                             access=fp.Access(cbstate=fp.Access(history=fp.Read())))


class FakeClock:
    """Returns the given times, one a call."""

    def __init__(self, *times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


@pytest.mark.parametrize(("event", "every", "normalised", "ran"), [
    (fp.StepEnd, 3, fp.Every(steps=3), [2, 5, 8, 11, 14]),
    (fp.StepEnd, fp.Every(steps=3), fp.Every(steps=3), [2, 5, 8, 11, 14]),
    (fp.EpochEnd, 2, fp.Every(epochs=2), [2, 4]),
    (fp.EpochEnd, fp.Every(epochs=2), fp.Every(epochs=2), [2, 4]),
])
def test_throttle_runs_every_nth_step_or_epoch(event, every, normalised, ran):
    into = []
    wrapper = fp.throttle(recording(into, event), event, every=every)
    assert wrapper.every == normalised
    learner = test_learner(fp.Recorder(), wrapper, n_batches=4 if event is fp.StepEnd else 2)
    learner.fit(4, phases=[(TRAIN, learner.data.training)])  # the firings are training ones
    assert into == ran


def test_throttle_every_seconds_reads_the_clock_it_is_given():
    into = []
    wrapper = fp.throttle(recording(into, fp.StepEnd), fp.StepEnd, every=fp.Every(seconds=1))
    wrapper.condition.clock = FakeClock(0.0, 0.4, 1.1, 1.5, 2.2, 2.3, 2.4, 3.3)
    learner = test_learner(fp.Recorder(), wrapper, n_batches=8)
    learner.fit(1, phases=[(TRAIN, learner.data.training)])
    assert into == [0, 2, 4, 7]
    assert fp.throttle(Counter(), fp.StepEnd, seconds=2.5).every == fp.Every(seconds=2.5)


def test_a_resumed_throttle_keeps_its_period_in_seconds(tmp_path):
    """Saved 0.2 s after the step it last ran at, so after loading the first step 1 s after
    that runs, not the first step."""
    def learner(into, *times):
        wrapper = fp.throttle(recording(into, fp.StepEnd), fp.StepEnd, seconds=1.0)
        wrapper.condition.clock = FakeClock(*times)
        return test_learner(fp.Recorder(), wrapper, n_batches=4)

    before, after = [], []
    first = learner(before, 0.0, 0.5, 1.2, 1.4, 1.4)  # 4 steps, then the save
    first.fit(1, phases=[(TRAIN, first.data.training)])
    path = fp.save_checkpoint(first, tmp_path / "c.pt")
    second = learner(after, 100.0, 100.5, 101.1, 101.5, 102.3)  # the load, then 4 steps
    fp.load_checkpoint(second, path)
    second.fit(1, phases=[(TRAIN, second.data.training)])
    assert (before, after) == ([0, 2], [5, 7])


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


# -- state in checkpoints ------------------------------------------------------------------


def _throttled_scheduler_learner(**kwargs):
    schedule = fp.Scheduler({fp.LearningRate: fp.linear(64, 1e-2, 1e-3)})
    return test_learner(fp.throttle(schedule, fp.StepBegin, every=2), **kwargs)


def test_a_throttled_schedulers_step_and_the_throttles_count_resume_from_a_checkpoint(tmp_path):
    learner = _throttled_scheduler_learner()
    learner.fit(2)
    path = fp.save_checkpoint(learner, tmp_path / "c.pt")
    resumed = _throttled_scheduler_learner(seed=1)
    fp.load_checkpoint(resumed, path)
    wrapper = resumed.get_callback(fp.ConditionalCallback)
    assert wrapper.condition._count == 32  # 2 epochs of 16 training steps
    assert wrapper.callback.step == 16  # every second one
    resumed.fit(1)
    assert wrapper.callback.step == 24


def test_the_wrappers_state_holds_the_wrapped_callbacks_and_the_throttles():
    wrapper = fp.throttle(fp.Scheduler({fp.LearningRate: fp.linear(8, 1.0, 0.0)}), fp.StepEnd,
                          every=2)
    wrapper.callback.step, wrapper.condition._count = 5, 7
    assert wrapper.state_dict() == {"callback": {"step": 5}, "condition": {"count": 7}}
    wrapper.load_state_dict({"callback": {"step": 1}, "condition": {"count": 2}})
    assert (wrapper.callback.step, wrapper.condition._count) == (1, 2)


def test_a_plain_condition_and_a_stateless_callback_add_no_state():
    wrapper = fp.ConditionalCallback(Counter(), lambda event, phase: True)
    assert wrapper.state_dict() == {}


@attrs.define
class SchedulerGroup(fp.Callback):
    """A group carrying a Scheduler."""

    scheduler: fp.Scheduler

    def subcallbacks(self):
        return (self.scheduler,)


def test_a_scheduler_in_a_group_is_saved_under_its_own_name(tmp_path):
    def learner(seed):
        return test_learner(SchedulerGroup(fp.Scheduler({fp.LearningRate: fp.linear(
            64, 1e-2, 1e-3)})), seed=seed)

    first = learner(0)
    first.fit(1)
    path = fp.save_checkpoint(first, tmp_path / "c.pt")
    resumed = learner(1)
    fp.load_checkpoint(resumed, path)
    assert resumed.get_callback(fp.Scheduler).step == 16
