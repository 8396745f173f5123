"""The view the learner hands out (`fluxpy.core.protect`) behaves as the reference view
(`fluxpy.core.views_reference`, the specification), on random permission trees (merged ones
included), random learner states and random reads, writes, deletions, membership tests and
changes to what a read returned: the same values, the same errors with the same messages, the
same read-only-ness and the same state afterwards."""

import types

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fluxpy as fp
from fluxpy.core.protect import protect
from fluxpy.core.readonly import ReadOnlyMapping, ReadOnlyObject, ReadOnlySequence
from fluxpy.core.state import Batch
from fluxpy.core.views_reference import ProtectedObject, reference_view

NAMES = ("a", "b", "c")
KINDS = ("tensor", "int", "list", "dict", "tuple", "object", "array", "learner", "other_view")


class Probe(fp.Callback):
    """The callback whose views are compared."""


class Other(fp.Callback):
    """A callback whose view may lie in the state."""


class Root:
    """A learner: any object with attributes."""

    def __repr__(self):
        return "Root()"


class Plain:
    def __init__(self):
        self.n = 1
        self.items = [1]

    def __repr__(self):
        return f"Plain(n={self.n}, items={self.items})"


def _leaves():
    return st.sampled_from([fp.Read(), fp.Write()])


def _trees(depth=2):
    child = _leaves() if depth == 0 else st.one_of(_leaves(), _trees(depth - 1))
    return st.dictionaries(st.sampled_from(NAMES), child, max_size=3).map(
        lambda children: fp.Access(**children))


@st.composite
def _access(draw):
    """A tree, or two merged (a `Read()` meeting a subtree gives a node a base)."""
    tree = draw(_trees())
    for other in draw(st.lists(_trees(), max_size=2)):
        tree = tree | other
    return tree


def _specs(depth=2):
    kinds = st.sampled_from(KINDS)
    value = kinds if depth == 0 else st.one_of(
        kinds, st.tuples(st.sampled_from(("namespace", "batch")), _specs(depth - 1)))
    return st.dictionaries(st.sampled_from(NAMES), value, max_size=3)


def _build(spec, root, other_view, into):
    for name, kind in spec.items():
        setattr(into, name, _value(kind, root, other_view))


def _value(kind, root, other_view):
    if isinstance(kind, tuple):
        namespace = types.SimpleNamespace() if kind[0] == "namespace" else Batch()
        _build(kind[1], root, other_view, namespace)
        return namespace
    return {
        "tensor": lambda: torch.tensor([1.0, 2.0]),
        "int": lambda: 3,
        "list": lambda: [1, [2]],
        "dict": lambda: {"k": [1]},
        "tuple": lambda: (1, [2]),
        "object": Plain,
        "array": lambda: np.arange(3),
        "learner": lambda: root,
        "other_view": lambda: other_view,
    }[kind]()


def _learner(spec):
    """A fresh learner built from `spec`, with the view of another callback in reach."""
    root = Root()
    _build(spec, root, reference_view(root, fp.Access(a=fp.Write()), Other()), root)
    return root


_attempts = st.lists(
    st.tuples(st.sampled_from(("read", "write", "delete", "contains", "dir", "change")),
              st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(tuple)),
    min_size=1, max_size=8)


def _outcome(run):
    try:
        return ("ok", run())
    except Exception as error:  # the type and the message are what must agree
        return ("error", type(error).__name__, str(error))


def _describe(value, root):
    """What is seen, independent of which learner (of two equal ones) it came from."""
    if isinstance(value, ProtectedObject):
        return ("view", repr(value))
    if isinstance(value, (ReadOnlyMapping, ReadOnlySequence, ReadOnlyObject)):
        return ("read-only", type(value).__name__, repr(value))
    if value is root:
        return ("the learner",)
    if isinstance(value, torch.Tensor):
        return ("tensor", value.tolist())
    if isinstance(value, np.ndarray):
        return ("array", value.tolist(), value.flags.writeable)
    if isinstance(value, (types.SimpleNamespace, Batch)):
        return ("namespace", type(value).__name__,
                sorted((k, _describe(v, root)) for k, v in vars(value).items()))
    return ("value", type(value).__name__, repr(value))


def _change(value):
    """Try to change what a read returned, every way that applies; what happened."""
    attempts = []
    for change in (lambda v: v.append(0), lambda v: v.__setitem__(0, 9),
                   lambda v: setattr(v, "n", 5), lambda v: v.add_(1)):
        attempts.append(_outcome(lambda change=change: change(value) and None))
    return attempts


def _attempt(view, root, kind, path):
    def parent():
        obj = view
        for name in path[:-1]:
            obj = getattr(obj, name)
        return obj

    name = path[-1]
    if kind == "read":
        return _outcome(lambda: _describe(getattr(parent(), name), root))
    if kind == "write":
        return _outcome(lambda: setattr(parent(), name, [7]))
    if kind == "delete":
        return _outcome(lambda: delattr(parent(), name))
    if kind == "contains":
        return _outcome(lambda: name in parent())
    if kind == "dir":
        return _outcome(lambda: dir(parent()))
    read = _outcome(lambda: getattr(parent(), name))
    return read if read[0] == "error" else ("changed", _change(read[1]))


@settings(max_examples=300, deadline=None)
@given(_access(), _specs(), _attempts)
def test_the_fast_view_behaves_as_the_reference(access, spec, attempts):
    callback = Probe()
    fast_root, reference_root = _learner(spec), _learner(spec)
    fast = protect(fast_root, access, callback)
    reference = reference_view(reference_root, access, callback)
    for kind, path in attempts:
        assert (_attempt(fast, fast_root, kind, path)
                == _attempt(reference, reference_root, kind, path)), (kind, path)
    assert (_describe(types.SimpleNamespace(**vars(fast_root)), fast_root)
            == _describe(types.SimpleNamespace(**vars(reference_root)), reference_root))
