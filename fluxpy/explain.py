"""`explain(learner)`: a dry run that shows what will run, in which order, and why.

Nothing is trained and no state changes: the text lists each callback with its reads and
writes (and the group it came from), then, for each phase and event that has handlers, the
handlers in the order they will run, then why the graph orders them, each reason once: first
the orders someone declared (a `runafter` once per callback declaring it, `RunFirst(...)
declared by resolveconflict(...)`), then those inferred from state access (a writer before
its readers), then the given order kept by `NoConflict` pairs. Names are padded to the
longest, however long. The result is a `str` with `to_mermaid()` and `to_dot()` for drawing
the graph.

`graph_report(learner)` is the same as plain values, with the graph's picture as PNG bytes
(drawn by `fluxpy.support.graph_picture`, as `fp.plot_graph` draws it), a `GraphReport`: what
experiment trackers (`fp.MLflowBackend`, `fp.WandbBackend`) store with each run. Callbacks may
not import this module (it sits above them) and a handler's view cannot call the graph's
methods, so handlers read it as `learner.graph_report`, declared with `graph_report=fp.Read()`;
being a frozen record of strings and bytes, it reaches them as it is.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import attrs

from .core.access import render_path
from .core.callback import UnsafeCallback, on
from .core.events import BUILTIN_EVENTS, TRAINING_EVENTS, VALIDATION_EVENTS, Event, FitBegin, FitEnd
from .core.every import Every
from .core.graph import DECLARED, GIVEN_ORDER, STATE, CallbackGraph, Edge, Reason
from .core.phases import (
    AbstractTrainingPhase,
    Phase,
    PredictionPhase,
    TrainingPhase,
    ValidationPhase,
)
from .engine.firing import fires
from .support.graph_picture import draw_graph

__all__ = ["Explanation", "GraphReport", "explain", "graph_report"]


class Explanation(str):
    """The text of `explain`, plus the graph it describes."""

    graph: CallbackGraph

    def __new__(cls, text: str, graph: CallbackGraph) -> Explanation:
        self = super().__new__(cls, text)
        self.graph = graph
        return self

    def to_mermaid(self) -> str:
        return self.graph.to_mermaid()

    def to_dot(self) -> str:
        return self.graph.to_dot()


@attrs.frozen
class GraphReport:
    """A learner's callbacks explained, as plain strings (see the module docstring).

    Attributes:
        explanation: `explain(learner)`'s text.
        mermaid: the callback graph as a Mermaid flowchart (`Explanation.to_mermaid()`).
        dot: the callback graph in Graphviz DOT (`Explanation.to_dot()`).
        picture: the callback graph drawn as a PNG image (as `fp.plot_graph` draws it).
    """

    explanation: str
    mermaid: str
    dot: str
    picture: bytes


def graph_report(learner) -> GraphReport:
    """`learner`'s `GraphReport`, made now from its current graph."""
    text = explain(learner)
    graph = learner.graph
    name = {id(cb): graph.names[i] for i, cb in enumerate(graph.callbacks)}
    members = {name[id(cb)]: type(learner.groups[id(cb)]).__name__ for cb in graph.callbacks
               if id(cb) in learner.groups}
    with tempfile.TemporaryDirectory() as folder:
        picture = draw_graph(graph, Path(folder) / "graph.png", members).read_bytes()
    return GraphReport(str(text), text.to_mermaid(), text.to_dot(), picture)


def explain(learner, phases: Sequence[Phase] | None = None, *, empty: bool = False) -> Explanation:
    """Describe `learner`'s callbacks, their handlers per phase and event, and the graph.

    Args:
        learner: the learner whose callbacks to describe (nothing is trained).
        phases: the phases to show (default: training and validation); with
            `fp.PredictionPhase()`, what `predict` and `evaluate` run, `FitBegin` and
            `FitEnd` included.
        empty: also list the events no handler answers, as `(none)`.
    """
    graph = learner.graph
    phases = list(phases) if phases is not None else [TrainingPhase(), ValidationPhase()]
    lines = ["Callbacks in run order (what each reads and writes):"]
    rows = []
    for i in graph.order:
        cb = graph.callbacks[i]
        access = graph.access[i]
        parts = []
        if access.reads():
            parts.append("reads " + ", ".join(render_path(p) for p in access.reads()))
        if access.writes():
            parts.append("writes " + ", ".join(render_path(p) for p in access.writes()))
        parts += [f"fires {', '.join(e.__name__ for e in fires(cb))}"] if fires(cb) else []
        if isinstance(cb, UnsafeCallback):
            parts.append("UNSAFE: gets the raw learner, nothing is checked")
        group = learner.groups.get(id(cb))
        if group is not None:
            parts.append(f"from group {type(group).__name__}")
        rows.append((graph.names[i], "; ".join(parts) or "no state access"))
    lines += _aligned(rows, indent=2)

    lines.append("")
    lines.append("Handlers per phase and event, in run order:")
    custom = _custom_events(graph)
    sections = [(Phase(), (FitBegin, FitEnd))]
    for phase in phases:
        kinds = TRAINING_EVENTS if isinstance(phase, AbstractTrainingPhase) else VALIDATION_EVENTS
        if isinstance(phase, PredictionPhase):  # predict and evaluate fire these in it
            kinds = (FitBegin, *kinds, FitEnd)
        sections.append((phase, (*kinds, *custom)))
    handlers = []
    for phase, events in sections:
        rows = []
        for event_type in events:
            plan = learner.plans.handlers(event_type(), phase)
            if plan or empty:
                rows.append((event_type.__name__, " -> ".join(h.name for h in plan) or "(none)"))
        handlers.append((phase, rows))
    width = max((len(name) for _, rows in handlers for name, _ in rows), default=0)
    for phase, rows in handlers:
        lines.append(f"  {phase}")
        lines += _aligned(rows, indent=4, width=width) or ["    (no handlers)"]

    periodic = _periodic(graph)
    if periodic:
        lines.append("")
        lines.append("Periodic work (when it runs):")
        lines += _aligned(periodic, indent=2)

    distributed = getattr(learner, "ddp", None)
    if distributed is not None:
        lines.append("")
        lines.append("Distributed (how the model is spread over the ranks):")
        lines.append(f"  {distributed.describe()}")

    lines.append("")
    lines += _why(graph)
    return Explanation("\n".join(lines), graph)


def _periodic(graph: CallbackGraph) -> list[tuple[str, str]]:
    """`(name, "every 500 steps")` for each callback whose `every` attribute is an `fp.Every`.
    (`fit(validate_every=...)` is given to `fit`, after `explain`: not shown here.)"""
    return [(graph.names[i], str(graph.callbacks[i].every)) for i in graph.order
            if isinstance(getattr(graph.callbacks[i], "every", None), Every)]


#: The order in which `explain` lists reasons: declared orders first, then those inferred
#: from state access, then the given order of `NoConflict` pairs.
_KINDS = (DECLARED, STATE, GIVEN_ORDER)


def _aligned(rows: list[tuple[str, str]], indent: int, width: int | None = None) -> list[str]:
    """`(name, text)` rows, the names padded to `width` (default: the longest name)."""
    if width is None:
        width = max((len(name) for name, _ in rows), default=0)
    return [f"{' ' * indent}{name:<{width}}  {text}" for name, text in rows]


def _why(graph: CallbackGraph) -> list[str]:
    """The reasons for the edges, declared ones first, each kind in run order, each once."""
    if not graph.edges:
        return ["No ordering constraints: callbacks run in the order given."]
    position = {i: k for k, i in enumerate(graph.order)}
    edges = sorted(graph.edges, key=lambda e: (position[e.before], position[e.after]))
    said: dict[str, None] = {}  # an ordered set: a runafter's line comes from each of its edges
    for kind in _KINDS:
        for e in edges:
            for line in _told(graph, e, [r for r in e.reasons if r.kind == kind], position):
                said.setdefault(line)
    return ["Why this order:"] + [f"  {line}" for line in said]


def _told(graph: CallbackGraph, edge: Edge, reasons: list[Reason],
          position: dict[int, int]) -> list[str]:
    """The lines telling `reasons` of `edge`: a `runafter` as the whole list of its callback,
    the state the pair shares in one line."""
    before, after = graph.names[edge.before], graph.names[edge.after]
    lines = [_runafter_line(graph, edge.after, position) if r.from_runafter
             else f"{before} before {after}: {r}" for r in reasons if not r.path]
    paths = [r.path for r in reasons if r.path]
    if paths:
        lines.append(f"{before} before {after}: {before} writes {', '.join(paths)}, "
                     f"which {after} reads")
    return lines


def _runafter_line(graph: CallbackGraph, after: int, position: dict[int, int]) -> str:
    """What `runafter` of the callback at `after` orders it after, in one line."""
    before = sorted((e.before for e in graph.edges
                     if e.after == after and any(r.from_runafter for r in e.reasons)),
                    key=position.__getitem__)
    name = graph.names[after]
    if len(before) > 1 and len(before) == len(graph.callbacks) - 1:
        return f"{name} after every other callback: runafter({name})"
    return f"{name} after {', '.join(graph.names[i] for i in before)}: runafter({name})"


def _custom_events(graph: CallbackGraph) -> list[type[Event]]:
    """Event types outside the built-in ones that some `on` method of these callbacks names."""
    found: list[type[Event]] = []
    kinds = tuple(type(cb) for cb in graph.callbacks)
    for method in on.methods:
        types = method.signature.types
        if len(types) != 4:
            continue
        event, _, cb_type = types[0], types[1], types[2]
        if (isinstance(event, type) and issubclass(event, Event) and event not in BUILTIN_EVENTS
                and event is not Event and isinstance(cb_type, type)
                and any(issubclass(k, cb_type) for k in kinds) and event not in found):
            found.append(event)
    return found
