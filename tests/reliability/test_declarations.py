"""Bad declarations: each is refused when the learner is built (or the method registered), with
a message that names the callback, what is wrong and the fix.

Each test makes its own callback classes: methods registered on the generic functions persist.
"""

import re

import pytest

import fluxpy as fp
from fluxpy.testing import test_learner


def callback_type(name):
    return type(name, (fp.Callback,), {})


def declare(function, cls, result):
    """Register `function(cb: cls) = result`."""
    def _declaration(cb: cls):
        return result

    function.dispatch(_declaration)


def build(*callbacks):
    """Build a learner; the handlers of `FitBegin` must never run for a refused one."""
    return test_learner(*callbacks)


# -- stateaccess ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{"batch": "read"}, None, fp.Write(), "batch.loss"],
                         ids=["dict", "None", "bare permission", "str"])
def test_stateaccess_returning_something_else_than_an_access(bad):
    cls = callback_type("Sloppy")
    declare(fp.stateaccess, cls, bad)
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        f"stateaccess(Sloppy) returned {bad!r}; it must return an fp.Access(...) tree, e.g. "
        "fp.Access(batch=fp.Access(loss=fp.Read()))."
    )):
        build(cls())


@pytest.mark.parametrize(("leaf", "message"), [
    ("read", "Access(loss='read'): 'loss' must be fp.Read(), fp.Write() or a nested "
             "fp.Access(...), not str."),
    (True, "Access(loss=True): 'loss' must be fp.Read(), fp.Write() or a nested "
           "fp.Access(...), not bool."),
    (fp.Write, "Access(loss=Write): permissions are instances; write loss=Write() instead."),
    ({"x": fp.Read()}, "Access(loss={'x': Read()}): 'loss' must be fp.Read(), fp.Write() or a "
                       "nested fp.Access(...), not dict."),
])
def test_access_with_a_non_permission_leaf_names_the_entry_and_the_callback(leaf, message):
    cls = callback_type("Sloppy")

    def _sloppy_access(cb: cls):
        return fp.Access(batch=fp.Access(loss=leaf))

    fp.stateaccess.dispatch(_sloppy_access)
    with pytest.raises(TypeError, match=re.escape(message)) as info:
        build(cls())
    assert info.value.__notes__ == ["raised by stateaccess(Sloppy)"]


def test_access_with_a_bad_leaf_fails_where_it_is_written():
    with pytest.raises(TypeError, match=re.escape("Access(batch='read')")):
        fp.Access(batch="read")


# -- runafter ------------------------------------------------------------------------------------


def test_runafter_listing_an_instance_says_to_list_its_type():
    first = callback_type("First")
    late = callback_type("Late")
    declare(fp.runafter, late, (first(),))
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"^runafter\(Late\) lists <.*First object at 0x\w+>, an instance; list the type instead: "
        r"\(First,\)\.$"
    )):
        build(first(), late())


def test_runafter_returning_a_bare_type_says_to_return_a_tuple():
    first = callback_type("First")
    late = callback_type("Late")
    declare(fp.runafter, late, first)
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"^runafter\(Late\) returned <class '.*First'>; it must return a tuple of callback types, "
        r"e\.g\. \(fp\.Metrics,\)\.$"
    )):
        build(first(), late())


def test_runafter_listing_a_class_name_says_to_list_the_class():
    late = callback_type("Late")
    declare(fp.runafter, late, ("Metrics",))
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        "runafter(Late) lists 'Metrics', which is not a type; list callback classes, "
        "e.g. (fp.Metrics,)."
    )):
        build(late())


def test_runafter_that_raises_is_named_in_a_note():
    late = callback_type("Late")

    def _late_after(cb: late):
        return (fp.NoSuchCallback,)

    fp.runafter.dispatch(_late_after)
    with pytest.raises(AttributeError, match="NoSuchCallback") as info:
        build(late())
    assert info.value.__notes__ == ["raised by runafter(Late)"]


# -- resolveconflict -----------------------------------------------------------------------------


def _writers():
    a = callback_type("Left")
    b = callback_type("Right")
    declare(fp.stateaccess, a, fp.Access(model=fp.Write()))
    declare(fp.stateaccess, b, fp.Access(model=fp.Write()))
    return a, b


@pytest.mark.parametrize("junk", ["Left", True, None, fp.NoConflict, 0],
                         ids=["str", "bool", "None", "class", "int"])
def test_resolveconflict_returning_junk_lists_the_valid_answers(junk):
    a, b = _writers()

    def _resolve(x: a, y: b):
        return junk

    fp.resolveconflict.dispatch(_resolve)
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        f"resolveconflict(Left, Right) returned {junk!r}; it must return fp.NotDefined(), "
        "fp.Unresolvable(), fp.NoConflict() or fp.RunFirst(callback)."
    )):
        build(a(), b())


def test_resolveconflict_naming_a_third_callback_says_to_pick_an_argument():
    a, b = _writers()
    third = callback_type("Third")()

    def _resolve(x: a, y: b):
        return fp.RunFirst(third)

    fp.resolveconflict.dispatch(_resolve)
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        "which is neither argument; return fp.RunFirst(a) or fp.RunFirst(b) with one of the "
        "callbacks it was given."
    )):
        build(a(), b(), third)


def test_resolveconflict_returning_a_type_for_run_first_is_refused():
    a, b = _writers()

    def _resolve(x: a, y: b):
        return fp.RunFirst(a)

    fp.resolveconflict.dispatch(_resolve)
    with pytest.raises(fp.CallbackDeclarationError, match=r"which is neither argument"):
        build(a(), b())


# -- on methods ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "count"), [
    ("event, phase, cb", 3), ("event, phase, cb, learner, extra", 5), ("learner", 1),
])
def test_on_method_with_the_wrong_arity_shows_the_signature_to_write(params, count):
    namespace = {}
    exec(f"def _handler({params}): pass", namespace)
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        f"on methods take 4 parameters (event, phase, callback, learner), but _handler takes "
        f"{count}. Write it as `def _handler(event, phase, callback, learner): ...`."
    )):
        fp.on.dispatch(namespace["_handler"])


def test_stateaccess_method_with_the_wrong_arity_is_refused():
    def _access(cb, learner):
        return fp.Access()

    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        "stateaccess methods take 1 parameters (callback), but "
    )):
        fp.stateaccess.dispatch(_access)


def test_ambiguous_on_methods_are_refused_at_build_listing_both():
    cls = callback_type("Twice")

    def _by_event(event: fp.StepEnd, phase: fp.Phase, cb: cls, learner):
        pass

    def _by_phase(event: fp.Event, phase: fp.ValidationPhase, cb: cls, learner):
        pass

    fp.on.dispatch(_by_event)
    fp.on.dispatch(_by_phase)
    with pytest.raises(fp.AmbiguousHandlerError) as info:
        build(cls())
    lines = str(info.value).splitlines()
    assert lines[0] == (
        "on(StepEnd(), ValidationPhase(), Twice, learner) is ambiguous: these methods match "
        "equally well:"
    )
    assert lines[1].endswith("._by_event(StepEnd, Phase, Twice, Any)")
    assert lines[2].endswith("._by_phase(Event, ValidationPhase, Twice, Any)")
    assert lines[3] == "Add a method for the more specific pair, or narrow one of them."
    assert isinstance(info.value, fp.CallbackGraphError)


def test_ambiguous_on_methods_are_reported_by_explain():
    cls = callback_type("Twice")
    learner = build(cls())

    def _by_event(event: fp.EpochEnd, phase: fp.Phase, cb: cls, learner):
        pass

    def _by_phase(event: fp.Event, phase: fp.TrainingPhase, cb: cls, learner):
        pass

    fp.on.dispatch(_by_event)
    fp.on.dispatch(_by_phase)
    with pytest.raises(fp.AmbiguousHandlerError, match=re.escape(
        "on(EpochEnd(), TrainingPhase(), Twice, learner) is ambiguous"
    )):
        fp.explain(learner)


# -- the callbacks themselves --------------------------------------------------------------------


def test_a_callback_class_instead_of_an_instance_says_to_call_it():
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        "is not a callback: callbacks are instances of fp.Callback subclasses; pass Recorder() "
        "instead"
    )):
        build(fp.Recorder)


def test_a_non_callback_in_a_group_names_the_group():
    group = callback_type("Group")
    instance = group()
    instance.subcallbacks = lambda: (fp.Recorder(), "progress")
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        "'progress' is not a callback: callbacks are instances of fp.Callback subclasses "
        "(found in Group)"
    )):
        build(instance)


def test_the_same_callback_twice_is_refused():
    recorder = fp.Recorder()
    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
        "Recorder was given twice (the same object); pass it once."
    )):
        build(recorder, recorder)


def test_refused_declarations_never_reach_an_event():
    cls = callback_type("Sloppy")
    declare(fp.stateaccess, cls, "everything")
    fired = []

    def _fit_begin(event: fp.FitBegin, phase: fp.Phase, cb: cls, learner):
        fired.append(event)

    fp.on.dispatch(_fit_begin)
    with pytest.raises(fp.CallbackDeclarationError):
        build(cls())
    assert fired == []
