"""Faults during fit: an exception in a handler, the data iterator, the model or the loss keeps
its type (with a note saying where it came from), FitEnd runs once, and the learner trains
correctly when fit is called again."""

import attrs
import pytest
import torch

import fluxpy as fp
from fluxpy.testing import CoeffModel, test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()


class Fault(Exception):
    """The injected failure."""


@attrs.define
class Once:
    """Raises `Fault` at its `at`-th call, and never again."""

    at: int
    calls: int = 0

    def __call__(self):
        self.calls += 1
        if self.calls == self.at:
            raise Fault(f"injected at call {self.at}")


@attrs.define
class FitEnds(fp.Callback):
    count: int = 0


@fp.on.dispatch
def _fitends_fit_end(event: fp.FitEnd, phase: fp.Phase, cb: FitEnds, learner):
    cb.count += 1


class FlakyData:
    """Batches that can be iterated again; the iterator fails once, at batch `fault.at`."""

    def __init__(self, batches, fault):
        self.batches, self.fault = batches, fault

    def __iter__(self):
        for batch in self.batches:
            self.fault()
            yield batch


class FlakyModel(CoeffModel):
    """A CoeffModel whose forward fails once."""

    def __init__(self, coeff, fault):
        super().__init__(coeff)
        self.fault = fault

    def forward(self, xs):
        self.fault()
        return super().forward(xs)


def handler_fault(fault):
    return {"callbacks": [fp.CustomCallback(lambda learner: fault(), fp.StepEnd)]}


def data_fault(fault):
    return {"data": FlakyData(test_batches(16), fault)}


def model_fault(fault):
    return {"model": FlakyModel(0.5, fault)}


def loss_fault(fault):
    def loss_fn(preds, ys):
        fault()
        return torch.nn.functional.l1_loss(preds, ys)

    return {"loss_fn": loss_fn}


FAULTS = {
    "handler": (handler_fault, "raised by the handler of CustomCallback for StepEnd in "
                               "TrainingPhase (fluxpy.callbacks.custom._custom_on)"),
    "data": (data_fault, "raised by the data iterator of TrainingPhase (FlakyData)"),
    "model": (model_fault, None),
    "loss": (loss_fault, "raised by loss_fn(preds, ys) in the TrainingPhase step"),
}


def faulty_learner(site, at=3):
    make, _ = FAULTS[site]
    parts = {"model": CoeffModel(0.5), "loss_fn": torch.nn.functional.l1_loss,
             "data": test_batches(16), "callbacks": []}
    parts.update(make(Once(at)))
    fit_ends = FitEnds()
    learner = fp.Learner(
        parts["model"], parts["loss_fn"], data=(parts["data"], test_batches(4)),
        optimizer=lambda params: torch.optim.SGD(params, lr=1e-3),
        callbacks=[fp.Recorder(), fit_ends, *parts["callbacks"]], use_default_callbacks=False)
    return learner, fit_ends


@pytest.mark.parametrize("site", FAULTS)
def test_fault_propagates_with_its_type_and_where_it_came_from(site):
    learner, _ = faulty_learner(site)
    with pytest.raises(Fault, match="injected at call 3") as info:
        learner.fit(2)
    note = FAULTS[site][1]
    notes = getattr(info.value, "__notes__", [])
    if note is None:  # the model's own errors are left as they are
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(note)


@pytest.mark.parametrize("site", FAULTS)
def test_fit_end_runs_exactly_once_after_a_fault(site):
    learner, fit_ends = faulty_learner(site)
    with pytest.raises(Fault):
        learner.fit(2)
    assert fit_ends.count == 1


@pytest.mark.parametrize("site", FAULTS)
def test_learner_trains_correctly_after_a_fault(site):
    learner, fit_ends = faulty_learner(site)
    with pytest.raises(Fault):
        learner.fit(2)
    result = learner.fit(5)
    history = learner.cbstate.history[TRAIN]
    assert result == fp.FitResult(epochs=5, stop_reason=None)
    assert (history.epochs, history.steps_epoch) == (5, 16)
    assert abs(learner.model.coeff.item() - 3.0) < 0.1
    assert fit_ends.count == 2


@pytest.mark.parametrize("site", FAULTS)
def test_recorder_counts_only_steps_completed_before_the_fault(site):
    learner, _ = faulty_learner(site, at=3)
    with pytest.raises(Fault):
        learner.fit(1)
    history = learner.cbstate.history[TRAIN]
    # The handler fault is at StepEnd of step 3, after Recorder has counted it.
    assert (history.epochs, history.steps) == (0, 3 if site == "handler" else 2)


def test_fault_after_backward_leaves_no_gradient_for_the_next_fit():
    batches = test_batches(4)
    fault = Once(3)
    learner = test_learner(fp.CustomCallback(lambda learner: fault(), fp.BackwardEnd), seed=5)
    with pytest.raises(Fault):
        learner.fit(1, data=(batches, None))
    assert learner.model.coeff.grad is None
    learner.fit(1, data=(batches, None))

    clean = test_learner(seed=5)
    clean.fit(1, data=(batches[:2], None))
    clean.fit(1, data=(batches, None))
    assert learner.model.coeff.item() == clean.model.coeff.item()


def test_fault_in_validation_restores_train_mode():
    fault = Once(2)
    learner = fp.Learner(FlakyModel(0.5, fault), torch.nn.functional.l1_loss,
                         data=(test_batches(1), test_batches(2)), use_default_callbacks=False)
    with pytest.raises(Fault):
        learner.fit(1)
    assert learner.model.training


def test_fault_in_a_fit_end_handler_after_a_fault_is_noted_on_the_first():
    def fail_at_end(learner):
        raise RuntimeError("cannot close")

    learner, _ = faulty_learner("model")
    learner.add_callback(fp.CustomCallback(fail_at_end, fp.FitEnd))
    with pytest.raises(Fault) as info:
        learner.fit(1)
    assert info.value.__notes__[-1].startswith(
        "FitEnd handlers also failed: RuntimeError('cannot close')")


def test_fault_in_a_fit_end_handler_propagates_with_its_note():
    def fail_at_end(learner):
        raise OSError("disk full")

    learner = test_learner(fp.CustomCallback(fail_at_end, fp.FitEnd))
    with pytest.raises(OSError, match="disk full") as info:
        learner.fit(1)
    assert info.value.__notes__ == [
        "raised by the handler of CustomCallback for FitEnd in Phase "
        "(fluxpy.callbacks.custom._custom_on)"]


def test_fault_in_a_threaded_executor_keeps_its_type_and_note():
    fault = Once(3)
    learner = test_learner(fp.Recorder(), fp.CustomCallback(lambda learner: fault(), fp.StepEnd),
                           executor=fp.ThreadedExecutor(2))
    with pytest.raises(Fault) as info:
        learner.fit(1)
    assert "CustomCallback for StepEnd in TrainingPhase" in info.value.__notes__[0]
    assert learner.fit(1).epochs == 1


# -- a callback's init -------------------------------------------------------------------------


class FailingInit(fp.Callback):
    """Its `init` raises."""

    def init(self, learner):
        raise RuntimeError("no GPU for this callback")


@attrs.define
class Pair(fp.Callback):
    """A group of two."""

    members: tuple = ()

    def subcallbacks(self):
        return self.members


def learner_state(learner):
    """What a failed change of callbacks must leave as it was."""
    return (learner.graph, learner._views, learner.plans, learner.callbacks,
            learner.given_callbacks, learner.groups)


def test_init_that_raises_while_building_keeps_its_type_with_a_note_naming_the_callback():
    with pytest.raises(RuntimeError, match="no GPU") as info:
        test_learner(fp.Recorder(), FailingInit())
    assert info.value.__notes__ == [
        "raised by FailingInit.init(learner), when the learner adopted FailingInit; the "
        "learner's callbacks are as they were"]


@pytest.mark.parametrize("change", [
    lambda learner: learner.add_callback(FailingInit()),
    lambda learner: learner.add_callback(Pair((fp.Metrics(), FailingInit()))),
    lambda learner: learner.replace_callback(fp.Recorder, FailingInit()),
])
def test_init_that_raises_leaves_the_learner_as_it_was(change):
    learner = test_learner(fp.Recorder(), Pair((FitEnds(),)))
    before = learner_state(learner)
    with pytest.raises(RuntimeError, match="no GPU") as info:
        change(learner)
    assert "raised by FailingInit.init(learner)" in info.value.__notes__[0]
    after = learner_state(learner)
    assert all(a is b for a, b in zip(after[:4], before[:4]))
    assert after[4:] == before[4:]
    assert [type(c) for c in learner.callbacks] == [fp.Recorder, Pair, FitEnds]
    assert learner.fit(1).epochs == 1


def test_init_that_raises_in_a_group_names_the_group():
    learner = test_learner(fp.Recorder())
    with pytest.raises(RuntimeError, match="no GPU") as info:
        learner.add_callback(Pair((FailingInit(),)))
    assert info.value.__notes__ == [
        "raised by FailingInit.init(learner) (in the group Pair), when the learner adopted "
        "FailingInit; the learner's callbacks are as they were"]
