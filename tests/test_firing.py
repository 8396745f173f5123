"""Events fired by callbacks: declared with `fp.fires`, checked, handled with their own views.

Each test defines its own classes: methods registered on the generic functions persist for
the whole session.
"""

import attrs
import pytest

import fluxpy as fp
from fluxpy.testing import test_learner


@attrs.frozen
class Ping(fp.Event):
    pass


@attrs.frozen
class Pong(fp.Event):
    pass


def _pinger(fired=(Ping,), fire=Ping):
    """A callback that fires `fire()` at every training StepEnd, declaring `fired`."""

    class Pinger(fp.Callback):
        pass

    @fp.fires.dispatch
    def _pinger_fires(cb: Pinger):
        return fired

    @fp.on.dispatch
    def _pinger_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Pinger, learner):
        learner.handle(fire(), phase)

    return Pinger()


@attrs.define
class Tally(fp.Callback):
    seen: list = attrs.field(factory=list)


@fp.on.dispatch
def _tally_ping(event: Ping, phase: fp.Phase, cb: Tally, learner):
    cb.seen.append((type(event).__name__, learner.batch.loss.item()))


@fp.stateaccess.dispatch
def _tally_access(cb: Tally):
    return fp.Access(batch=fp.Access(loss=fp.Read()))


def test_a_callback_fires_an_event_another_handles():
    tally = Tally()
    learner = test_learner(_pinger(), tally, n_batches=3)
    learner.fit(1)
    assert [name for name, _ in tally.seen] == ["Ping"] * 3


def test_the_handlers_of_a_fired_event_run_before_handle_returns():
    order = []

    class Before(fp.Callback):
        pass

    @fp.fires.dispatch
    def _before_fires(cb: Before):
        return (Ping,)

    @fp.on.dispatch
    def _before_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Before, learner):
        order.append("firing")
        learner.handle(Ping(), phase)
        order.append("fired")

    class Listener(fp.Callback):
        pass

    @fp.on.dispatch
    def _listener_ping(event: Ping, phase: fp.Phase, cb: Listener, learner):
        order.append("handled")

    test_learner(Before(), Listener(), n_batches=1).fit(1)
    assert order == ["firing", "handled", "fired"]


def test_the_handler_of_a_fired_event_gets_its_own_view():
    class Nosy(fp.Callback):
        pass

    @fp.on.dispatch
    def _nosy_ping(event: Ping, phase: fp.Phase, cb: Nosy, learner):
        learner.batch.loss  # noqa: B018  (Nosy declares nothing)

    learner = test_learner(_pinger(), Nosy(), n_batches=1)
    with pytest.raises(fp.ProtectedError, match=r"Nosy may not read learner\.batch"):
        learner.fit(1)


def test_firing_an_event_the_callback_does_not_declare_is_an_error():
    learner = test_learner(_pinger(fired=(Ping,), fire=Pong), Tally(), n_batches=1)
    with pytest.raises(fp.CallbackDeclarationError,
                       match=r"Pinger fired Pong, which fires\(Pinger\) does not declare"):
        learner.fit(1)


def test_a_declared_base_type_covers_its_subclasses():
    @attrs.frozen
    class LoudPing(Ping):
        pass

    tally = Tally()
    test_learner(_pinger(fired=(Ping,), fire=LoudPing), tally, n_batches=2).fit(1)
    assert [name for name, _ in tally.seen] == ["LoudPing"] * 2


def test_a_callback_that_declares_no_fires_has_no_handle():
    class Quiet(fp.Callback):
        pass

    @fp.on.dispatch
    def _quiet_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Quiet, learner):
        learner.handle(Ping(), phase)

    with pytest.raises(fp.ProtectedError, match=r"Quiet may not read learner\.handle"):
        test_learner(Quiet(), n_batches=1).fit(1)


def test_granting_handle_through_stateaccess_is_refused_with_the_fix():
    class Granted(fp.Callback):
        pass

    @fp.stateaccess.dispatch
    def _granted_access(cb: Granted):
        return fp.Access(handle=fp.Read())

    with pytest.raises(fp.CallbackDeclarationError, match=r"declare the events Granted fires"):
        test_learner(Granted())


def test_a_handler_of_a_fired_event_may_fire_what_it_declares():
    class Relay(fp.Callback):
        pass

    @fp.fires.dispatch
    def _relay_fires(cb: Relay):
        return (Pong,)

    @fp.on.dispatch
    def _relay_ping(event: Ping, phase: fp.Phase, cb: Relay, learner):
        learner.handle(Pong(), phase)

    class PongTally(fp.Callback):
        def __init__(self):
            self.pongs = 0

    @fp.on.dispatch
    def _pong_tally(event: Pong, phase: fp.Phase, cb: PongTally, learner):
        cb.pongs += 1

    tally = PongTally()
    test_learner(_pinger(), Relay(), tally, n_batches=2).fit(1)
    assert tally.pongs == 2


def test_a_custom_step_fires_without_a_declaration():
    tally = Tally()
    learner = test_learner(tally, n_batches=1)
    learner.batch.loss = learner.loss_fn(*learner.data.training[0])
    learner.handle(Ping(), fp.TrainingPhase())
    assert [name for name, _ in tally.seen] == ["Ping"]


def test_explain_shows_what_a_callback_fires():
    text = str(fp.explain(test_learner(_pinger(fired=(Ping, Pong)), Tally())))
    assert "Pinger  fires Ping, Pong" in text
    assert "Ping" in text.split("Handlers per phase")[1]


def test_firing_works_under_the_threaded_executor():
    tally = Tally()
    learner = test_learner(_pinger(), tally, n_batches=3, executor=fp.ThreadedExecutor(1))
    learner.fit(1)
    assert [name for name, _ in tally.seen] == ["Ping"] * 3
