"""Generic functions: most specific method wins, registration is observable, `which` resolves.

Each test defines its own callback classes: methods registered on `fp.on` persist.
"""

import pickle
import re

import attrs
import pytest

import fluxpy as fp
from fluxpy.core.dispatch import GenericFunction
from fluxpy.testing import test_learner


def _which(event, phase, cb_type):
    method = fp.on.which(event, phase, cb_type, fp.Learner)
    return None if method is None else method.__name__


def _handle(event, phase, cb):
    calls = []
    fp.on(event, phase, cb, calls)
    return calls


def test_most_specific_event_wins():
    class Cb(fp.Callback):
        pass

    @fp.on.dispatch
    def _any_event(event: fp.Event, phase: fp.Phase, cb: Cb, learner):
        learner.append("event")

    @fp.on.dispatch
    def _step_end(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        learner.append("stepend")

    assert _handle(fp.StepEnd(), fp.TrainingPhase(), Cb()) == ["stepend"]
    assert _handle(fp.StepBegin(), fp.TrainingPhase(), Cb()) == ["event"]


def test_most_specific_phase_wins():
    class Cb(fp.Callback):
        pass

    @fp.on.dispatch
    def _any_phase(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        learner.append("phase")

    @fp.on.dispatch
    def _abstract_training(event: fp.StepEnd, phase: fp.AbstractTrainingPhase, cb: Cb, learner):
        learner.append("abstract training")

    @fp.on.dispatch
    def _training(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Cb, learner):
        learner.append("training")

    assert _handle(fp.StepEnd(), fp.TrainingPhase(), Cb()) == ["training"]
    assert _handle(fp.StepEnd(), fp.ValidationPhase(), Cb()) == ["phase"]


def test_most_specific_callback_wins():
    class Parent(fp.Callback):
        pass

    class Child(Parent):
        pass

    @fp.on.dispatch
    def _parent(event: fp.StepEnd, phase: fp.Phase, cb: Parent, learner):
        learner.append("parent")

    @fp.on.dispatch
    def _child(event: fp.StepEnd, phase: fp.Phase, cb: Child, learner):
        learner.append("child")

    assert _handle(fp.StepEnd(), fp.Phase(), Child()) == ["child"]
    assert _handle(fp.StepEnd(), fp.Phase(), Parent()) == ["parent"]


def test_handler_for_abstract_training_phase_fires_in_a_user_subclass():
    @attrs.frozen
    class GANPhase(fp.AbstractTrainingPhase):
        pass

    class Cb(fp.Callback):
        pass

    @fp.on.dispatch
    def _abstract(event: fp.StepEnd, phase: fp.AbstractTrainingPhase, cb: Cb, learner):
        learner.append(type(phase).__name__)

    assert _handle(fp.StepEnd(), GANPhase(), Cb()) == ["GANPhase"]
    assert _which(fp.StepEnd, GANPhase, Cb) == "_abstract"
    assert _which(fp.StepEnd, fp.ValidationPhase, Cb) is None


def test_handler_for_abstract_training_phase_fires_in_a_learner_event():
    @attrs.frozen
    class GANPhase(fp.AbstractTrainingPhase):
        pass

    class Cb(fp.Callback):
        pass

    seen = []

    @fp.on.dispatch
    def _abstract(event: fp.StepEnd, phase: fp.AbstractTrainingPhase, cb: Cb, learner):
        seen.append(type(phase).__name__)

    learner = test_learner(Cb())
    learner.handle(fp.StepEnd(), GANPhase())
    assert seen == ["GANPhase"]


def test_fallback_does_nothing_and_returns_none():
    class Cb(fp.Callback):
        pass

    assert fp.on(fp.StepEnd(), fp.TrainingPhase(), Cb(), None) is None


def test_which_is_none_when_only_the_fallback_applies():
    class Cb(fp.Callback):
        pass

    assert fp.on.which(fp.StepEnd, fp.TrainingPhase, Cb, fp.Learner) is None


def test_which_names_the_method_without_calling_it():
    class Cb(fp.Callback):
        pass

    calls = []

    @fp.on.dispatch
    def _cb_step_end(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        calls.append(1)

    assert fp.on.which(fp.StepEnd, fp.TrainingPhase, Cb, fp.Learner) is _cb_step_end
    assert calls == []


def test_resolve_returns_the_fallback_when_nothing_else_applies():
    class Cb(fp.Callback):
        pass

    assert fp.on.resolve(fp.StepEnd, fp.TrainingPhase, Cb, fp.Learner) is fp.on.fallback


def test_dispatch_returns_the_function_unchanged():
    class Cb(fp.Callback):
        pass

    def _cb_handler(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        return "called directly"

    assert fp.on.dispatch(_cb_handler) is _cb_handler
    assert _cb_handler(None, None, None, None) == "called directly"


def test_dispatch_with_precedence_returns_the_function_unchanged():
    class Cb(fp.Callback):
        pass

    def _cb_handler(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        pass

    assert fp.on.dispatch(precedence=1)(_cb_handler) is _cb_handler


def test_precedence_breaks_a_tie():
    class Cb(fp.Callback):
        pass

    @fp.on.dispatch
    def _by_event(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        pass

    @fp.on.dispatch(precedence=1)
    def _by_phase(event: fp.Event, phase: fp.TrainingPhase, cb: Cb, learner):
        pass

    assert fp.on.which(fp.StepEnd, fp.TrainingPhase, Cb, fp.Learner) is _by_phase


def test_module_level_handler_stays_picklable():
    assert pickle.loads(pickle.dumps(fp.on.dispatch(_module_level_handler))) is (
        _module_level_handler
    )


class _PickleCb(fp.Callback):
    pass


def _module_level_handler(event: fp.StepEnd, phase: fp.Phase, cb: _PickleCb, learner):
    pass


def test_registration_counter_counts_each_dispatch():
    fn = GenericFunction(_fallback2, arity=2, params="a, b")
    assert fn.registrations == 0
    fn.dispatch(_int_int)
    fn.dispatch(_str_str)
    assert fn.registrations == 2
    assert len(fn.methods) == 3  # the fallback and the two


def _fallback2(a: object, b: object):
    return "fallback"


def _int_int(a: int, b: int):
    return "ints"


def _str_str(a: str, b: str):
    return "strs"


def test_generic_function_dispatches_and_resolves_by_type():
    fn = GenericFunction(_fallback2, arity=2, params="a, b")
    fn.dispatch(_int_int)
    assert fn(1, 2) == "ints"
    assert fn(1, "x") == "fallback"
    assert fn.which(int, int) is _int_int
    assert fn.which(int, str) is None


def test_resolution_cache_is_dropped_on_registration():
    fn = GenericFunction(_fallback2, arity=2, params="a, b")
    assert fn.which(str, str) is None
    fn.dispatch(_str_str)
    assert fn.which(str, str) is _str_str


def test_method_registered_after_first_use_runs():
    class Cb(fp.Callback):
        pass

    seen = []

    @fp.on.dispatch
    def _cb_step_begin(event: fp.StepBegin, phase: fp.Phase, cb: Cb, learner):
        seen.append("StepBegin")

    learner = test_learner(Cb())
    learner.handle(fp.StepEnd(), fp.TrainingPhase())
    learner.handle(fp.StepBegin(), fp.TrainingPhase())
    assert seen == ["StepBegin"]

    @fp.on.dispatch
    def _cb_step_end(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        seen.append("StepEnd")

    learner.handle(fp.StepEnd(), fp.TrainingPhase())
    assert seen == ["StepBegin", "StepEnd"]


def test_more_specific_method_registered_after_first_use_takes_over():
    class Cb(fp.Callback):
        pass

    seen = []

    @fp.on.dispatch
    def _cb_general(event: fp.StepEnd, phase: fp.Phase, cb: Cb, learner):
        seen.append("general")

    learner = test_learner(Cb())
    learner.handle(fp.StepEnd(), fp.TrainingPhase())

    @fp.on.dispatch
    def _cb_specific(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Cb, learner):
        seen.append("specific")

    learner.handle(fp.StepEnd(), fp.TrainingPhase())
    assert seen == ["general", "specific"]


def test_plan_skips_callbacks_with_only_the_fallback():
    class Handles(fp.Callback):
        pass

    class Silent(fp.Callback):
        pass

    @fp.on.dispatch
    def _handles_step_end(event: fp.StepEnd, phase: fp.Phase, cb: Handles, learner):
        pass

    learner = test_learner(Silent(), Handles(), Silent())
    plan = learner.plans.handlers(fp.StepEnd(), fp.TrainingPhase())
    assert [h.name for h in plan] == ["Handles"]
    assert learner.plans.handlers(fp.StepBegin(), fp.TrainingPhase()) == ()


@pytest.mark.parametrize(
    ("fn", "bad", "message"),
    [
        (fp.on, lambda event, phase, cb: None,
         r"on methods take 4 parameters \(event, phase, callback, learner\), but .* takes 3"),
        (fp.stateaccess, lambda cb, extra: None,
         r"stateaccess methods take 1 parameters \(callback\), but .* takes 2"),
        (fp.runafter, lambda: None,
         r"runafter methods take 1 parameters \(callback\), but .* takes 0"),
        (fp.resolveconflict, lambda a: None,
         r"resolveconflict methods take 2 parameters \(first, second\), but .* takes 1"),
    ],
    ids=["on", "stateaccess", "runafter", "resolveconflict"],
)
def test_wrong_arity_is_a_declaration_error(fn, bad, message):
    before = fn.registrations
    with pytest.raises(fp.CallbackDeclarationError, match=message):
        fn.dispatch(bad)
    assert fn.registrations == before


def test_arity_error_shows_the_signature_to_write():
    def _short(event, phase, cb):
        pass

    fix = re.escape("Write it as `def _short(event, phase, callback, learner): ...`.")
    with pytest.raises(fp.CallbackDeclarationError, match=fix):
        fp.on.dispatch(_short)


def test_varargs_method_is_rejected():
    def _star(event, phase, cb, learner, *rest):
        pass

    with pytest.raises(fp.CallbackDeclarationError, match="on methods take 4 parameters"):
        fp.on.dispatch(_star)


def test_generic_function_repr_names_it():
    assert repr(fp.on).startswith("<generic function fluxpy.on with ")
    assert fp.on.__name__ == "on"
