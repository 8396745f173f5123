"""Random callback sets for the property tests of the graph and the threaded executor.

The callback types are made once with `type(...)` and share one method of each declaration
function, which reads the current example's declarations from `CURRENT`. Registering fresh
methods for every example would pile thousands of methods onto the global generic functions
and slow every later lookup.

`expectation(scenario)` is an independent model of the rules in DESIGN.md: which errors the
declarations call for, and otherwise the edges that any valid run order must respect.
"""

from __future__ import annotations

import contextlib
import graphlib

import attrs
from hypothesis import strategies as st

import fluxpy as fp
from fluxpy.core.access import overlaps

PATHS = [
    ("batch",), ("batch", "loss"), ("batch", "preds"), ("model",),
    ("cbstate",), ("cbstate", "a"), ("cbstate", "b"), ("rng",),
]
ANSWERS = ["first", "second", "none", "unresolvable", "undefined"]
RESOLVABLE = ["first", "second", "none"]


class RandomCallback(fp.Callback):
    """Base of the random callback types."""


TYPES = tuple(type(f"Cb{i}", (RandomCallback,), {}) for i in range(8))


@attrs.define
class Scenario:
    """Callbacks in the order given, and what each type declares."""

    callbacks: list
    access: dict  # type -> fp.Access
    after: dict  # type -> tuple of types
    answers: dict  # (type, type) as declared -> one of ANSWERS, about the declared arguments

    def __repr__(self) -> str:
        lines = [f"callbacks: {[type(cb).__name__ for cb in self.callbacks]}"]
        lines += [f"  {t.__name__}: {a!r}, runafter {[x.__name__ for x in self.after[t]]}"
                  for t, a in self.access.items()]
        lines += [f"  resolveconflict({a.__name__}, {b.__name__}) = {v}"
                  for (a, b), v in self.answers.items()]
        return "\n".join(lines)


CURRENT = Scenario([], {}, {}, {})


@fp.stateaccess.dispatch
def _random_access(cb: RandomCallback):
    return CURRENT.access[type(cb)]


@fp.runafter.dispatch
def _random_after(cb: RandomCallback):
    return CURRENT.after[type(cb)]


@fp.resolveconflict.dispatch
def _random_resolve(a: RandomCallback, b: RandomCallback):
    answer = CURRENT.answers.get((type(a), type(b)), "undefined")
    return {"first": fp.RunFirst(a), "second": fp.RunFirst(b), "none": fp.NoConflict(),
            "unresolvable": fp.Unresolvable(), "undefined": fp.NotDefined()}[answer]


@contextlib.contextmanager
def declared(scenario: Scenario):
    """Make `scenario`'s declarations the ones the random types answer with."""
    global CURRENT
    previous, CURRENT = CURRENT, scenario
    try:
        yield scenario.callbacks
    finally:
        CURRENT = previous


def _tree(path, write):
    node = fp.Write() if write else fp.Read()
    for name in reversed(path[1:]):
        node = fp.Access(**{name: node})
    return fp.Access(**{path[0]: node})


# Strategies are built once: building them inside the composite costs more than drawing.
_LEAVES = st.lists(st.tuples(st.sampled_from(PATHS), st.booleans()), max_size=3)
_AFTER = st.lists(st.sampled_from(TYPES), max_size=2, unique=True)
_ORDERS = st.permutations(TYPES)


def _access(leaves):
    access = fp.Access()
    for path, write in leaves:
        access = access | _tree(path, write)
    return access


def scenarios(max_callbacks=6, answers=ANSWERS):
    """A random callback set; `answers` are the `resolveconflict` results to draw from."""
    return _scenarios(st.integers(1, max_callbacks), st.sampled_from(answers))


@st.composite
def _scenarios(draw, counts, answers):
    types = draw(_ORDERS)[:draw(counts)]
    access = {t: _access(draw(_LEAVES)) for t in types}
    after = {t: tuple(draw(_AFTER)) for t in types}
    declared_answers = {}
    for i, a in enumerate(types):
        for b in types[i + 1:]:
            pair = (a, b) if draw(st.booleans()) else (b, a)
            declared_answers[pair] = draw(answers)
    return Scenario([t() for t in types], access, after, declared_answers)


@attrs.frozen
class Expectation:
    """What the rules say about a scenario: the errors it must raise, or the constraints."""

    errors: tuple  # error types any of which is acceptable; empty: it must build
    edges: frozenset  # (before, after) index pairs: exactly the graph's edges
    given_order: frozenset  # the edges that only keep a NoConflict pair in the given order
    run_first: frozenset  # (first, second) pairs ordered by a RunFirst answer


def _answer(scenario, a, b):
    """The answer for callbacks `a`, `b` as (kind, index of the one to run first or None)."""
    for x, y in ((a, b), (b, a)):
        answer = scenario.answers.get((type(x), type(y)), "undefined")
        if answer != "undefined":
            first = {"first": x, "second": y}.get(answer)
            return answer, first
    return "undefined", None


def overlap(paths, other_paths) -> bool:
    return any(overlaps(p, q) for p in paths for q in other_paths)


def _reaches(edges, start, goal) -> bool:
    seen, frontier = {start}, [start]
    while frontier:
        node = frontier.pop()
        if node == goal:
            return True
        for before, after in edges:
            if before == node and after not in seen:
                seen.add(after)
                frontier.append(after)
    return False


def expectation(scenario: Scenario) -> Expectation:
    """The rules of DESIGN.md ("The graph and its errors"), applied pair by pair."""
    cbs = scenario.callbacks
    reads = [scenario.access[type(cb)].reads() for cb in cbs]
    writes = [scenario.access[type(cb)].writes() for cb in cbs]
    errors, edges, run_first, commuting = set(), set(), set(), []
    for j, cb in enumerate(cbs):
        for i, other in enumerate(cbs):
            if i != j and isinstance(other, scenario.after[type(cb)]):
                edges.add((i, j))
    for i in range(len(cbs)):
        for j in range(i + 1, len(cbs)):
            both_write = overlap(writes[i], writes[j])
            read_edges = {(w, r) for w, r in ((i, j), (j, i)) if overlap(writes[w], reads[r])}
            if not both_write and not read_edges:
                continue
            kind, first = _answer(scenario, cbs[i], cbs[j])
            if kind == "unresolvable":
                errors.add(fp.UnresolvableConflictError)
            elif kind in ("first", "second"):
                pair = (i, j) if first is cbs[i] else (j, i)
                run_first.add(pair)
                edges.add(pair)
            elif kind == "undefined" and both_write:
                errors.add(fp.WriteConflictError)
            else:
                edges |= read_edges
                if kind == "none" and both_write and not read_edges:
                    commuting.append((i, j))
    given_order = set()
    for i, j in commuting:  # in the order the pairs were given
        if not _reaches(edges, i, j) and not _reaches(edges, j, i):
            edges.add((i, j))
            given_order.add((i, j))
    for r, paths in enumerate(reads):
        for q in paths:
            if q[0] == "cbstate" and len(q) > 1 and not any(
                overlaps(p, q) for w in range(len(cbs)) if w != r for p in writes[w]
            ):
                errors.add(fp.MissingStateError)
    sorter = graphlib.TopologicalSorter({j: {i for i, k in edges if k == j}
                                         for j in range(len(cbs))})
    try:
        sorter.prepare()
    except graphlib.CycleError:
        errors.add(fp.CycleError)
    return Expectation(tuple(errors), frozenset(edges), frozenset(given_order),
                       frozenset(run_first))


def stable_order_violation(order, edges) -> str | None:
    """Each position must hold the lowest-indexed callback whose predecessors already ran."""
    placed: set[int] = set()
    for k, chosen in enumerate(order):
        ready = [i for i in range(len(order)) if i not in placed
                 and all(b in placed for b, a in edges if a == i)]
        if chosen != min(ready):
            return f"position {k} holds {chosen}, but {min(ready)} was ready and given earlier"
        placed.add(chosen)
    return None
