"""Phases: a class hierarchy of frozen, hashable values compared by type and fields."""

import attrs
import pytest

import fluxpy as fp


def test_training_phase_hierarchy():
    assert fp.TrainingPhase.__mro__[:3] == (
        fp.TrainingPhase, fp.AbstractTrainingPhase, fp.Phase,
    )


def test_validation_phase_hierarchy():
    assert fp.ValidationPhase.__mro__[:3] == (
        fp.ValidationPhase, fp.AbstractValidationPhase, fp.Phase,
    )


def test_training_and_validation_branches_are_separate():
    assert not issubclass(fp.TrainingPhase, fp.AbstractValidationPhase)
    assert not issubclass(fp.ValidationPhase, fp.AbstractTrainingPhase)


def test_phases_of_one_type_are_equal_and_hash_alike():
    assert fp.TrainingPhase() == fp.TrainingPhase()
    assert hash(fp.TrainingPhase()) == hash(fp.TrainingPhase())
    history = {fp.TrainingPhase(): 1, fp.ValidationPhase(): 2}
    assert history[fp.TrainingPhase()] == 1
    assert history[fp.ValidationPhase()] == 2


def test_phases_of_different_types_differ():
    assert fp.Phase() != fp.TrainingPhase()
    assert fp.TrainingPhase() != fp.ValidationPhase()


def test_phases_are_frozen():
    phase = fp.TrainingPhase()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        phase.name = "changed"


def test_phase_prints_as_its_type_name():
    assert str(fp.ValidationPhase()) == "ValidationPhase"


def test_user_phase_with_fields_compares_by_fields():
    @attrs.frozen
    class GANPhase(fp.AbstractTrainingPhase):
        part: str = "generator"

    assert isinstance(GANPhase(), fp.AbstractTrainingPhase)
    assert GANPhase("critic") == GANPhase("critic")
    assert GANPhase("critic") != GANPhase("generator")
    assert len({GANPhase("critic"), GANPhase("critic"), GANPhase()}) == 2
