"""`fluxpy.__all__`: the public names, sorted, each one importable from the package."""

import fluxpy


def test_public_names_are_sorted():
    assert fluxpy.__all__ == sorted(fluxpy.__all__)


def test_public_names_are_listed_once():
    assert len(fluxpy.__all__) == len(set(fluxpy.__all__))


def test_every_public_name_exists():
    assert [name for name in fluxpy.__all__ if not hasattr(fluxpy, name)] == []


def test_star_import_gives_the_public_names():
    namespace: dict = {}
    exec("from fluxpy import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(fluxpy.__all__)


def test_the_contract_names_are_public():
    contract = {
        "Phase", "AbstractTrainingPhase", "TrainingPhase", "AbstractValidationPhase",
        "ValidationPhase", "Event", "FitBegin", "FitEnd", "EpochBegin", "EpochEnd", "StepBegin",
        "StepEnd", "BatchBegin", "BatchEnd", "LossBegin", "BackwardBegin", "BackwardEnd",
        "on", "stateaccess", "runafter", "resolveconflict", "NotDefined", "Unresolvable",
        "NoConflict", "RunFirst", "step", "epoch", "Read", "Write", "Access", "ProtectedError",
        "UnsafeCallback", "build_graph", "explain", "CallbackGraphError", "Executor", "Handler",
        "SerialExecutor", "ThreadedExecutor", "Learner", "run_step", "run_epoch",
        "CancelStepException", "CancelEpochException", "CancelFitException",
    }
    assert sorted(contract - set(fluxpy.__all__)) == []
