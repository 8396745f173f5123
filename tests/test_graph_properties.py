"""Properties of the callback graph over random callback sets (hypothesis).

For random access trees, `runafter` lists and `resolveconflict` answers (declared in either
argument order), `build_graph` either raises the `CallbackGraphError` the rules call for, or
returns an order in which every constraint holds and unconstrained callbacks keep their places.
The rules are checked twice: against the model in `random_callbacks.expectation`, and directly
from the declarations (writer before reader unless a `RunFirst` says otherwise, no overlapping
pair ever concurrent).
"""

from hypothesis import given, settings
from random_callbacks import (
    RESOLVABLE,
    declared,
    expectation,
    overlap,
    scenarios,
    stable_order_violation,
)

import fluxpy as fp

FAST = settings(max_examples=150, deadline=None)


def _build(scenario, expected):
    """The graph, or `None` after checking that the error raised is one the rules call for."""
    with declared(scenario) as callbacks:
        try:
            graph = fp.build_graph(callbacks)
        except fp.CallbackGraphError as error:
            assert isinstance(error, expected.errors), f"unexpected {error!r}"
            return None
    assert expected.errors == (), f"built, but expected one of {expected.errors}"
    return graph


@FAST
@given(scenarios())
def test_graph_raises_a_graph_error_exactly_when_the_rules_call_for_one(scenario):
    _build(scenario, expectation(scenario))


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_the_graph_has_exactly_the_edges_the_rules_call_for(scenario):
    expected = expectation(scenario)
    graph = _build(scenario, expected)
    if graph is None:
        return
    assert sorted(graph.order) == list(range(len(scenario.callbacks)))
    position = {i: k for k, i in enumerate(graph.order)}
    for before, after in expected.edges:
        assert position[before] < position[after], f"{before} must run before {after}"
    assert {(e.before, e.after) for e in graph.edges} == set(expected.edges)
    given_order = {(e.before, e.after) for e in graph.edges
                   if {r.kind for r in e.reasons} == {"given order"}}
    assert given_order == set(expected.given_order)


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_every_writer_runs_before_every_reader_unless_a_run_first_says_otherwise(scenario):
    expected = expectation(scenario)
    graph = _build(scenario, expected)
    if graph is None:
        return
    reads = [a.reads() for a in graph.access]
    writes = [a.writes() for a in graph.access]
    for w in range(len(writes)):
        for r in range(len(reads)):
            if w == r or not overlap(writes[w], reads[r]):
                continue
            if (r, w) in expected.run_first:
                assert r in graph.ancestors[w], f"RunFirst puts reader {r} before writer {w}"
            else:
                assert w in graph.ancestors[r], f"writer {w} must run before reader {r}"


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_no_two_callbacks_with_overlapping_state_can_run_at_the_same_time(scenario):
    expected = expectation(scenario)
    graph = _build(scenario, expected)
    if graph is None:
        return
    n = len(graph.callbacks)
    reads = [a.reads() for a in graph.access]
    writes = [a.writes() for a in graph.access]
    for i in range(n):
        for j in range(i + 1, n):
            if (overlap(writes[i], writes[j]) or overlap(writes[i], reads[j])
                    or overlap(writes[j], reads[i])):
                assert i in graph.ancestors[j] or j in graph.ancestors[i], (
                    f"{i} and {j} share state but nothing orders them")


@FAST
@given(scenarios(answers=["none"]))
def test_a_given_order_edge_joins_commuting_writers_in_the_order_given(scenario):
    expected = expectation(scenario)
    graph = _build(scenario, expected)
    if graph is None:
        return
    reads = [a.reads() for a in graph.access]
    writes = [a.writes() for a in graph.access]
    for e in graph.edges:
        kinds = {r.kind for r in e.reasons}
        if "given order" in kinds:
            i, j = e.before, e.after
            assert kinds == {"given order"} and i < j
            assert overlap(writes[i], writes[j])
            assert not overlap(writes[i], reads[j]) and not overlap(writes[j], reads[i])


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_order_is_the_given_order_wherever_constraints_allow(scenario):
    expected = expectation(scenario)
    graph = _build(scenario, expected)
    if graph is None:
        return
    assert stable_order_violation(graph.order, expected.edges) is None


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_ancestors_are_everything_that_must_run_before(scenario):
    expected = expectation(scenario)
    graph = _build(scenario, expected)
    if graph is None:
        return
    for i in range(len(scenario.callbacks)):
        reach, frontier = set(), [i]
        while frontier:
            node = frontier.pop()
            for before, after in expected.edges:
                if after == node and before not in reach:
                    reach.add(before)
                    frontier.append(before)
        assert graph.ancestors[i] == frozenset(reach)
