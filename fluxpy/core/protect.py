"""The protected view the learner hands each callback: the reference view
(`fluxpy.core.views_reference`, the specification) with its granted names looked up in advance.

A plain view answers every read in `__getattr__`, which Python calls only after its ordinary
lookup has failed: about 0.7 us a read on CPython 3.11, against 0.05 to 0.15 us for a class
attribute (`benchmarks/dispatch.py`). Callbacks read the learner several times a step
(Recorder and Metrics five times), and with the plain view as the learner's view, a step of
the tiny benchmark took 5% longer, measured side by side in one process.

So here each node of a callback's tree gets its own subclass of `ProtectedObject` whose class
attributes are the names the node grants: a granted namespace is its child view itself, a
granted leaf a property that reads the learner's value (a `Read` one through `readonly`), which
is what `ProtectedObject.__getattr__` would answer, in fewer steps. Everything else (writes,
names not listed, merged bases, errors, `dir`, `in`, `repr`) is the reference's own code, and a
getter that raises `AttributeError` falls back to `__getattr__` as Python does, so a granted
name the learner does not have gets the reference's answer too. `tests/test_views_agree.py`
holds the two to the same behaviour on random trees and states.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

from .access import Access, Read, Write
from .readonly import guard, readonly
from .views_reference import ProtectedObject

__all__ = ["ProtectedObject", "protect"]


def protect(learner: Any, access: Access, callback: Any,
            path: tuple[str, ...] = ()) -> ProtectedObject:
    """The protected view of `learner` (at `path`) for `callback`, which declared `access`
    (the node of its tree at `path`); behaves as `reference_view(learner, access, callback)`."""
    guard(learner)
    children = {name: protect(learner, child, callback, (*path, name))
                for name, child in access.items if isinstance(child, Access)}
    granted: dict[str, Any] = dict(children)
    for name, child in access.items:
        if not isinstance(child, Access):
            granted[name] = _granted_leaf(learner, (*path, name), child, callback)
    node = type("ProtectedObject", (ProtectedObject,), {"__slots__": (), **granted})
    return node(learner, access, callback, path, children)


def _granted_leaf(learner: Any, path: tuple[str, ...], permission: Read,
                  owner: Any) -> property:
    """`learner.<path>` as `__getattr__` gives it to a callback granted `permission` there."""
    dotted = ".".join(path)
    get = attrgetter(dotted)
    if type(permission) is Write:
        return property(lambda view: get(learner))
    return property(lambda view: readonly(get(learner), owner, dotted))
