"""Events: a class hierarchy of frozen, hashable values compared by type."""

import attrs
import pytest

import fluxpy as fp

BUILTIN = [
    fp.FitBegin, fp.FitEnd, fp.EpochBegin, fp.EpochEnd, fp.StepBegin, fp.StepEnd,
    fp.LossBegin, fp.BackwardBegin, fp.BackwardEnd,
]


@pytest.mark.parametrize("kind", BUILTIN, ids=lambda k: k.__name__)
def test_every_builtin_event_is_an_event(kind):
    assert issubclass(kind, fp.Event)
    assert isinstance(kind(), fp.Event)


def test_builtin_events_are_direct_children_of_event():
    assert all(kind.__bases__ == (fp.Event,) for kind in BUILTIN)


def test_batch_aliases_are_the_step_events():
    assert fp.BatchBegin is fp.StepBegin
    assert fp.BatchEnd is fp.StepEnd


def test_events_of_one_type_are_equal_and_hash_alike():
    assert fp.StepEnd() == fp.StepEnd()
    assert hash(fp.StepEnd()) == hash(fp.StepEnd())
    assert {fp.StepEnd(): "x"}[fp.StepEnd()] == "x"


def test_events_of_different_types_differ():
    assert fp.StepBegin() != fp.StepEnd()
    assert len({kind() for kind in BUILTIN}) == len(BUILTIN)


def test_events_are_frozen():
    event = fp.StepEnd()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.name = "changed"


def test_event_prints_as_its_type_name():
    assert str(fp.BackwardEnd()) == "BackwardEnd"


def test_user_event_subclasses_event_and_compares_by_type():
    @attrs.frozen
    class Logged(fp.Event):
        pass

    assert isinstance(Logged(), fp.Event)
    assert Logged() == Logged()
    assert Logged() != fp.StepEnd()
    assert str(Logged()) == "Logged"
