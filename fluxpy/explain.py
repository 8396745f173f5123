"""`explain(learner)`: a dry run that shows what will run, in which order, and why.

Nothing is trained and no state changes: the text lists each callback with its reads and
writes (and the group it came from), then, for each phase and event, the handlers in the
order they will run, then the edges of the graph with their reasons, each once: first the
orders someone declared (`runafter`, `RunFirst(...) declared by resolveconflict(...)`), then
those inferred from state access (a writer before its readers), then the given order kept
by `NoConflict` pairs. The result is a `str` with `to_mermaid()` and
`to_dot()` for drawing the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from .core.access import render_path
from .core.callback import UnsafeCallback, on
from .core.events import BUILTIN_EVENTS, TRAINING_EVENTS, VALIDATION_EVENTS, Event, FitBegin, FitEnd
from .core.graph import DECLARED, GIVEN_ORDER, STATE, CallbackGraph
from .core.phases import AbstractTrainingPhase, Phase, TrainingPhase, ValidationPhase

__all__ = ["Explanation", "explain"]


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


def explain(learner, phases: Sequence[Phase] | None = None) -> Explanation:
    """Describe `learner`'s callbacks, their handlers per phase and event, and the graph.

    Args:
        phases: the phases to show (default: training and validation).
    """
    graph = learner.graph
    phases = list(phases) if phases is not None else [TrainingPhase(), ValidationPhase()]
    lines = ["Callbacks in run order (what each reads and writes):"]
    width = max((len(n) for n in graph.names), default=0)
    for i in graph.order:
        cb = graph.callbacks[i]
        access = graph.access[i]
        parts = []
        if access.reads():
            parts.append("reads " + ", ".join(render_path(p) for p in access.reads()))
        if access.writes():
            parts.append("writes " + ", ".join(render_path(p) for p in access.writes()))
        if isinstance(cb, UnsafeCallback):
            parts.append("UNSAFE: gets the raw learner, nothing is checked")
        group = learner.groups.get(id(cb))
        if group is not None:
            parts.append(f"from group {type(group).__name__}")
        lines.append(f"  {graph.names[i]:<{width}}  {'; '.join(parts) or 'no state access'}")

    lines.append("")
    lines.append("Handlers per phase and event, in run order:")
    custom = _custom_events(graph)
    sections = [(Phase(), (FitBegin, FitEnd))]
    for phase in phases:
        kinds = TRAINING_EVENTS if isinstance(phase, AbstractTrainingPhase) else VALIDATION_EVENTS
        sections.append((phase, (*kinds, *custom)))
    for phase, events in sections:
        lines.append(f"  {phase}")
        for event_type in events:
            plan = learner._plan(event_type(), phase)
            names = " -> ".join(h.name for h in plan) if plan else "(none)"
            lines.append(f"    {event_type.__name__:<14} {names}")

    lines.append("")
    lines += _why(graph)
    return Explanation("\n".join(lines), graph)


#: The order in which `explain` lists reasons: declared orders first, then those inferred
#: from state access, then the given order of `NoConflict` pairs.
_KINDS = (DECLARED, STATE, GIVEN_ORDER)


def _why(graph: CallbackGraph) -> list[str]:
    """Each edge's reasons, declared ones first, each kind in run order."""
    if not graph.edges:
        return ["No ordering constraints: callbacks run in the order given."]
    position = {i: k for k, i in enumerate(graph.order)}
    edges = sorted(graph.edges, key=lambda e: (position[e.before], position[e.after]))
    return ["Why this order:"] + [
        f"  {graph.names[e.before]} before {graph.names[e.after]}: {r}"
        for kind in _KINDS for e in edges for r in e.reasons if r.kind == kind
    ]


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
