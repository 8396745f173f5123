"""The callback dependency graph: a pure function of the callbacks and their declarations.

Edges, each kept with the reasons it exists:

1. `runafter(b)` lists a type that `a` is an instance of: `a` before `b` (declared).
2. For every pair whose paths overlap with at least one write (paths overlap when one is a
   prefix of the other), `resolveconflict` is asked, in both argument orders:
   - `NotDefined()`: each writer runs before the other's reads of what it writes (inferred from
     state); two writers of overlapping paths are a `WriteConflictError`.
   - `RunFirst(x)`: `x` runs first, for the whole pair (declared). This is how a reader asks for
     a value before another callback writes it.
   - `NoConflict()`: the pair's writes commute. Write-before-read edges stay as for
     `NotDefined()`; a pair that nothing else orders keeps the order in which it was given
     (an edge, so the two never run at the same time).
   - `Unresolvable()`: an `UnresolvableConflictError`.

A read of `cbstate.X` that no callback writes is an error, and so is a cycle. Unconstrained
callbacks keep the order in which they were given (Kahn's algorithm, lowest index first).
All errors are `fp.CallbackGraphError`s raised here, when the learner is built.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import attrs

from .access import Access, Path, overlaps, render_path
from .callback import (
    Callback,
    NoConflict,
    NotDefined,
    RunFirst,
    Unresolvable,
    produces,
    resolveconflict,
    runafter,
    stateaccess,
)
from .errors import (
    CallbackDeclarationError,
    CycleError,
    MissingStateError,
    UnresolvableConflictError,
    WriteConflictError,
)

__all__ = ["CallbackGraph", "Edge", "Reason", "build_graph"]

#: The kinds of `Reason`: an order someone declared (`runafter`, `RunFirst`), one inferred
#: from state access (write before read), and the given order of a `NoConflict` pair.
DECLARED, STATE, GIVEN_ORDER = "declared", "state", "given order"


@attrs.frozen
class Reason:
    """Why an edge exists, in words (`text`), and where the order comes from (`kind`).

    For `explain`, which tells each once: `from_runafter` marks a `runafter` entry (told once
    per declaring callback), `path` is the state a write-before-read reason is about (told
    once per pair of callbacks).
    """

    kind: str
    text: str
    from_runafter: bool = False
    path: str = ""

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class Edge:
    """`before` runs before `after` (indices into `CallbackGraph.callbacks`), and why."""

    before: int
    after: int
    reasons: tuple[Reason, ...]
    label: str

    @property
    def given_order(self) -> bool:
        """Whether the edge only keeps a `NoConflict` pair in the order given."""
        return all(r.kind == GIVEN_ORDER for r in self.reasons)


@attrs.frozen
class CallbackGraph:
    """The callbacks, their declarations, the edges and a run order that respects them."""

    callbacks: tuple[Callback, ...]
    names: tuple[str, ...]
    access: tuple[Access, ...]
    edges: tuple[Edge, ...]
    order: tuple[int, ...]
    ancestors: tuple[frozenset[int], ...]

    def ordered(self) -> list[Callback]:
        """The callbacks in run order."""
        return [self.callbacks[i] for i in self.order]

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (callbacks in run order, edges labelled; a dotted
        arrow keeps a `NoConflict` pair in the order given)."""
        lines = ["flowchart LR"]
        lines += [f'    c{i}["{self.names[i]}"]' for i in self.order]
        for e in self.edges:
            arrow = f'-. "{e.label}" .->' if e.given_order else f'-- "{e.label}" -->'
            lines.append(f"    c{e.before} {arrow} c{e.after}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The graph in Graphviz DOT."""
        lines = ["digraph callbacks {", "    rankdir=LR;", "    node [shape=box];"]
        lines += [f'    c{i} [label="{self.names[i]}"];' for i in self.order]
        for e in self.edges:
            style = "style=dashed, " if e.given_order else ""
            lines.append(f'    c{e.before} -> c{e.after} [{style}label="{e.label}"];')
        lines.append("}")
        return "\n".join(lines)


class _Edges:
    """The edges found so far: reasons (each once) and labels per ordered pair."""

    def __init__(self) -> None:
        self.by_pair: dict[tuple[int, int], tuple[list[Reason], list[str]]] = {}

    def add(self, before: int, after: int, reason: Reason, label: str) -> None:
        reasons, labels = self.by_pair.setdefault((before, after), ([], []))
        if reason not in reasons:
            reasons.append(reason)
        if label not in labels:
            labels.append(label)

    def reaches(self, start: int, goal: int) -> bool:
        """Whether a path of edges leads from `start` to `goal`."""
        seen, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            if node == goal:
                return True
            for before, after in self.by_pair:
                if before == node and after not in seen:
                    seen.add(after)
                    frontier.append(after)
        return False

    def frozen(self) -> tuple[Edge, ...]:
        return tuple(Edge(i, j, tuple(reasons), ", ".join(labels))
                     for (i, j), (reasons, labels) in self.by_pair.items())


@attrs.frozen
class _Overlap:
    """What a pair `i < j` shares: paths both write, and (writer, reader, path) reads."""

    writes: tuple[tuple[Path, Path], ...]
    reads: tuple[tuple[int, int, str], ...]

    def paths(self) -> str:
        found = {render_path(_longer(p, q)) for p, q in self.writes}
        found |= {path for _, _, path in self.reads}
        return ", ".join(sorted(found))


def build_graph(callbacks: Sequence[Callback], names: Sequence[str] | None = None) -> CallbackGraph:
    """Check the callbacks' declarations and order them; raises `fp.CallbackGraphError`s."""
    cbs = tuple(callbacks)
    names = tuple(names) if names is not None else _default_names(cbs)
    access = tuple(_access_of(cb) for cb in cbs)
    after = [_runafter_of(cb) for cb in cbs]
    reads = [a.reads() for a in access]
    writes = [a.writes() for a in access]
    edges = _Edges()

    for j, types in enumerate(after):
        for i, cb in enumerate(cbs):
            if i != j and isinstance(cb, types):
                edges.add(i, j, Reason(DECLARED, f"runafter({names[j]}) lists "
                                                 f"{type(cb).__name__}", from_runafter=True),
                          "runafter")

    commuting: list[tuple[int, int, Reason]] = []
    for i in range(len(cbs)):
        for j in range(i + 1, len(cbs)):
            shared = _overlap(i, j, reads, writes)
            if shared.writes or shared.reads:
                given = _resolve(cbs, names, i, j, shared, edges)
                if given is not None:
                    commuting.append((i, j, given))

    # After every other edge is known, so that the given order yields to them (a NoConflict
    # pair ordered the other way by a runafter or a chain of reads is fine, not a cycle).
    for i, j, reason in commuting:
        if not edges.reaches(i, j) and not edges.reaches(j, i):
            edges.add(i, j, reason, "no conflict")

    _check_producers(cbs, reads, writes)
    frozen_edges = edges.frozen()
    order = _toposort(cbs, frozen_edges, names)
    return CallbackGraph(cbs, names, access, frozen_edges, order,
                         _ancestors(len(cbs), frozen_edges, order))


def _overlap(i: int, j: int, reads, writes) -> _Overlap:
    both = tuple((p, q) for p in writes[i] for q in writes[j] if overlaps(p, q))
    read = tuple(
        (w, r, render_path(_longer(p, q)))
        for w, r in ((i, j), (j, i)) for p in writes[w] for q in reads[r] if overlaps(p, q)
    )
    return _Overlap(both, read)


def _longer(p: Path, q: Path) -> Path:
    """Of two overlapping paths, the one that names the state they share."""
    return q if len(q) > len(p) else p


def _resolve(cbs, names, i, j, shared: _Overlap, edges: _Edges) -> Reason | None:
    """Add the pair's edges as its `resolveconflict` answer says; returns the reason for a
    given-order edge when the pair's writes commute and nothing of theirs orders them."""
    a, b = cbs[i], cbs[j]
    answer, asked = _resolution(a, b), (i, j)
    if isinstance(answer, NotDefined):
        answer, asked = _resolution(b, a), (j, i)
    declared_by = f"resolveconflict({names[asked[0]]}, {names[asked[1]]})"
    if isinstance(answer, Unresolvable):
        pairs = [(render_path(p), render_path(q)) for p, q in shared.writes] or [
            (path, path) for _, _, path in shared.reads]
        raise UnresolvableConflictError(a, b, pairs, (names[i], names[j]))
    if isinstance(answer, RunFirst):
        first, second = (i, j) if answer.callback is a else (j, i)
        edges.add(first, second, Reason(DECLARED, f"RunFirst({names[first]}) declared by "
                                                  f"{declared_by} for {shared.paths()}"),
                  f"RunFirst: {shared.paths()}")
        return None
    if isinstance(answer, NotDefined) and shared.writes:
        rendered = [(render_path(p), render_path(q)) for p, q in shared.writes]
        raise WriteConflictError(a, b, rendered, (names[i], names[j]))
    for w, r, path in shared.reads:
        edges.add(w, r, Reason(STATE, f"{names[w]} writes {path}, which {names[r]} reads",
                               path=path), path)
    if isinstance(answer, NoConflict) and shared.writes and not shared.reads:
        return Reason(GIVEN_ORDER, f"NoConflict() declared by {declared_by} for "
                                   f"{shared.paths()}: their writes commute; kept in the "
                                   "order given")
    return None


def _resolution(a: Callback, b: Callback):
    answer = _ask(resolveconflict, a, b)
    valid = (NotDefined, Unresolvable, NoConflict, RunFirst)
    if not isinstance(answer, valid):
        raise CallbackDeclarationError(
            f"resolveconflict({type(a).__name__}, {type(b).__name__}) returned {answer!r}; "
            "it must return fp.NotDefined(), fp.Unresolvable(), fp.NoConflict() or "
            "fp.RunFirst(callback)."
        )
    if isinstance(answer, RunFirst) and answer.callback is not a and answer.callback is not b:
        raise CallbackDeclarationError(
            f"resolveconflict({type(a).__name__}, {type(b).__name__}) returned "
            f"RunFirst({answer.callback!r}), which is neither argument; return fp.RunFirst(a) "
            "or fp.RunFirst(b) with one of the callbacks it was given."
        )
    return answer


def _ask(declaration, *cbs: Callback):
    """`declaration(*cbs)`, with a note naming the declaration and callbacks if it raises."""
    try:
        return declaration(*cbs)
    except Exception as exc:
        exc.add_note(f"raised by {declaration.__name__}"
                     f"({', '.join(type(cb).__name__ for cb in cbs)})")
        raise


def _access_of(cb: Callback) -> Access:
    if not isinstance(cb, Callback):
        raise CallbackDeclarationError(
            f"{cb!r} is not a callback: callbacks are instances of fp.Callback subclasses"
            + (f"; pass {cb.__name__}() instead."
               if isinstance(cb, type) and issubclass(cb, Callback) else ".")
        )
    access = _ask(stateaccess, cb)
    if not isinstance(access, Access):
        raise CallbackDeclarationError(
            f"stateaccess({type(cb).__name__}) returned {access!r}; it must return an "
            "fp.Access(...) tree, e.g. fp.Access(batch=fp.Access(loss=fp.Read()))."
        )
    return access


def _runafter_of(cb: Callback) -> tuple[type, ...]:
    types = _ask(runafter, cb)
    name = type(cb).__name__
    if not isinstance(types, (tuple, list)):
        raise CallbackDeclarationError(
            f"runafter({name}) returned {types!r}; it must return a tuple of callback types, "
            "e.g. (fp.Metrics,)."
        )
    for t in types:
        if isinstance(t, Callback):
            raise CallbackDeclarationError(
                f"runafter({name}) lists {t!r}, an instance; list the type instead: "
                f"({type(t).__name__},)."
            )
        if not isinstance(t, type):
            raise CallbackDeclarationError(
                f"runafter({name}) lists {t!r}, which is not a type; list callback classes, "
                "e.g. (fp.Metrics,)."
            )
    return tuple(types)


def _check_producers(cbs, reads, writes) -> None:
    """Each read of `cbstate.X` needs another callback that writes it; the error's fix names
    the callback classes that declare they produce `X`."""
    for r, paths in enumerate(reads):
        for q in paths:
            if q[0] != "cbstate" or len(q) < 2:
                continue
            produced = any(
                overlaps(p, q) for w, ps in enumerate(writes) if w != r for p in ps
            )
            if not produced:
                producers = " or ".join(f"{cls.__name__}()" for cls in _declared_producers(q[1]))
                hint = f"add {producers}" if producers else None
                raise MissingStateError(cbs[r], render_path(q[:2]), hint)


def _declared_producers(key: str) -> list[type[Callback]]:
    """The callback classes whose `produces` lists `key`, less the subclasses that inherit it."""
    found = [cls for cls in _subclasses(Callback) if key in produces(cls)]
    return [cls for cls in found if not any(base in found for base in cls.__mro__[1:])]


def _subclasses(cls: type) -> list[type]:
    """Every class that derives from `cls` and has been defined, each once."""
    found = {}
    for sub in cls.__subclasses__():
        found[sub] = None
        found.update(dict.fromkeys(_subclasses(sub)))
    return list(found)


def _toposort(cbs, edges: Sequence[Edge], names) -> tuple[int, ...]:
    n = len(cbs)
    succ: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for e in edges:
        succ[e.before].append(e.after)
        indegree[e.after] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in succ[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < n:
        _raise_cycle(cbs, names, set(range(n)) - set(order), edges, succ)
    return tuple(order)


def _raise_cycle(cbs, names, remaining: set[int], edges: Sequence[Edge], succ) -> None:
    """Walk from the lowest remaining index until a node repeats: that loop is a cycle.

    Every node Kahn's algorithm left behind has a predecessor that was also left behind, so
    walking successors inside `remaining` cannot get stuck.
    """
    preds: dict[int, list[int]] = {i: [] for i in remaining}
    for e in edges:
        if e.before in remaining and e.after in remaining:
            preds[e.after].append(e.before)
    by_pair = {(e.before, e.after): e for e in edges}
    node, seen, walk = min(remaining), {}, []
    while node not in seen:
        seen[node] = len(walk)
        walk.append(node)
        node = min(preds[node])
    cycle = list(reversed(walk[seen[node]:]))
    start = cycle.index(min(cycle))  # read it from the callback given first
    cycle = cycle[start:] + cycle[:start]
    pairs = zip(cycle, [*cycle[1:], cycle[0]])
    reasons = ["; ".join(map(str, by_pair[pair].reasons)) for pair in pairs]
    raise CycleError([cbs[i] for i in cycle], reasons, [names[i] for i in cycle])


def _ancestors(n: int, edges: Sequence[Edge], order: Sequence[int]) -> tuple[frozenset[int], ...]:
    preds: list[set[int]] = [set() for _ in range(n)]
    for e in edges:
        preds[e.after].add(e.before)
    result: list[frozenset[int]] = [frozenset()] * n
    for i in order:
        acc: set[int] = set(preds[i])
        for p in preds[i]:
            acc |= result[p]
        result[i] = frozenset(acc)
    return tuple(result)


def _default_names(cbs: Sequence[Callback]) -> tuple[str, ...]:
    counts: dict[str, int] = {}
    for cb in cbs:
        counts[type(cb).__name__] = counts.get(type(cb).__name__, 0) + 1
    seen: dict[str, int] = {}
    names = []
    for cb in cbs:
        name = type(cb).__name__
        if counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}#{seen[name]}"
        names.append(name)
    return tuple(names)
