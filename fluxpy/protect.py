"""The protected view: the learner as a callback's handlers see it.

`protect(learner, access, callback)` wraps the learner so that every attribute read and write
is checked against the callback's `stateaccess` tree, all the way down nested namespaces
(`learner.batch.loss`, `learner.cbstate.history`). A denied access raises `fp.ProtectedError`
naming the callback, the full path and the fix.

A view is built once per callback and learner, with one object per node of the tree, whose
class attributes are the granted names: a granted leaf is a property whose getter is compiled
for its path (`learner.batch.loss` reads `root.batch.loss` directly, and a `Read` adds one type
test). Views are live: `learner.batch` as a handler sees it is the same view every step and
always shows the learner's current batch.

Under a `Read()` node, containers and namespaces come back read-only (`ReadOnlyMapping`,
`ReadOnlySequence`, `ReadOnlyObject`): a callback allowed to read `cbstate.history` cannot
change it. Tensors, modules and optimizers come back as they are: guard them with `Write`
declarations and the graph, not with proxies that would break torch.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from operator import attrgetter
from typing import Any

import attrs
import torch

from .access import Access, Read, Write, is_attribute_name
from .errors import ProtectedError
from .state import Batch

__all__ = ["ProtectedObject", "ReadOnlyMapping", "ReadOnlyObject", "ReadOnlySequence", "protect"]

_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset)


def protect(learner: Any, access: Access, callback: Any) -> ProtectedObject:
    """The protected view of `learner` for `callback`, which declared `access`."""
    return _Node(access, callback, "", learner).view


class _Node:
    """One node of a permission tree, compiled once for one learner into `view`, the only
    instance of its own subclass of `ProtectedObject`. The class attributes of that subclass
    are the granted names: a granted namespace is its child's view itself, a leaf a property
    whose getter is compiled for its path (see `_leaf_getter`). So a granted read is an
    ordinary attribute lookup, and a view allocates nothing when read."""

    __slots__ = ("base", "owner", "prefix", "tree", "view")

    def __init__(self, tree: Access, owner: Any, prefix: str, root: Any) -> None:
        self.tree = tree
        self.base = tree.base
        self.owner = owner
        self.prefix = prefix
        namespace: dict[str, Any] = {
            "__slots__": (),
            "_fp_node": self,
            "_fp_target": attrgetter(prefix[:-1]) if prefix else _itself,
        }
        for name, child in tree.items:
            path = prefix + name
            if isinstance(child, Access):
                namespace[name] = _Node(child, owner, path + ".", root).view
            else:
                namespace[name] = property(_leaf_getter(path, owner, root, type(child) is Write))
        self.view = _new_view(type("ProtectedObject", (ProtectedObject,), namespace))
        _set_root(self.view, root)

    def get(self, name: str) -> Access | Read | None:
        """The permission for child `name` as in the tree (a subtree, `Read`, `Write`, `None`)."""
        return self.tree.get(name)


def _itself(obj: Any) -> Any:
    return obj


def _leaf_getter(path: str, owner: Any, root: Any, write: bool) -> Callable[[Any], Any]:
    """The getter of a granted leaf at `path` (e.g. `batch.loss`) of `root`'s view.

    Compiled for the path, like attrs compiles `__init__`: `root.batch.loss` in the source, so
    every hop is an attribute load the interpreter specialises, where `attrgetter` or a loop
    over the names would look each name up generically. A view has a single root (each tree
    node's class is built for one learner), so the getter holds it and ignores the view. A
    `Read` leaf returns tensors and numbers as they are and anything else through `readonly`.
    """
    if not all(map(is_attribute_name, path.split("."))):
        raise ValueError(f"{path!r} is not a valid attribute path")  # `Access` rejects these
    if write:
        source = f"def get(view):\n    return root.{path}\n"
    else:
        source = (f"def get(view):\n"
                  f"    value = root.{path}\n"
                  f"    if type(value) in as_is:  # tensors, numbers: no wrapper, no call\n"
                  f"        return value\n"
                  f"    return readonly(value, owner, path)\n")
    scope = {"root": root, "as_is": _AS_IS_TYPES, "readonly": readonly, "owner": owner,
             "path": path}
    exec(compile(source, f"<fluxpy view of {path}>", "exec"), scope)
    get = scope["get"]
    get.__qualname__ = f"view.{path}"
    return get


class ProtectedObject:
    """An object seen through a permission tree; nested namespaces are protected too.

    A view is live: it holds the learner, not copies of its state, so `learner.batch` as a
    handler sees it always shows the learner's current batch (keep a value, e.g. the tensor
    `learner.batch.loss`, to remember it). Each tree node has its own subclass (see `_Node`);
    a name the tree does not list falls through to `__getattr__`, which applies the node's
    `base` permission or raises `ProtectedError`.
    """

    __slots__ = ("_fp_root",)
    _fp_node: _Node
    _fp_target: Callable[[Any], Any]  # the root object -> the object this view shows

    def __new__(cls, obj: Any, tree: Access, owner: Any) -> ProtectedObject:
        return protect(obj, tree, owner)

    def __init__(self, *args: Any) -> None:
        pass  # all done in __new__

    @property
    def _fp_obj(self) -> Any:
        """The object this view shows now (`learner`, `learner.batch`, ...)."""
        return _target(self)

    def __getattr__(self, name: str) -> Any:
        # Reached only for names without a descriptor (or whose getter raised AttributeError).
        if name.startswith(("__", "_fp_")):  # the view's own attributes, not initialised
            raise AttributeError(name)
        node = type(self)._fp_node
        if node.get(name) is not None:  # granted, but the object has no such attribute (yet):
            getattr(_target(self), name)  # the object's own AttributeError
            raise AttributeError(name)  # (the getter failed otherwise: never the raw value)
        return _unnamed(self, node, name)

    def _fp_unnamed(self, name: str) -> Any:
        """A read of a name the tree does not list: covered by `base`, or denied."""
        return _unnamed(self, type(self)._fp_node, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._fp_check_write(name)
        setattr(_target(self), name, value)

    def __delattr__(self, name: str) -> None:
        self._fp_check_write(name)
        delattr(_target(self), name)

    def _fp_check_write(self, name: str) -> None:
        node = type(self)._fp_node
        permission = node.get(name)
        if type(permission) is not Write:
            granted = None if permission is None else (
                "read access" if type(permission) is Read else "access to parts of it only")
            raise ProtectedError(node.owner, node.prefix + name, "write", granted)

    def __contains__(self, name: str) -> bool:
        node = type(self)._fp_node
        if node.get(name) is None:
            raise ProtectedError(node.owner, node.prefix + name, "read")
        return hasattr(_target(self), name)

    def __dir__(self) -> list[str]:
        node = type(self)._fp_node
        if node.base is not None:
            return dir(_target(self))
        return sorted(name for name, _ in node.tree.items)

    def __repr__(self) -> str:
        node = type(self)._fp_node
        where = f"learner.{node.prefix.rstrip('.')}" if node.prefix else "learner"
        return f"<{where} as {type(node.owner).__name__} may see it>"


def _unnamed(view: ProtectedObject, node: _Node, name: str) -> Any:
    """A read of a name the tree does not list: covered by `base`, or denied."""
    if node.base is None:
        value = getattr(_target(view), name, None)
        if _is_namespace(value):  # report the full path: learner.batch.loss, not .batch
            return _Denied(node.owner, node.prefix + name)
        raise ProtectedError(node.owner, node.prefix + name, "read")
    value = getattr(_target(view), name)
    if type(node.base) is Write:
        return value
    return readonly(value, node.owner, node.prefix + name)


def _target(view: ProtectedObject) -> Any:
    """The object `view` shows now; its own AttributeError if a namespace on the way is gone."""
    return type(view)._fp_target(view._fp_root)


# The view's slot, written without going through its own `__setattr__`.
_new_view = object.__new__
_set_root = ProtectedObject._fp_root.__set__  # type: ignore[attr-defined]


def _is_namespace(value: Any) -> bool:
    return isinstance(value, (types.SimpleNamespace, Batch)) or attrs.has(type(value))


class _Denied:
    """A namespace the callback may not see: any use raises `ProtectedError` with the full
    path, so the message says `learner.batch.loss` rather than `learner.batch`."""

    __slots__ = ("_fp_owner", "_fp_path")

    def __init__(self, owner: Any, path: str) -> None:
        object.__setattr__(self, "_fp_owner", owner)
        object.__setattr__(self, "_fp_path", path)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "read")

    def __setattr__(self, name: str, value: Any) -> None:
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "write")

    def _fp_use(self, *args: Any, **kwargs: Any) -> Any:
        raise ProtectedError(self._fp_owner, self._fp_path, "read")

    __delattr__ = __getitem__ = __setitem__ = __iter__ = __len__ = __contains__ = _fp_use
    __bool__ = __call__ = __eq__ = __repr__ = __str__ = _fp_use
    __hash__ = None  # type: ignore[assignment]


def readonly(value: Any, owner: Any, path: str) -> Any:
    """`value` as a holder of `Read()` on `path` may see it."""
    kind = _READ_KINDS.get(type(value))
    if kind is None:
        kind = _READ_KINDS[type(value)] = _read_kind(value)
        if kind is _AS_IS:
            _AS_IS_TYPES.add(type(value))
    if kind is _AS_IS:
        return value
    if kind is _FROZEN:
        return frozenset(value)
    return kind(value, owner, path)


_AS_IS, _FROZEN = object(), object()
#: How `readonly` treats each type (every test below depends on the type only), so a read of
#: a tensor or a number costs one dictionary lookup.
_READ_KINDS: dict[type, Any] = {}
#: The types `readonly` gives back as they are, for the getters' one-test fast path.
_AS_IS_TYPES: set[type] = set()


def _read_kind(value: Any) -> Any:
    if isinstance(value, _IMMUTABLE):
        return _AS_IS
    if isinstance(value, Mapping):
        return ReadOnlyMapping
    if isinstance(value, (list, tuple)):
        return ReadOnlySequence
    if isinstance(value, (set, frozenset)):
        return _FROZEN
    if callable(value):  # functions, modules, loss objects: reading means calling them
        return _AS_IS
    if _is_namespace(value) or (
        type(value).__module__.startswith("fluxpy.")
        and not isinstance(value, (ProtectedObject, _ReadOnly, torch.nn.Module))
    ):
        return ReadOnlyObject
    return _AS_IS


class _ReadOnly:
    __slots__ = ("_fp_obj", "_fp_owner", "_fp_path")

    def __init__(self, obj: Any, owner: Any, path: str) -> None:
        object.__setattr__(self, "_fp_obj", obj)
        object.__setattr__(self, "_fp_owner", owner)
        object.__setattr__(self, "_fp_path", path)

    def _fp_denied(self, *args: Any, **kwargs: Any):
        raise ProtectedError(self._fp_owner, self._fp_path, "write", "read access")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ReadOnly):
            other = other._fp_obj
        return self._fp_obj == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"readonly({self._fp_obj!r})"

    def __copy__(self) -> _ReadOnly:
        return self  # as unchangeable as a copy would be

    def __deepcopy__(self, memo: dict) -> Any:
        """A detached copy of the object, the caller's own: changing it changes nothing here."""
        return copy.deepcopy(self._fp_obj, memo)

    def __reduce__(self) -> Any:
        return (_unpickled, (self._fp_obj,))  # pickles as the object it shows


def _unpickled(obj: Any) -> Any:
    return obj


class ReadOnlyMapping(_ReadOnly, Mapping):
    """A mapping seen through `Read()`: values come back read-only, writes raise."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        return readonly(self._fp_obj[key], self._fp_owner, f"{self._fp_path}[{key!s}]")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fp_obj)

    def __len__(self) -> int:
        return len(self._fp_obj)

    # The mapping's own answers: Mapping's would ask __getitem__, which a dict with
    # __missing__ (cbstate.history) answers for every key.
    def __contains__(self, key: Any) -> bool:
        return key in self._fp_obj

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self._fp_obj else default

    __setitem__ = __delitem__ = pop = popitem = clear = update = setdefault = _ReadOnly._fp_denied


class ReadOnlySequence(_ReadOnly, Sequence):
    """A list or tuple seen through `Read()`: items come back read-only, writes raise."""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [readonly(v, self._fp_owner, self._fp_path) for v in self._fp_obj[index]]
        return readonly(self._fp_obj[index], self._fp_owner, f"{self._fp_path}[{index}]")

    def __len__(self) -> int:
        return len(self._fp_obj)

    __setitem__ = __delitem__ = append = extend = insert = pop = remove = clear = sort = (
        reverse
    ) = __iadd__ = _ReadOnly._fp_denied


class ReadOnlyObject(_ReadOnly):
    """A namespace or attrs value seen through `Read()`: attributes read-only, writes raise."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("__", "_fp_")):  # `_fp_` slots unset: not initialised, no recursion
            raise AttributeError(name)
        value = getattr(self._fp_obj, name)
        if callable(value) and not isinstance(value, type):
            raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}()", "write",
                                 "read access; methods may change the object")
        return readonly(value, self._fp_owner, f"{self._fp_path}.{name}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "write", "read access")

    def __delattr__(self, name: str) -> None:
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "write", "read access")

    def __dir__(self) -> list[str]:
        return dir(self._fp_obj)
