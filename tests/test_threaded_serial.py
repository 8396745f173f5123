"""The threaded executor gives the serial result: torch modes, random draws, errors, Ctrl-C.

Every test runs a real learner. Concurrency is arranged with events and barriers; nothing here
asserts a duration.
"""

import signal
import threading
import time

import attrs
import pytest
import torch
from hypothesis import given, settings
from random_callbacks import PATHS, RESOLVABLE, RandomCallback, declared, scenarios

import fluxpy as fp
from fluxpy.core.access import overlaps
from fluxpy.testing import test_learner

R, W = fp.Read(), fp.Write()
PHASE = fp.TrainingPhase()


@attrs.frozen
class Probe(fp.Event):
    """An event no built-in callback reacts to."""


PROBE = Probe()


def callback_type(name, access=None, handler=None, event=Probe, phase=fp.Phase):
    """A fresh callback class declaring `access`, with a handler `handler(cb, learner)` for
    `event` in `phase`."""
    cls = type(name, (fp.Callback,), {})
    if access is not None:
        def _access(cb: cls):
            return access

        fp.stateaccess.dispatch(_access)

    def _handler(event_: event, phase_: phase, cb: cls, learner):
        handler(cb, learner)

    fp.on.dispatch(_handler)
    return cls


def interrupt_the_main_thread():
    """Deliver SIGINT to the main thread, as Ctrl-C in a terminal does."""
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


# -- torch modes -----------------------------------------------------------------------------------


def _modes():
    return {"grad": torch.is_grad_enabled(), "inference": torch.is_inference_mode_enabled(),
            "autocast cpu": (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")),
            "default dtype": torch.get_default_dtype(),
            "default device": torch.get_default_device()}


def _validation_users():
    """Two callbacks whose validation StepEnd handlers use the predictions with the model's
    parameter, as a metric weighted by the model would; each records the modes it saw."""
    def use(cb, learner):
        cb.modes.append(_modes())
        cb.values.append((learner.batch.preds * learner.model.coeff).sum().item())

    access = fp.Access(batch=fp.Access(preds=R), model=R)
    classes = [callback_type(name, access, use, fp.StepEnd, fp.ValidationPhase)
               for name in ("WeightedA", "WeightedB")]
    callbacks = []
    for cls in classes:
        cb = cls()
        cb.modes, cb.values = [], []
        callbacks.append(cb)
    return callbacks


def test_validation_handlers_run_under_the_loops_inference_mode_on_threads():
    serial = _validation_users()
    test_learner(*serial, n_batches=2).fit(1)
    threaded = _validation_users()
    learner = test_learner(*threaded, n_batches=2, executor=fp.ThreadedExecutor(2))
    learner.fit(1)  # raised "Inference tensors cannot be saved for backward" on workers
    for s, t in zip(serial, threaded, strict=True):
        assert t.modes == s.modes
        assert t.values == s.values
    assert serial[0].modes[0]["grad"] is False
    assert serial[0].modes[0]["inference"] is True


def _recorders(n=2):
    """`n` independent callbacks whose Probe handlers record the modes and what a matmul and a
    fresh tensor come out as."""
    def record(cb, learner):
        cb.seen = _modes()
        cb.seen["matmul dtype"] = torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype
        cb.seen["zeros"] = (torch.zeros(1).dtype, torch.zeros(1).device)

    return [callback_type(f"Recorder{k}", handler=record)() for k in range(n)]


def _seen(executor, context):
    callbacks = _recorders()
    learner = test_learner(*callbacks, executor=executor)
    with context():
        learner.handle(PROBE, PHASE)
    executor.close()
    return [cb.seen for cb in callbacks]


@pytest.mark.parametrize("context", [
    torch.no_grad,
    torch.inference_mode,
    lambda: torch.autocast("cpu", dtype=torch.bfloat16),
    lambda: torch.autocast("cpu", dtype=torch.float16),
    lambda: torch.device("meta"),
], ids=["no_grad", "inference_mode", "autocast bfloat16", "autocast float16", "default device"])
def test_threaded_handlers_see_the_calling_threads_torch_modes(context):
    serial = _seen(fp.SerialExecutor(), context)
    assert _seen(fp.ThreadedExecutor(2), context) == serial


def test_grad_enabled_inside_inference_mode_reaches_the_workers():
    def context():
        stack = torch.inference_mode()
        stack.__enter__()
        grad = torch.enable_grad()
        grad.__enter__()

        class Both:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                grad.__exit__(*exc)
                stack.__exit__(*exc)

        return Both()

    serial = _seen(fp.SerialExecutor(), context)
    assert serial[0]["grad"] is True and serial[0]["inference"] is True
    assert _seen(fp.ThreadedExecutor(2), context) == serial


def test_threaded_handlers_see_the_default_dtype():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        seen = _seen(fp.ThreadedExecutor(2), lambda: torch.enable_grad())
    finally:
        torch.set_default_dtype(previous)
    assert [s["zeros"][0] for s in seen] == [torch.float64, torch.float64]


def test_workers_are_left_in_their_own_modes_after_a_handler():
    executor = fp.ThreadedExecutor(1)
    _seen(executor, torch.inference_mode)
    # The same pool thread, next event, no mode in the calling thread: nothing leaked.
    callbacks = _recorders()
    test_learner(*callbacks, executor=executor).handle(PROBE, PHASE)
    executor.close()
    assert callbacks[0].seen["grad"] is True
    assert callbacks[0].seen["inference"] is False


# -- random draws ----------------------------------------------------------------------------------


def _drawers(answer):
    """Two callbacks that draw random numbers, declared `rng=fp.Write()`, and the pair's
    `resolveconflict` answer; their graph order is then fixed."""
    def draw(cb, learner):
        cb.draws.append([torch.rand(()).item() for _ in range(20)])

    access = fp.Access(rng=W)
    first = callback_type("DrawsFirst", access, draw)
    second = callback_type("DrawsSecond", access, draw)

    def _resolve(a: first, b: second):
        return answer(a)

    fp.resolveconflict.dispatch(_resolve)
    return first, second


@pytest.mark.parametrize("answer", [lambda a: fp.RunFirst(a), lambda a: fp.NoConflict()],
                         ids=["RunFirst", "NoConflict"])
def test_threaded_random_draws_equal_the_serial_ones_over_many_runs(answer):
    first, second = _drawers(answer)
    runs = {}
    for name, executor in (("serial", fp.SerialExecutor()), ("threaded", fp.ThreadedExecutor(2))):
        callbacks = [first(), second()]
        for cb in callbacks:
            cb.draws = []
        learner = test_learner(*callbacks, executor=executor)
        for seed in range(200):
            torch.manual_seed(seed)
            learner.handle(PROBE, PHASE)
        executor.close()
        runs[name] = [cb.draws for cb in callbacks]
    assert runs["threaded"] == runs["serial"]


@attrs.frozen
class Simulate(fp.Event):
    """The event of the property test below: each random callback acts out its declarations."""


class World:
    """What the random callbacks read and write: a value per declared path, and a log per
    callback of what it read and drew. Keys are made up front: handlers only assign values."""

    def __init__(self, callbacks):
        self.values = {path: 0 for path in PATHS}
        self.logs = {id(cb): [] for cb in callbacks}


WORLD = None


@fp.on.dispatch
def _act_out(event: Simulate, phase: fp.Phase, cb: RandomCallback, learner):
    """Read every declared path (the RNG's state for `rng`), then write each declared path
    from what was read and from random draws where `rng` is written."""
    access = fp.stateaccess(cb)
    read = []
    for path in access.reads():
        if path == ("rng",):
            read.append(hash(torch.get_rng_state().numpy().tobytes()))
        else:
            read += [value for key, value in WORLD.values.items() if overlaps(key, path)]
        time.sleep(0)  # a chance for a wrongly scheduled handler to run in between
    draws = []
    if ("rng",) in access.writes():
        for _ in range(3):
            draws.append(torch.rand(()).item())
            time.sleep(0)
    for path in access.writes():
        if path != ("rng",):
            WORLD.values[path] = hash((type(cb).__name__, path, tuple(read), tuple(draws)))
    WORLD.logs[id(cb)].append((read, draws))


def _act(scenario, executor):
    """Fire `Simulate` for five seeds; what the world holds and each callback saw."""
    global WORLD
    learner = fp.Learner(torch.nn.Linear(1, 1), torch.nn.functional.l1_loss,
                         callbacks=scenario.callbacks, use_default_callbacks=False,
                         executor=executor, device="cpu")
    WORLD = World(scenario.callbacks)
    for seed in range(5):
        torch.manual_seed(seed)
        learner.handle(Simulate(), PHASE)
    return WORLD.values, [WORLD.logs[id(cb)] for cb in scenario.callbacks]


@pytest.fixture(scope="module")
def pool():
    executor = fp.ThreadedExecutor(4)
    yield executor
    executor.close()


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(answers=RESOLVABLE))
def test_threaded_runs_give_the_serial_values_and_draws(pool, scenario):
    with declared(scenario):
        try:
            serial = _act(scenario, fp.SerialExecutor())
        except fp.CallbackGraphError:
            return
        assert _act(scenario, pool) == serial


# -- errors and cancels ----------------------------------------------------------------------------


def test_every_error_is_reported_the_first_raised_with_the_others_as_notes():
    both_running = threading.Barrier(2, timeout=10)

    def fail(cb, learner):
        both_running.wait()
        raise ValueError(f"{type(cb).__name__} failed")

    first = callback_type("FailsFirst", fp.Access(cbstate=fp.Access(x=W)), fail)
    second = callback_type("FailsSecond", fp.Access(cbstate=fp.Access(y=W)), fail)
    learner = test_learner(first(), second(), executor=fp.ThreadedExecutor(2))
    with pytest.raises(ValueError, match=r"^FailsFirst failed") as info:
        learner.handle(PROBE, PHASE)
    learner.executor.close()
    notes = info.value.__notes__
    assert notes[0].startswith("raised by the handler of FailsFirst for Probe in TrainingPhase")
    assert len(notes) == 2
    assert notes[1].startswith("FailsSecond's handler for Probe in TrainingPhase also raised:\n")
    assert "ValueError: FailsSecond failed" in notes[1]
    assert "raised by the handler of FailsSecond" in notes[1]  # its own note comes along
    # The original traceback: it ends in the handler that raised.
    assert info.traceback[-1].name == "fail"


def test_an_error_wins_over_a_cancel_raised_beside_it():
    both_running = threading.Barrier(2, timeout=10)

    def cancel(cb, learner):
        both_running.wait()
        raise fp.CancelStepException("skip")

    def fail(cb, learner):
        both_running.wait()
        raise ValueError("broken")

    canceller = callback_type("Canceller", fp.Access(cbstate=fp.Access(x=W)), cancel)
    failer = callback_type("Failer", fp.Access(cbstate=fp.Access(y=W)), fail)
    learner = test_learner(canceller(), failer(), executor=fp.ThreadedExecutor(2))
    # A cancel is caught by the loop: were it raised, the error beside it would be lost.
    with pytest.raises(ValueError, match=r"^broken") as info:
        learner.handle(PROBE, PHASE)
    learner.executor.close()
    assert any("Canceller's handler for Probe in TrainingPhase also raised:\n" in note
               and "CancelStepException: skip" in note for note in info.value.__notes__)


@pytest.mark.parametrize("exception", [fp.CancelStepException("skip"), ValueError("broken")],
                         ids=["cancel", "error"])
def test_handlers_not_yet_started_do_not_start_after_a_cancel_or_error(exception):
    ran = []

    def stop(cb, learner):
        ran.append(type(cb).__name__)
        raise exception

    stopper = callback_type("Stopper", handler=stop)
    later = callback_type("Later", handler=lambda cb, learner: ran.append(type(cb).__name__))
    # One worker: Later is ready at once but waits in the pool's queue behind Stopper.
    learner = test_learner(stopper(), later(), executor=fp.ThreadedExecutor(1))
    with pytest.raises(type(exception)):
        learner.handle(PROBE, PHASE)
    learner.executor.close()
    assert ran == ["Stopper"]


# -- Ctrl-C ----------------------------------------------------------------------------------------


def test_ctrl_c_while_handlers_run_waits_for_them_then_raises():
    log = []
    slow_started = threading.Event()

    def slow(cb, learner):
        slow_started.set()
        for k in range(5):
            time.sleep(0.02)  # slow work the interrupt arrives during
            log.append(k)

    def interrupt(cb, learner):
        slow_started.wait(10)
        interrupt_the_main_thread()

    slow_cb = callback_type("Slow", fp.Access(cbstate=fp.Access(x=W)), slow)
    interrupter = callback_type("Interrupter", handler=interrupt)
    # Reads what Slow writes, so it would start once Slow is done: after a Ctrl-C it must not.
    after = callback_type("AfterSlow", fp.Access(cbstate=fp.Access(x=R)),
                          lambda cb, learner: log.append("after"))
    learner = test_learner(slow_cb(), interrupter(), after(), executor=fp.ThreadedExecutor(2))
    with pytest.raises(KeyboardInterrupt):
        learner.handle(PROBE, PHASE)
    assert log == [0, 1, 2, 3, 4]  # Slow finished before handle returned; AfterSlow never ran
    learner.executor.close()


def test_a_second_ctrl_c_does_not_abandon_running_handlers():
    log = []
    slow_started = threading.Event()

    def slow(cb, learner):
        slow_started.set()
        for k in range(10):
            time.sleep(0.02)
            log.append(k)

    def interrupt_twice(cb, learner):
        slow_started.wait(10)
        interrupt_the_main_thread()
        time.sleep(0.05)  # lets the first interrupt be handled on its own
        interrupt_the_main_thread()

    slow_cb = callback_type("Slow", handler=slow)
    interrupter = callback_type("Interrupter", handler=interrupt_twice)
    learner = test_learner(slow_cb(), interrupter(), executor=fp.ThreadedExecutor(2))
    with pytest.raises(KeyboardInterrupt):
        learner.handle(PROBE, PHASE)
    assert log == list(range(10))
    learner.executor.close()


def test_an_error_waits_for_the_handlers_running_beside_it():
    log = []
    slow_started = threading.Event()

    def slow(cb, learner):
        slow_started.set()
        for k in range(5):
            time.sleep(0.02)
            log.append(k)

    def fail(cb, learner):
        slow_started.wait(10)
        raise ValueError("broken")

    slow_cb = callback_type("Slow", handler=slow)
    failer = callback_type("Failer", handler=fail)
    learner = test_learner(slow_cb(), failer(), executor=fp.ThreadedExecutor(2))
    with pytest.raises(ValueError, match=r"^broken"):
        learner.handle(PROBE, PHASE)
    assert log == [0, 1, 2, 3, 4]
    learner.executor.close()


@attrs.define
class SlowLog:
    """A file one callback writes a few lines to at EpochEnd, slowly, and closes at FitEnd."""

    path: str
    file: object = None
    events: list = attrs.Factory(list)


def test_ctrl_c_during_a_threaded_epoch_end_fit_end_waits_for_the_running_handler(tmp_path):
    log = SlowLog(str(tmp_path / "log.txt"))
    writing = threading.Event()

    def open_log(cb, learner):
        log.file = open(log.path, "w")  # noqa: SIM115 (closed by the FitEnd handler)

    def write_slowly(cb, learner):
        writing.set()
        for k in range(5):
            time.sleep(0.02)  # a slow disk
            print(f"line {k}", file=log.file, flush=True)
        log.events.append("written")

    def interrupt(cb, learner):
        writing.wait(10)
        interrupt_the_main_thread()

    def close_log(cb, learner):
        log.events.append("closed")
        log.file.close()

    writer = callback_type("SlowWriter", None, write_slowly, fp.EpochEnd, fp.TrainingPhase)
    opener = callback_type("Opener", None, open_log, fp.FitBegin)
    closer = callback_type("Closer", None, close_log, fp.FitEnd)
    interrupter = callback_type("Interrupter", None, interrupt, fp.EpochEnd, fp.TrainingPhase)
    learner = test_learner(opener(), writer(), interrupter(), closer(),
                           executor=fp.ThreadedExecutor(2))
    with pytest.raises(KeyboardInterrupt) as info:
        learner.fit(2)
    assert log.events == ["written", "closed"]
    assert (tmp_path / "log.txt").read_text() == "".join(f"line {k}\n" for k in range(5))
    assert not hasattr(info.value, "__notes__")  # no error lost or added: the write finished
