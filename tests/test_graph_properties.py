"""Properties of the callback graph over random callback sets (hypothesis).

For random access trees, `runafter` lists and `resolveconflict` answers (declared in either
argument order), `build_graph` either raises the `CallbackGraphError` the rules call for, or
returns an order in which every constraint holds and unconstrained callbacks keep their places.
"""

from hypothesis import given, settings
from random_callbacks import (
    RESOLVABLE,
    declared,
    expectation,
    scenarios,
    stable_order_violation,
)

import fluxpy as fp

FAST = settings(max_examples=100, deadline=None)


@FAST
@given(scenarios())
def test_graph_raises_a_graph_error_exactly_when_the_rules_call_for_one(scenario):
    expected = expectation(scenario)
    with declared(scenario) as callbacks:
        try:
            fp.build_graph(callbacks)
        except fp.CallbackGraphError as error:
            assert isinstance(error, expected.errors), f"unexpected {error!r}"
        else:
            assert expected.errors == (), f"expected one of {expected.errors}"


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_every_constraint_holds_in_the_run_order(scenario):
    expected = expectation(scenario)
    with declared(scenario) as callbacks:
        try:
            graph = fp.build_graph(callbacks)
        except fp.CallbackGraphError as error:
            assert isinstance(error, expected.errors), f"unexpected {error!r}"
            return
    assert sorted(graph.order) == list(range(len(callbacks)))
    position = {i: k for k, i in enumerate(graph.order)}
    for before, after in expected.edges:
        assert position[before] < position[after], f"{before} must run before {after}"
    assert {(e.before, e.after) for e in graph.edges} == set(expected.edges)
    assert graph.exclusive == expected.exclusive


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_order_is_the_given_order_wherever_constraints_allow(scenario):
    expected = expectation(scenario)
    with declared(scenario) as callbacks:
        try:
            graph = fp.build_graph(callbacks)
        except fp.CallbackGraphError:
            return
    assert stable_order_violation(graph.order, expected.edges) is None


@FAST
@given(scenarios(answers=RESOLVABLE))
def test_ancestors_are_everything_that_must_run_before(scenario):
    expected = expectation(scenario)
    with declared(scenario) as callbacks:
        try:
            graph = fp.build_graph(callbacks)
        except fp.CallbackGraphError:
            return
    for i in range(len(callbacks)):
        reach, frontier = set(), [i]
        while frontier:
            node = frontier.pop()
            for before, after in expected.edges:
                if after == node and before not in reach:
                    reach.add(before)
                    frontier.append(before)
        assert graph.ancestors[i] == frozenset(reach)
