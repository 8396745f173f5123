"""The callback graph: edges, conflicts, missing producers, cycles, order and declarations.

Each test makes its own callback classes: methods registered on the generic functions persist.
"""

import itertools
import re

import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner

R, W = fp.Read(), fp.Write()
_UNSET = object()


def callback_type(name, access=_UNSET, after=None):
    """A fresh callback class declaring `access` and `after` (a tuple, or a function giving it)."""
    cls = type(name, (fp.Callback,), {})
    if access is not _UNSET:
        def _access(cb: cls):
            return access

        fp.stateaccess.dispatch(_access)
    if after is not None:
        def _after(cb: cls):
            return after() if callable(after) else after

        fp.runafter.dispatch(_after)
    return cls


def resolve(first_type, second_type, answer):
    """Register `resolveconflict(a: first_type, b: second_type) = answer(a, b)`."""
    def _resolve(a: first_type, b: second_type):
        return answer(a, b)

    fp.resolveconflict.dispatch(_resolve)


def order(callbacks):
    return [type(cb).__name__ for cb in fp.build_graph(callbacks).ordered()]


def cbstate(**children):
    return fp.Access(cbstate=fp.Access(**children))


# -- runafter ------------------------------------------------------------------------------------


def test_runafter_puts_the_listed_callback_first():
    first = callback_type("First")
    second = callback_type("Second", after=(first,))
    assert order([second(), first()]) == ["First", "Second"]


def test_runafter_matches_subclasses():
    parent = callback_type("Parent")
    child = type("Child", (parent,), {})
    late = callback_type("Late", after=(parent,))
    assert order([late(), child()]) == ["Child", "Late"]


def test_runafter_of_an_absent_type_adds_no_constraint():
    absent = callback_type("Absent")
    late = callback_type("Late", after=(absent,))
    other = callback_type("Other")
    assert order([late(), other()]) == ["Late", "Other"]


def test_runafter_may_be_a_list():
    first = callback_type("First")
    second = callback_type("Second", after=[first])
    assert order([second(), first()]) == ["First", "Second"]


def test_runafter_edge_keeps_its_reason():
    first = callback_type("First")
    second = callback_type("Second", after=(first,))
    graph = fp.build_graph([second(), first()])
    assert [(e.before, e.after, e.label) for e in graph.edges] == [(1, 0, "runafter")]
    assert [(r.kind, str(r)) for r in graph.edges[0].reasons] == [
        ("declared", "runafter(Second) lists First"),
    ]


def test_a_reason_is_kept_once():
    first = callback_type("First", cbstate(x=W))
    second = callback_type("Second", cbstate(x=R), after=(first, first))
    graph = fp.build_graph([second(), first()])
    assert [str(r) for e in graph.edges for r in e.reasons] == [
        "runafter(Second) lists First", "First writes cbstate.x, which Second reads",
    ]


# -- writers before readers ----------------------------------------------------------------------


def test_writer_runs_before_reader():
    reader = callback_type("Reader", cbstate(x=R))
    writer = callback_type("Writer", cbstate(x=W))
    assert order([reader(), writer()]) == ["Writer", "Reader"]


def test_writer_of_a_namespace_runs_before_reader_of_a_field():
    reader = callback_type("Reader", fp.Access(batch=fp.Access(loss=R)))
    writer = callback_type("Writer", fp.Access(batch=W))
    assert order([reader(), writer()]) == ["Writer", "Reader"]


def test_writer_of_a_field_runs_before_reader_of_the_namespace():
    reader = callback_type("Reader", fp.Access(batch=R))
    writer = callback_type("Writer", fp.Access(batch=fp.Access(loss=W)))
    graph = fp.build_graph([reader(), writer()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["Writer", "Reader"]
    assert [(r.kind, str(r)) for r in graph.edges[0].reasons] == [
        ("state", "Writer writes batch.loss, which Reader reads"),
    ]
    assert graph.edges[0].label == "batch.loss"


def test_disjoint_paths_add_no_edge():
    reader = callback_type("Reader", fp.Access(batch=fp.Access(loss=R)))
    writer = callback_type("Writer", fp.Access(batch=fp.Access(preds=W)))
    graph = fp.build_graph([reader(), writer()])
    assert graph.edges == ()
    assert [type(cb).__name__ for cb in graph.ordered()] == ["Reader", "Writer"]


def test_reads_and_writes_order_a_chain():
    c = callback_type("C", cbstate(y=R))
    b = callback_type("B", cbstate(x=R, y=W))
    a = callback_type("A", cbstate(x=W))
    assert order([c(), b(), a()]) == ["A", "B", "C"]


def test_ancestors_are_transitive():
    c = callback_type("C", cbstate(y=R))
    b = callback_type("B", cbstate(x=R, y=W))
    a = callback_type("A", cbstate(x=W))
    graph = fp.build_graph([c(), b(), a()])
    assert graph.ancestors == (frozenset({1, 2}), frozenset({2}), frozenset())


# -- write/write conflicts -----------------------------------------------------------------------


def test_unresolved_write_conflict_names_both_callbacks_paths_and_the_method():
    loss = callback_type("LossScaler", fp.Access(batch=fp.Access(loss=W)))
    batch = callback_type("BatchMixer", fp.Access(batch=W))
    with pytest.raises(fp.WriteConflictError) as info:
        fp.build_graph([loss(), batch()])
    assert str(info.value) == (
        "Write conflict between LossScaler and BatchMixer:\n"
        "  - LossScaler writes learner.batch.loss\n"
        "  - BatchMixer writes learner.batch\n"
        "To resolve it, implement\n"
        "    @fp.resolveconflict.dispatch\n"
        "    def _(a: LossScaler, b: BatchMixer):\n"
        "        return fp.RunFirst(a)  # or fp.RunFirst(b), fp.NoConflict(), fp.Unresolvable()"
    )
    assert [type(cb).__name__ for cb in info.value.callbacks] == ["LossScaler", "BatchMixer"]
    assert info.value.paths == (("batch.loss", "batch"),)


def test_write_conflict_is_a_callback_graph_error():
    assert issubclass(fp.WriteConflictError, fp.CallbackGraphError)


def test_resolveconflict_returning_not_defined_is_a_write_conflict():
    a = callback_type("A", fp.Access(model=W))
    b = callback_type("B", fp.Access(model=W))
    resolve(a, b, lambda x, y: fp.NotDefined())
    with pytest.raises(fp.WriteConflictError, match="Write conflict between A and B:"):
        fp.build_graph([a(), b()])


@pytest.mark.parametrize("declared", ["(A, B)", "(B, A)"])
@pytest.mark.parametrize("winner", ["A", "B"])
@pytest.mark.parametrize("listed", ["A, B", "B, A"])
def test_run_first_holds_in_either_argument_order_and_either_list_order(declared, winner, listed):
    types = {"A": callback_type("A", fp.Access(model=W)),
             "B": callback_type("B", fp.Access(model=W))}
    first, second = (types["A"], types["B"]) if declared == "(A, B)" else (types["B"], types["A"])
    resolve(first, second,
            lambda x, y: fp.RunFirst(x if type(x).__name__ == winner else y))
    callbacks = [types[n.strip()]() for n in listed.split(",")]
    loser = "B" if winner == "A" else "A"
    assert order(callbacks) == [winner, loser]


def test_run_first_edge_says_who_declared_it():
    a = callback_type("A", fp.Access(model=W))
    b = callback_type("B", fp.Access(model=W))
    resolve(b, a, lambda x, y: fp.RunFirst(x))
    graph = fp.build_graph([a(), b()])
    assert [(e.before, e.after, e.label) for e in graph.edges] == [(1, 0, "RunFirst: model")]
    assert [(r.kind, str(r)) for r in graph.edges[0].reasons] == [
        ("declared", "RunFirst(B) declared by resolveconflict(B, A) for model"),
    ]


@pytest.mark.parametrize("declared", ["(A, B)", "(B, A)"])
def test_no_conflict_keeps_the_given_order_with_an_edge(declared):
    a = callback_type("A", fp.Access(model=W))
    b = callback_type("B", fp.Access(model=W))
    resolve(*((a, b) if declared == "(A, B)" else (b, a)), lambda x, y: fp.NoConflict())
    graph = fp.build_graph([b(), a()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["B", "A"]
    assert [(e.before, e.after, e.label) for e in graph.edges] == [(0, 1, "no conflict")]
    assert [(r.kind, str(r)) for r in graph.edges[0].reasons] == [
        ("given order", f"NoConflict() declared by resolveconflict{declared} for model: "
                        "their writes commute; kept in the order given"),
    ]
    assert graph.ancestors == (frozenset(), frozenset({0}))


def _stale_read_pair():
    """A writes cbstate.x and reads cbstate.y; B writes both; they say NoConflict."""
    a = callback_type("A", cbstate(x=W, y=R))
    b = callback_type("B", cbstate(x=W, y=W))
    resolve(a, b, lambda x, y: fp.NoConflict())
    return a, b


def test_no_conflict_never_drops_a_write_before_read_edge():
    a, b = _stale_read_pair()
    graph = fp.build_graph([a(), b()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["B", "A"]
    assert [(e.before, e.after, e.label) for e in graph.edges] == [(1, 0, "cbstate.y")]
    assert [(r.kind, str(r)) for r in graph.edges[0].reasons] == [
        ("state", "B writes cbstate.y, which A reads"),
    ]


def test_no_conflict_reader_sees_this_steps_value_in_training():
    a, b = _stale_read_pair()
    seen = []

    def _a_step(event: fp.StepEnd, phase: fp.TrainingPhase, cb: a, learner):
        learner.cbstate.x = "a"
        seen.append(learner.cbstate.y)

    def _b_init(event: fp.FitBegin, phase: fp.Phase, cb: b, learner):
        learner.cbstate.y = 0

    def _b_step(event: fp.StepEnd, phase: fp.TrainingPhase, cb: b, learner):
        learner.cbstate.x = "b"
        learner.cbstate.y += 1

    for method in (_a_step, _b_init, _b_step):
        fp.on.dispatch(method)
    test_learner(a(), b(), n_batches=3).fit(1)
    assert seen == [1, 2, 3]


def test_no_conflict_on_a_read_write_pair_keeps_write_before_read():
    reader = callback_type("Reader", cbstate(x=R))
    writer = callback_type("Writer", cbstate(x=W))
    resolve(reader, writer, lambda x, y: fp.NoConflict())
    assert order([reader(), writer()]) == ["Writer", "Reader"]


def test_no_conflict_given_order_yields_to_a_runafter():
    b = callback_type("B", fp.Access(model=W))
    a = callback_type("A", fp.Access(model=W), after=(b,))
    resolve(a, b, lambda x, y: fp.NoConflict())
    graph = fp.build_graph([a(), b()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["B", "A"]
    assert [str(r) for e in graph.edges for r in e.reasons] == ["runafter(A) lists B"]


def test_no_conflict_given_orders_never_close_a_cycle_with_other_edges():
    # C writes what A reads (C before A); A/B and B/C commute. Given order alone would say
    # A, B, C, which contradicts C before A: the pairs yield instead of forming a cycle.
    a = callback_type("A", fp.Access(model=W, cbstate=fp.Access(y=R)))
    b = callback_type("B", fp.Access(model=W, optimizer=W))
    c = callback_type("C", fp.Access(optimizer=W, cbstate=fp.Access(y=W)))
    resolve(a, b, lambda x, y: fp.NoConflict())
    resolve(b, c, lambda x, y: fp.NoConflict())
    graph = fp.build_graph([a(), b(), c()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["C", "A", "B"]
    assert {(e.before, e.after, e.label) for e in graph.edges} == {
        (2, 0, "cbstate.y"), (0, 1, "no conflict"),
    }


@pytest.mark.parametrize("declared", ["(Reader, Writer)", "(Writer, Reader)"])
def test_run_first_lets_a_reader_see_the_value_before_a_write(declared):
    reader = callback_type("Reader", cbstate(x=R))
    writer = callback_type("Writer", cbstate(x=W))
    if declared == "(Reader, Writer)":
        resolve(reader, writer, lambda x, y: fp.RunFirst(x))
    else:
        resolve(writer, reader, lambda x, y: fp.RunFirst(y))
    graph = fp.build_graph([writer(), reader()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["Reader", "Writer"]
    assert [str(r) for e in graph.edges for r in e.reasons] == [
        f"RunFirst(Reader) declared by resolveconflict{declared} for cbstate.x",
    ]


def test_not_defined_on_a_read_write_pair_is_write_before_read():
    reader = callback_type("Reader", cbstate(x=R))
    writer = callback_type("Writer", cbstate(x=W))
    resolve(reader, writer, lambda x, y: fp.NotDefined())
    assert order([reader(), writer()]) == ["Writer", "Reader"]


def test_each_reads_what_the_other_writes_is_a_cycle_naming_both_reads():
    a = callback_type("A", cbstate(x=W, y=R))
    b = callback_type("B", cbstate(x=R, y=W))
    with pytest.raises(fp.CycleError) as info:
        fp.build_graph([a(), b()])
    assert info.value.reasons == ("A writes cbstate.x, which B reads",
                                  "B writes cbstate.y, which A reads")


@pytest.mark.parametrize("declared", ["(A, B)", "(B, A)"])
def test_unresolvable_names_both_callbacks_and_paths(declared):
    a = callback_type("A", fp.Access(batch=fp.Access(loss=W)))
    b = callback_type("B", fp.Access(batch=fp.Access(loss=W)))
    resolve(*((a, b) if declared == "(A, B)" else (b, a)), lambda x, y: fp.Unresolvable())
    with pytest.raises(fp.UnresolvableConflictError) as info:
        fp.build_graph([a(), b()])
    assert str(info.value) == (
        "A and B cannot be used together: resolveconflict says fp.Unresolvable() for the "
        "state they share (learner.batch.loss). Remove one of them."
    )
    assert isinstance(info.value, fp.CallbackGraphError)


def test_unresolvable_applies_to_a_read_write_pair():
    reader = callback_type("Reader", cbstate(x=R))
    writer = callback_type("Writer", cbstate(x=W))
    resolve(reader, writer, lambda x, y: fp.Unresolvable())
    with pytest.raises(fp.UnresolvableConflictError, match=re.escape(
        "Reader and Writer cannot be used together: resolveconflict says fp.Unresolvable() for "
        "the state they share (learner.cbstate.x). Remove one of them."
    )):
        fp.build_graph([reader(), writer()])


def test_run_first_orders_the_whole_pair_against_its_read_edges():
    # B writes what A reads, which alone would put B first; the answer says A goes first.
    a = callback_type("A", fp.Access(model=W, batch=fp.Access(preds=R)))
    b = callback_type("B", fp.Access(model=W, batch=fp.Access(preds=W)))
    resolve(a, b, lambda x, y: fp.RunFirst(x))
    graph = fp.build_graph([b(), a()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["A", "B"]
    assert [(e.before, e.after) for e in graph.edges] == [(1, 0)]
    assert [str(r) for r in graph.edges[0].reasons] == [
        "RunFirst(A) declared by resolveconflict(A, B) for batch.preds, model",
    ]


@pytest.mark.parametrize("access", [(fp.Access(model=W), fp.Access(optimizer=W)),
                                    (fp.Access(model=R), fp.Access(model=R))],
                         ids=["disjoint writes", "two readers"])
def test_resolveconflict_is_not_consulted_without_an_overlap_involving_a_write(access):
    a = callback_type("A", access[0])
    b = callback_type("B", access[1])
    resolve(a, b, lambda x, y: "not consulted")
    assert order([a(), b()]) == ["A", "B"]


# -- random state --------------------------------------------------------------------------------


def test_two_rng_writers_are_a_write_conflict_whose_fix_is_resolveconflict():
    first = callback_type("Dropper", fp.Access(rng=W))
    second = callback_type("Jitter", fp.Access(rng=W, batch=fp.Access(xs=W)))
    with pytest.raises(fp.WriteConflictError) as info:
        fp.build_graph([first(), second()])
    assert str(info.value) == (
        "Write conflict between Dropper and Jitter:\n"
        "  - Dropper writes learner.rng\n"
        "  - Jitter writes learner.rng\n"
        "To resolve it, implement\n"
        "    @fp.resolveconflict.dispatch\n"
        "    def _(a: Dropper, b: Jitter):\n"
        "        return fp.RunFirst(a)  # or fp.RunFirst(b), fp.NoConflict(), fp.Unresolvable()"
    )


def test_rng_writers_that_commute_keep_the_given_order():
    first = callback_type("Dropper", fp.Access(rng=W))
    second = callback_type("Jitter", fp.Access(rng=W))
    resolve(first, second, lambda x, y: fp.NoConflict())
    graph = fp.build_graph([second(), first()])
    assert [type(cb).__name__ for cb in graph.ordered()] == ["Jitter", "Dropper"]
    assert graph.ancestors == (frozenset(), frozenset({0}))


def test_rng_needs_no_producer():
    reader = callback_type("Reader", fp.Access(rng=R))
    assert order([reader()]) == ["Reader"]


def test_an_rng_writer_trains_and_draws_in_its_handlers():
    jitter = callback_type("Jitter", fp.Access(rng=W, batch=fp.Access(xs=W)))
    draws = []

    def _jitter(event: fp.StepBegin, phase: fp.TrainingPhase, cb: jitter, learner):
        draws.append(torch.rand(()).item())
        learner.batch.xs = learner.batch.xs + draws[-1]

    fp.on.dispatch(_jitter)
    torch.manual_seed(0)
    test_learner(jitter(), n_batches=2).fit(1)
    torch.manual_seed(0)
    assert draws == [torch.rand(()).item(), torch.rand(()).item()]


# -- missing producers ---------------------------------------------------------------------------


def test_reading_cbstate_nobody_writes_names_reader_key_and_producer():
    with pytest.raises(fp.MissingStateError) as info:
        fp.build_graph([fp.MetricsPrinter()])
    assert str(info.value) == (
        "MetricsPrinter reads cbstate.metricsepoch, which no callback writes: add Metrics()."
    )
    assert info.value.key == "metricsepoch"
    assert info.value.path == "cbstate.metricsepoch"


def test_missing_state_without_a_known_producer_says_what_to_add():
    reader = callback_type("Reader", cbstate(foo=fp.Access(bar=R)))
    with pytest.raises(fp.MissingStateError, match=(
        r"^Reader reads cbstate\.foo, which no callback writes: add the callback that writes "
        r"cbstate\.foo\.$"
    )):
        fp.build_graph([reader()])


def test_writer_of_all_cbstate_produces_every_key():
    reader = callback_type("Reader", cbstate(foo=R))
    writer = callback_type("Writer", fp.Access(cbstate=W))
    assert order([reader(), writer()]) == ["Writer", "Reader"]


def test_reads_outside_cbstate_need_no_producer():
    reader = callback_type("Reader", fp.Access(batch=fp.Access(loss=R), model=R))
    assert order([reader()]) == ["Reader"]


def test_missing_producer_is_raised_by_the_learner_before_any_event():
    with pytest.raises(fp.MissingStateError, match=re.escape("add Metrics()")):
        test_learner(fp.MetricsPrinter())


def producer_type(name, *keys, base=fp.Callback):
    """A fresh callback class that writes `cbstate.<key>` and declares it produces each key."""
    cls = type(name, (base,), {})

    def _access(cb: cls):
        return cbstate(**{key: W for key in keys})

    def _produces(callback_type: type[cls]):
        return keys

    fp.stateaccess.dispatch(_access)
    fp.produces.dispatch(_produces)
    return cls


def test_the_hint_names_a_callback_type_that_declares_it_produces_the_key():
    producer_type("Counter", "count")
    reader = callback_type("Reader", cbstate(count=R))
    with pytest.raises(fp.MissingStateError) as info:
        fp.build_graph([reader()])
    assert str(info.value) == "Reader reads cbstate.count, which no callback writes: add Counter()."


def test_the_hint_names_every_unrelated_type_that_produces_the_key():
    producer_type("Tally", "tally")
    producer_type("Abacus", "tally", "beads")
    reader = callback_type("Reader", cbstate(tally=R))
    with pytest.raises(fp.MissingStateError, match=re.escape("add Tally() or Abacus().")):
        fp.build_graph([reader()])


def test_a_subclass_inherits_the_declaration_and_the_hint_names_the_declaring_type():
    base = producer_type("Ledger", "ledger")
    sub = type("BigLedger", (base,), {})
    assert fp.produces(sub) == ("ledger",)
    reader = callback_type("Reader", cbstate(ledger=R))
    with pytest.raises(fp.MissingStateError, match=re.escape("add Ledger().")):
        fp.build_graph([reader()])


def test_a_declared_producer_in_the_list_satisfies_the_reader():
    ledger = producer_type("Journal", "journal")
    reader = callback_type("Reader", cbstate(journal=R))
    assert order([reader(), ledger()]) == ["Journal", "Reader"]


def test_the_builtin_producers_declare_their_keys():
    assert fp.produces(fp.Recorder) == ("history",)
    assert fp.produces(fp.Metrics) == ("metricsstep", "metricsepoch")
    assert fp.produces(fp.MetricsPrinter) == ()


# -- cycles --------------------------------------------------------------------------------------


def test_runafter_cycle_lists_the_cycle_and_each_reason():
    types = {}
    types["A"] = callback_type("A", after=lambda: (types["B"],))
    types["B"] = callback_type("B", after=lambda: (types["A"],))
    with pytest.raises(fp.CycleError) as info:
        fp.build_graph([types["A"](), types["B"]()])
    assert str(info.value) == (
        "The callbacks' ordering constraints form a cycle: A -> B -> A\n"
        "  - runafter(B) lists A\n"
        "  - runafter(A) lists B\n"
        "Break it: drop a runafter entry or change a resolveconflict answer."
    )
    assert [type(cb).__name__ for cb in info.value.cycle] == ["A", "B"]


def test_cycle_of_mixed_edges_gives_each_edge_its_reason():
    c = callback_type("C", fp.Access(cbstate=fp.Access(y=R), model=W))
    b = callback_type("B", fp.Access(cbstate=fp.Access(x=R, y=W)))
    a = callback_type("A", fp.Access(cbstate=fp.Access(x=W)), after=(c,))
    with pytest.raises(fp.CycleError) as info:
        fp.build_graph([a(), b(), c()])
    assert str(info.value).splitlines() == [
        "The callbacks' ordering constraints form a cycle: A -> B -> C -> A",
        "  - A writes cbstate.x, which B reads",
        "  - B writes cbstate.y, which C reads",
        "  - runafter(A) lists C",
        "Break it: drop a runafter entry or change a resolveconflict answer.",
    ]


def test_cycle_through_run_first_names_the_answer():
    types = {}
    types["A"] = callback_type("A", fp.Access(model=W), after=lambda: (types["B"],))
    types["B"] = callback_type("B", fp.Access(model=W))
    resolve(types["A"], types["B"], lambda x, y: fp.RunFirst(x))
    with pytest.raises(fp.CycleError) as info:
        fp.build_graph([types["A"](), types["B"]()])
    assert info.value.reasons == (
        "RunFirst(A) declared by resolveconflict(A, B) for model",
        "runafter(A) lists B",
    )


def test_self_listing_runafter_is_ignored():
    types = {}
    types["A"] = callback_type("A", after=lambda: (types["A"],))
    assert order([types["A"]()]) == ["A"]


# -- stable order --------------------------------------------------------------------------------


@pytest.mark.parametrize("names", list(itertools.permutations("PQRS")))
def test_unconstrained_callbacks_keep_the_given_order(names):
    types = {n: callback_type(n, fp.Access(batch=R)) for n in "PQRS"}
    assert order([types[n]() for n in names]) == list(names)


def test_constrained_callbacks_move_no_further_than_needed():
    a = callback_type("A")
    b = callback_type("B", after=(a,))
    c = callback_type("C")
    d = callback_type("D")
    assert order([c(), b(), d(), a()]) == ["C", "D", "A", "B"]


def test_instances_of_one_type_are_numbered():
    a = callback_type("A")
    graph = fp.build_graph([a(), callback_type("B")(), a()])
    assert graph.names == ("A#1", "B", "A#2")


# -- malformed declarations ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [None, {"batch": "read"}, fp.Read(), "batch"],
                         ids=["None", "dict", "Read", "str"])
def test_stateaccess_must_return_an_access(bad):
    cls = callback_type("Sloppy", bad)
    with pytest.raises(fp.CallbackDeclarationError, match=(
        "^" + re.escape(f"stateaccess(Sloppy) returned {bad!r}; it must return an fp.Access(...) "
                        "tree, e.g. fp.Access(batch=fp.Access(loss=fp.Read())).") + "$"
    )):
        fp.build_graph([cls()])


def test_runafter_must_list_types_not_instances():
    first = callback_type("First")
    second = callback_type("Second", after=(first(),))
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"runafter\(Second\) lists <.*First object at .*>, an instance; list the type instead: "
        r"\(First,\)\."
    )):
        fp.build_graph([second()])


@pytest.mark.parametrize("bad", ["first", None, "set"], ids=["type", "None", "set"])
def test_runafter_must_return_a_tuple(bad):
    first = callback_type("First")
    value = {"first": first, "None": None, "set": {first}}[bad if bad is not None else "None"]
    second = callback_type("Second", after=lambda: value)
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"runafter\(Second\) returned .*; it must return a tuple of callback types"
    )):
        fp.build_graph([second()])


def test_runafter_listing_a_name_says_to_list_the_class():
    second = callback_type("Second", after=("Metrics",))
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"runafter\(Second\) lists 'Metrics', which is not a type; list callback classes, "
        r"e\.g\. \(fp\.Metrics,\)\."
    )):
        fp.build_graph([second()])


@pytest.mark.parametrize("junk", ["first", True, None, fp.RunFirst], ids=["str", "bool", "None",
                                                                           "class"])
def test_resolveconflict_must_return_an_answer(junk):
    a = callback_type("A", fp.Access(model=W))
    b = callback_type("B", fp.Access(model=W))
    resolve(a, b, lambda x, y: junk)
    with pytest.raises(fp.CallbackDeclarationError, match=(
        "^" + re.escape(f"resolveconflict(A, B) returned {junk!r}; it must return "
                        "fp.NotDefined(), fp.Unresolvable(), fp.NoConflict() or "
                        "fp.RunFirst(callback).") + "$"
    )):
        fp.build_graph([a(), b()])


def test_run_first_of_a_third_callback_is_a_declaration_error():
    a = callback_type("A", fp.Access(model=W))
    b = callback_type("B", fp.Access(model=W))
    third = callback_type("Third")()
    resolve(a, b, lambda x, y: fp.RunFirst(third))
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"resolveconflict\(A, B\) returned RunFirst\(.*Third object.*\), which is neither "
        r"argument; return fp\.RunFirst\(a\) or fp\.RunFirst\(b\)"
    )):
        fp.build_graph([a(), b()])


def test_non_callback_is_a_declaration_error():
    with pytest.raises(fp.CallbackDeclarationError, match=(
        r"^'printer' is not a callback: callbacks are instances of fp\.Callback subclasses\.$"
    )):
        fp.build_graph(["printer"])


def test_declaration_errors_are_type_errors_and_graph_errors():
    assert issubclass(fp.CallbackDeclarationError, TypeError)
    assert issubclass(fp.CallbackDeclarationError, fp.CallbackGraphError)


# -- raised by the learner, before any event -----------------------------------------------------


def _watched(name, access):
    """A callback type declaring `access` whose FitBegin handler records that it ran."""
    cls = callback_type(name, access)
    fired = []

    def _fit_begin(event: fp.FitBegin, phase: fp.Phase, cb: cls, learner):
        fired.append(name)

    fp.on.dispatch(_fit_begin)
    return cls, fired


@pytest.mark.parametrize("error", ["conflict", "missing", "cycle", "declaration"])
def test_graph_errors_are_raised_when_the_learner_is_built(error):
    cls, fired = _watched("Watched", fp.Access(model=W, cbstate=fp.Access(x=R)))
    others = {
        "conflict": [callback_type("Other", fp.Access(model=W, cbstate=fp.Access(x=W)))()],
        "missing": [],
        "cycle": [callback_type("Other", fp.Access(cbstate=fp.Access(x=W)),
                                after=(cls,))()],
        "declaration": [callback_type("Other", "not an Access")(),
                        callback_type("Producer", fp.Access(cbstate=fp.Access(x=W)))()],
    }[error]
    kind = {"conflict": fp.WriteConflictError, "missing": fp.MissingStateError,
            "cycle": fp.CycleError, "declaration": fp.CallbackDeclarationError}[error]
    with pytest.raises(kind):
        test_learner(cls(), *others)
    assert fired == []


def test_adding_a_conflicting_callback_leaves_the_learner_as_it_was():
    a = callback_type("A", fp.Access(model=W))
    b = callback_type("B", fp.Access(model=W))
    learner = test_learner(a())
    with pytest.raises(fp.WriteConflictError):
        learner.add_callback(b())
    assert [type(cb).__name__ for cb in learner.callbacks] == ["A"]


def test_declaration_registered_after_build_is_checked_at_the_next_fit_before_any_event():
    cls, fired = _watched("Watched", fp.Access(model=W))
    other = callback_type("Other")
    learner = test_learner(cls(), other())

    def _other_access(cb: other):
        return fp.Access(model=W)

    fp.stateaccess.dispatch(_other_access)
    with pytest.raises(fp.WriteConflictError, match="Write conflict between Watched and Other"):
        learner.fit(1)
    assert fired == []


# -- ambiguous handlers --------------------------------------------------------------------------


def _ambiguous_type(name):
    cls = callback_type(name)

    def _by_event(event: fp.StepEnd, phase: fp.Phase, cb: cls, learner):
        pass

    def _by_phase(event: fp.Event, phase: fp.TrainingPhase, cb: cls, learner):
        pass

    return cls, _by_event, _by_phase


def test_ambiguous_on_methods_fail_at_learner_build_listing_both():
    cls, by_event, by_phase = _ambiguous_type("Twice")
    fp.on.dispatch(by_event)
    fp.on.dispatch(by_phase)
    with pytest.raises(fp.AmbiguousHandlerError) as info:
        test_learner(cls())
    where = f"{__name__}._ambiguous_type.<locals>"
    assert str(info.value) == (
        "on(StepEnd(), TrainingPhase(), Twice, learner) is ambiguous: these methods match "
        "equally well:\n"
        f"  - {where}._by_event(StepEnd, Phase, Twice, Any)\n"
        f"  - {where}._by_phase(Event, TrainingPhase, Twice, Any)\n"
        "Add a method for the more specific pair, or narrow one of them."
    )
    assert info.value.event is fp.StepEnd
    assert info.value.phase is fp.TrainingPhase


def test_ambiguity_introduced_after_build_is_reported_by_explain():
    cls, by_event, by_phase = _ambiguous_type("Twice")
    learner = test_learner(cls())
    fp.on.dispatch(by_event)
    fp.on.dispatch(by_phase)
    with pytest.raises(fp.AmbiguousHandlerError, match=r"_by_event\(StepEnd, Phase, Twice, Any\)"):
        fp.explain(learner)


# -- rendering -----------------------------------------------------------------------------------


def _small_graph():
    reader = callback_type("Reader", cbstate(x=R))
    writer = callback_type("Writer", cbstate(x=W))
    audit = callback_type("Audit", after=(reader,))
    left = callback_type("Left", fp.Access(model=W))
    right = callback_type("Right", fp.Access(model=W))
    resolve(left, right, lambda a, b: fp.NoConflict())
    first = callback_type("First", fp.Access(optimizer=W))
    then = callback_type("Then", fp.Access(optimizer=W))
    resolve(then, first, lambda a, b: fp.RunFirst(b))
    return fp.build_graph([reader(), writer(), audit(), left(), right(), then(), first()])


def test_small_graph_order():
    assert [type(cb).__name__ for cb in _small_graph().ordered()] == [
        "Writer", "Reader", "Audit", "Left", "Right", "First", "Then",
    ]


def test_to_mermaid():
    assert _small_graph().to_mermaid() == "\n".join([
        "flowchart LR",
        '    c1["Writer"]',
        '    c0["Reader"]',
        '    c2["Audit"]',
        '    c3["Left"]',
        '    c4["Right"]',
        '    c6["First"]',
        '    c5["Then"]',
        '    c0 -- "runafter" --> c2',
        '    c1 -- "cbstate.x" --> c0',
        '    c6 -- "RunFirst: optimizer" --> c5',
        '    c3 -. "no conflict" .-> c4',
    ])


def test_to_dot():
    assert _small_graph().to_dot() == "\n".join([
        "digraph callbacks {",
        "    rankdir=LR;",
        "    node [shape=box];",
        '    c1 [label="Writer"];',
        '    c0 [label="Reader"];',
        '    c2 [label="Audit"];',
        '    c3 [label="Left"];',
        '    c4 [label="Right"];',
        '    c6 [label="First"];',
        '    c5 [label="Then"];',
        '    c0 -> c2 [label="runafter"];',
        '    c1 -> c0 [label="cbstate.x"];',
        '    c6 -> c5 [label="RunFirst: optimizer"];',
        '    c3 -> c4 [style=dashed, label="no conflict"];',
        "}",
    ])


def test_a_conflict_between_two_callbacks_of_one_type_names_them_apart():
    with pytest.raises(fp.WriteConflictError, match=r"between ToDevice#1 and ToDevice#2"):
        fp.build_graph([fp.ToDevice("cpu"), fp.ToDevice("cpu")])
