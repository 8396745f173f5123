"""CustomCallback: a function on one event and phase, with declared access."""

import pytest

import fluxpy as fp
from fluxpy.testing import test_learner


def counting():
    calls = []
    return calls, lambda learner: calls.append(1)


def test_runs_only_for_its_event_and_phase():
    calls, fn = counting()
    test_learner(fp.CustomCallback(fn, fp.StepEnd, fp.TrainingPhase)).fit(2)
    assert len(calls) == 32


def test_phase_type_matches_subclasses():
    calls, fn = counting()
    test_learner(fp.CustomCallback(fn, fp.EpochEnd, fp.AbstractTrainingPhase)).fit(3)
    assert len(calls) == 3


def test_runs_on_every_event_by_default():
    calls, fn = counting()
    test_learner(fp.CustomCallback(fn), n_batches=1).fit(1)
    assert len(calls) == 2 + 7 + 5  # fit begin/end, a training epoch and a validation epoch


def test_fn_gets_the_protected_view_with_the_declared_access():
    losses = []
    record = fp.CustomCallback(lambda learner: losses.append(learner.batch.loss), fp.StepEnd,
                               fp.ValidationPhase,
                               access=fp.Access(batch=fp.Access(loss=fp.Read())))
    test_learner(record, n_batches=2).fit(1)
    assert len(losses) == 2


def test_undeclared_access_is_a_protected_error_naming_the_callback():
    peek = fp.CustomCallback(lambda learner: learner.batch.loss, fp.StepEnd)
    with pytest.raises(fp.ProtectedError,
                       match=r"CustomCallback may not read learner\.batch\.loss"):
        test_learner(peek).fit(1)


def test_event_instance_instead_of_type_is_an_error():
    with pytest.raises(TypeError, match=r"pass an event type such as fp\.StepEnd"):
        fp.CustomCallback(print, fp.StepEnd())


def test_phase_instance_instead_of_type_is_an_error():
    with pytest.raises(TypeError, match=r"pass a phase type such as fp\.TrainingPhase"):
        fp.CustomCallback(print, fp.StepEnd, fp.TrainingPhase())


def test_declares_the_access_it_was_given():
    access = fp.Access(model=fp.Read())
    assert fp.stateaccess(fp.CustomCallback(print, access=access)) == access
