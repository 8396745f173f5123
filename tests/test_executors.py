"""Executors: serial order, threaded concurrency where the graph allows it, errors, user executors.

Concurrency is shown with barriers and events, never with timings: two handlers that must both
reach a `Barrier(2)` pass only if they run at the same time.
"""

import threading
import time

import attrs
import pytest
import torch
from hypothesis import given, settings
from random_callbacks import RESOLVABLE, RandomCallback, declared, scenarios

import fluxpy as fp
from fluxpy.core.access import overlaps
from fluxpy.testing import test_learner

W, R = fp.Write(), fp.Read()
PHASE = fp.TrainingPhase()


@attrs.frozen
class Probe(fp.Event):
    """The event these tests fire, so no built-in callback reacts."""


PROBE = Probe()


def callback_type(name, access=None, after=None, handler=None):
    """A fresh callback class with its declarations and a `Probe` handler `handler(cb)`."""
    cls = type(name, (fp.Callback,), {})
    if access is not None:
        def _access(cb: cls):
            return access

        fp.stateaccess.dispatch(_access)
    if after is not None:
        def _after(cb: cls):
            return after

        fp.runafter.dispatch(_after)
    if handler is not None:
        def _probe(event: Probe, phase: fp.Phase, cb: cls, learner):
            handler(cb)

        fp.on.dispatch(_probe)
    return cls


def threaded(*callbacks, workers=4):
    return test_learner(*callbacks, executor=fp.ThreadedExecutor(workers))


# -- serial ----------------------------------------------------------------------------------------


def test_serial_executor_runs_handlers_in_graph_order():
    log = []
    reader = callback_type("Reader", fp.Access(cbstate=fp.Access(x=R)),
                           handler=lambda cb: log.append("Reader"))
    writer = callback_type("Writer", fp.Access(cbstate=fp.Access(x=W)),
                           handler=lambda cb: log.append("Writer"))
    other = callback_type("Other", handler=lambda cb: log.append("Other"))
    learner = test_learner(reader(), other(), writer())
    assert isinstance(learner.executor, fp.SerialExecutor)
    learner.handle(PROBE, PHASE)
    assert log == ["Other", "Writer", "Reader"]


def test_serial_executor_runs_in_the_calling_thread():
    threads = []
    cls = callback_type("Here", handler=lambda cb: threads.append(threading.current_thread()))
    test_learner(cls()).handle(PROBE, PHASE)
    assert threads == [threading.current_thread()]


def test_handlers_know_what_they_must_wait_for():
    reader = callback_type("Reader", fp.Access(cbstate=fp.Access(x=R)), handler=lambda cb: None)
    writer = callback_type("Writer", fp.Access(cbstate=fp.Access(x=W)), handler=lambda cb: None)
    free = callback_type("Free", handler=lambda cb: None)
    plan = test_learner(reader(), free(), writer()).plans.handlers(PROBE, PHASE)
    assert [(h.name, [a.name for a in h.after]) for h in plan] == [
        ("Free", []), ("Writer", []), ("Reader", ["Writer"]),
    ]


# -- threaded --------------------------------------------------------------------------------------


def test_threaded_executor_overlaps_independent_handlers():
    barrier = threading.Barrier(2, timeout=10)
    log = []

    def meet(cb):
        barrier.wait()  # raises BrokenBarrierError unless the other handler runs meanwhile
        log.append(type(cb).__name__)

    left = callback_type("Left", fp.Access(batch=fp.Access(xs=R)), handler=meet)
    right = callback_type("Right", fp.Access(batch=fp.Access(xs=R)), handler=meet)
    learner = threaded(left(), right())
    learner.handle(PROBE, PHASE)
    assert sorted(log) == ["Left", "Right"]
    learner.executor.close()


def test_threaded_executor_serialises_a_writer_and_its_reader():
    log = []
    reader_started = threading.Event()

    def write(cb):
        log.append("write start")
        # Were the reader scheduled alongside, it would start during this wait.
        reader_started.wait(0.05)
        log.append("write end")

    def read(cb):
        reader_started.set()
        log.append("read")

    reader = callback_type("Reader", fp.Access(cbstate=fp.Access(x=R)), handler=read)
    writer = callback_type("Writer", fp.Access(cbstate=fp.Access(x=W)), handler=write)
    learner = threaded(reader(), writer())
    learner.handle(PROBE, PHASE)
    assert log == ["write start", "write end", "read"]
    learner.executor.close()


def test_threaded_executor_never_overlaps_a_no_conflict_pair():
    barrier = threading.Barrier(2, timeout=0.05)
    met = []

    def try_to_meet(cb):
        try:
            barrier.wait()
            met.append(type(cb).__name__)
        except threading.BrokenBarrierError:
            pass

    left = callback_type("Left", fp.Access(model=W), handler=try_to_meet)
    right = callback_type("Right", fp.Access(model=W), handler=try_to_meet)

    def _resolve(a: left, b: right):
        return fp.NoConflict()

    fp.resolveconflict.dispatch(_resolve)
    learner = threaded(left(), right())
    plan = learner.plans.handlers(PROBE, PHASE)
    assert [[x.name for x in h.after] for h in plan] == [[], ["Left"]]
    learner.handle(PROBE, PHASE)
    assert met == []
    learner.executor.close()


def test_threaded_executor_runs_a_single_handler_inline():
    threads = []
    cls = callback_type("Alone", handler=lambda cb: threads.append(threading.current_thread()))
    learner = threaded(cls())
    learner.handle(PROBE, PHASE)
    assert threads == [threading.current_thread()]


def test_worker_exception_reaches_the_caller_with_its_type_and_note():
    threads = []

    def fail(cb):
        threads.append(threading.current_thread())
        raise KeyError("boom")

    bad = callback_type("Bad", handler=fail)
    good = callback_type("Good", handler=lambda cb: None)
    learner = threaded(good(), bad())
    with pytest.raises(KeyError, match="boom") as info:
        learner.handle(PROBE, PHASE)
    assert threads[0] is not threading.current_thread()
    assert info.value.__notes__ == [
        f"raised by the handler of Bad for Probe in TrainingPhase "
        f"({__name__}.callback_type.<locals>._probe)"
    ]
    learner.executor.close()


def test_first_failure_in_plan_order_wins_and_nothing_new_starts():
    gate = threading.Barrier(2, timeout=10)
    ran = []

    def fail(cb):
        gate.wait()  # both failing handlers are running before either raises
        raise ValueError(type(cb).__name__)

    first = callback_type("First", fp.Access(cbstate=fp.Access(x=W)), handler=fail)
    second = callback_type("Second", fp.Access(cbstate=fp.Access(y=W)), handler=fail)
    after = callback_type("After", fp.Access(cbstate=fp.Access(x=R, y=R)),
                          handler=lambda cb: ran.append("After"))
    learner = threaded(first(), second(), after())
    with pytest.raises(ValueError) as info:
        learner.handle(PROBE, PHASE)
    assert str(info.value) == "First"
    assert ran == []
    learner.executor.close()


def test_one_event_completes_before_the_next_starts():
    log = []
    lock = threading.Lock()

    def record(cb):
        with lock:
            log.append(("start", type(cb).__name__))
        with lock:
            log.append(("end", type(cb).__name__))

    callbacks = [callback_type(n, handler=record)() for n in ("A", "B", "C")]
    learner = threaded(*callbacks)
    learner.handle(PROBE, PHASE)
    first_event = list(log)
    learner.handle(PROBE, PHASE)
    assert sorted(first_event) == sorted([(k, n) for k in ("start", "end") for n in "ABC"])
    assert len(log) == 12
    learner.executor.close()


def test_threaded_fit_trains_like_the_serial_one():
    serial = test_learner(fp.Recorder(), fp.Metrics())
    serial.fit(2)
    parallel = test_learner(fp.Recorder(), fp.Metrics(), executor=fp.ThreadedExecutor(2))
    parallel.fit(2)
    parallel.executor.close()
    assert torch.equal(serial.model.coeff, parallel.model.coeff)
    assert (parallel.cbstate.history[PHASE].steps == serial.cbstate.history[PHASE].steps == 32)


def test_threaded_executor_needs_a_worker():
    with pytest.raises(ValueError, match=r"ThreadedExecutor\(max_workers=0\): need at least 1"):
        fp.ThreadedExecutor(0)


# -- user executors --------------------------------------------------------------------------------


class NameRecorder(fp.Executor):
    """Records which handlers each event ran, then runs them in order."""

    def __init__(self):
        self.runs = []

    def run(self, event, phase, handlers):
        self.runs.append((str(event), str(phase), [h.name for h in handlers]))
        for handler in handlers:
            handler()


def test_user_executor_gets_every_plan():
    log = []
    cls = callback_type("Mine", handler=lambda cb: log.append("ran"))
    executor = NameRecorder()
    learner = test_learner(fp.Recorder(), cls(), executor=executor)
    learner.handle(PROBE, PHASE)
    learner.fit(1)
    assert executor.runs[0] == ("Probe", "TrainingPhase", ["Mine"])
    assert ("StepEnd", "TrainingPhase", ["Recorder"]) in executor.runs
    assert ("EpochEnd", "ValidationPhase", ["Recorder"]) in executor.runs
    assert log == ["ran"]


def test_events_without_handlers_do_not_reach_the_executor():
    executor = NameRecorder()
    learner = test_learner(executor=executor)
    learner.handle(PROBE, PHASE)
    assert executor.runs == []


def test_executor_must_implement_run():
    class Lazy(fp.Executor):
        pass

    with pytest.raises(NotImplementedError, match=r"Lazy must implement run\(event, phase, "):
        Lazy().run(PROBE, PHASE, ())


def test_learner_rejects_an_executor_that_is_not_one():
    with pytest.raises(TypeError, match=r"executor must be an fp\.Executor .* not function"):
        test_learner(executor=lambda event, phase, handlers: None)


def test_control_flow_exceptions_get_no_note():
    def cancel(cb):
        raise fp.CancelStepException("skip")

    cls = callback_type("Skipper", handler=cancel)
    with pytest.raises(fp.CancelStepException) as info:
        test_learner(cls()).handle(PROBE, PHASE)
    assert not hasattr(info.value, "__notes__")


# -- property: never two conflicting handlers at once ----------------------------------------------


class Monitor:
    """Records, under a lock, which handlers run, when, and any conflicting overlap."""

    def __init__(self, access):
        self.access = access
        self.lock = threading.Lock()
        self.running = set()
        self.started, self.finished = {}, {}
        self.clock = 0
        self.violations = []

    def _conflict(self, a, b):
        pa = self.access[type(a)]
        pb = self.access[type(b)]
        return any(overlaps(p, q) for p in pa.writes() for q in pb.reads() + pb.writes()) or any(
            overlaps(p, q) for p in pb.writes() for q in pa.reads()
        )

    def run(self, cb):
        with self.lock:
            self.violations += [(type(cb).__name__, type(o).__name__)
                                for o in self.running if self._conflict(cb, o)]
            self.running.add(cb)
            self.started[cb] = self.clock
            self.clock += 1
        time.sleep(0.001)  # widens the window in which a wrongly scheduled handler would overlap
        with self.lock:
            self.running.discard(cb)
            self.finished[cb] = self.clock
            self.clock += 1


MONITOR = None


@fp.on.dispatch
def _random_probe(event: Probe, phase: fp.Phase, cb: RandomCallback, learner):
    MONITOR.run(cb)


@pytest.fixture(scope="module")
def pool():
    executor = fp.ThreadedExecutor(4)
    yield executor
    executor.close()


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(answers=RESOLVABLE))
def test_threaded_executor_never_overlaps_conflicting_handlers(pool, scenario):
    global MONITOR
    with declared(scenario) as callbacks:
        try:
            learner = fp.Learner(torch.nn.Linear(1, 1), torch.nn.functional.l1_loss,
                                 callbacks=callbacks, use_default_callbacks=False,
                                 executor=pool, device="cpu")
        except fp.CallbackGraphError:
            return
        MONITOR = Monitor(scenario.access)
        learner.handle(PROBE, PHASE)
        plan = learner.plans.handlers(PROBE, PHASE)
    assert MONITOR.violations == []
    assert set(MONITOR.finished) == set(callbacks)
    for handler in plan:
        for before in handler.after:
            assert MONITOR.finished[before.callback] < MONITOR.started[handler.callback]


def test_the_learner_closes_its_executor_when_fit_ends():
    class Closing(fp.SerialExecutor):
        closed = 0

        def close(self):
            self.closed += 1

    executor = Closing()
    learner = test_learner(executor=executor)
    learner.fit(1)
    assert executor.closed == 1
    with pytest.raises(fp.BadBatchError):
        learner.fit(1, phases=[(fp.TrainingPhase(), [(1, 2, 3)])])
    assert executor.closed == 2  # also when fit ends with an error
