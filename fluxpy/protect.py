"""The protected view: the learner as a callback's handlers see it.

`protect(learner, access, callback)` wraps the learner so that every attribute read and write
is checked against the callback's `stateaccess` tree, all the way down nested namespaces
(`learner.batch.loss`, `learner.cbstate.history`). A denied access raises `fp.ProtectedError`
naming the callback, the full path and the fix.

A view is built once per callback and learner; sub-views of namespaces are cached by the
identity of the object they wrap, so a read costs one Python-level `__getattr__`.

Under a `Read()` node, containers and namespaces come back read-only (`ReadOnlyMapping`,
`ReadOnlySequence`, `ReadOnlyObject`): a callback allowed to read `cbstate.history` cannot
change it. Tensors, modules and optimizers come back as they are: guard them with `Write`
declarations and the graph, not with proxies that would break torch.
"""

from __future__ import annotations

import copy
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch

from .access import Access, Read, Write
from .errors import ProtectedError

__all__ = ["ProtectedObject", "ReadOnlyMapping", "ReadOnlyObject", "ReadOnlySequence", "protect"]

_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), frozenset)


def protect(learner: Any, access: Access, callback: Any) -> ProtectedObject:
    """The protected view of `learner` for `callback`, which declared `access`."""
    return ProtectedObject(learner, access, callback, "")


# What a granted name gives, decided once per tree node (`_Node.entries`), not per read.
_RAW, _READONLY, _SUBVIEW = 0, 1, 2


class _Node:
    """One node of a permission tree, compiled for lookups: `entries[name]` is
    `(kind, child node or None, full path)` for each named child; `base` covers the rest."""

    __slots__ = ("base", "entries", "owner", "prefix", "tree")

    def __init__(self, tree: Access, owner: Any, prefix: str) -> None:
        self.tree = tree
        self.base = tree.base
        self.owner = owner
        self.prefix = prefix
        self.entries: dict[str, tuple[int, _Node | None, str]] = {}
        for name, child in tree.items:
            path = prefix + name
            if isinstance(child, Access):
                self.entries[name] = (_SUBVIEW, _Node(child, owner, path + "."), path)
            else:
                self.entries[name] = (_RAW if type(child) is Write else _READONLY, None, path)

    def get(self, name: str) -> Access | Read | None:
        """The permission for child `name` as in the tree (a subtree, `Read`, `Write`, `None`)."""
        return self.tree.get(name)


class ProtectedObject:
    """An object seen through a permission tree; nested namespaces are protected too."""

    # One slot, `(object, node, sub-view cache)`: a read fetches all three with one call.
    __slots__ = ("_fp_state",)

    def __init__(self, obj: Any, tree: Access, owner: Any, prefix: str) -> None:
        _set_state(self, (obj, _Node(tree, owner, prefix), {}))

    # `__getattribute__` rather than `__getattr__`: with `__getattr__`, every read would first
    # fail the normal lookup, and CPython builds (and drops) an AttributeError for it.
    def __getattribute__(self, name: str) -> Any:
        try:
            obj, node, cache = _get_state(self)
        except AttributeError:  # not initialised (copy, pickle): only its own attributes
            return _object_getattribute(self, name)
        entry = node.entries.get(name)
        if entry is None:
            if name.startswith(("__", "_fp_")):  # the view's own attributes and methods
                return _object_getattribute(self, name)
            return _unnamed(self, node, name)
        kind, sub, path = entry
        value = getattr(obj, name)
        if kind == _RAW:
            return value
        if kind == _READONLY:
            if _READ_KINDS.get(type(value)) is _AS_IS:  # tensors, numbers: no wrapper, no call
                return value
            return readonly(value, node.owner, path)
        hit = cache.get(name)
        if hit is not None and hit[0] is value:
            return hit[1]
        view = _new_view(ProtectedObject)  # the namespace was replaced (a new batch each step)
        _set_state(view, (value, sub, {}))
        cache[name] = (value, view)
        return view

    @property
    def _fp_obj(self) -> Any:
        return _get_state(self)[0]

    @property
    def _fp_node(self) -> _Node:
        return _get_state(self)[1]

    def _fp_unnamed(self, name: str) -> Any:
        """A read of a name the tree does not list: covered by `base`, or denied."""
        return _unnamed(self, self._fp_node, name)

    def __setattr__(self, name: str, value: Any) -> None:
        self._fp_check_write(name)
        setattr(self._fp_obj, name, value)

    def __delattr__(self, name: str) -> None:
        self._fp_check_write(name)
        delattr(self._fp_obj, name)

    def _fp_check_write(self, name: str) -> None:
        node = self._fp_node
        permission = node.get(name)
        if type(permission) is not Write:
            granted = None if permission is None else (
                "read access" if type(permission) is Read else "access to parts of it only")
            raise ProtectedError(node.owner, node.prefix + name, "write", granted)

    def __contains__(self, name: str) -> bool:
        node = self._fp_node
        if node.get(name) is None:
            raise ProtectedError(node.owner, node.prefix + name, "read")
        return hasattr(self._fp_obj, name)

    def __dir__(self) -> list[str]:
        node = self._fp_node
        if node.base is not None:
            return dir(self._fp_obj)
        return sorted(node.entries)

    def __repr__(self) -> str:
        node = self._fp_node
        where = f"learner.{node.prefix.rstrip('.')}" if node.prefix else "learner"
        return f"<{where} as {type(node.owner).__name__} may see it>"


def _unnamed(view: ProtectedObject, node: _Node, name: str) -> Any:
    """A read of a name the tree does not list: covered by `base`, or denied."""
    if node.base is None:
        value = getattr(_get_state(view)[0], name, None)
        if _is_namespace(value):  # report the full path: learner.batch.loss, not .batch
            return _Denied(node.owner, node.prefix + name)
        raise ProtectedError(node.owner, node.prefix + name, "read")
    value = getattr(_get_state(view)[0], name)
    if type(node.base) is Write:
        return value
    return readonly(value, node.owner, node.prefix + name)


# The view's slots, read and written without going through its own attribute methods.
_object_getattribute = object.__getattribute__
_new_view = object.__new__
_get_state = ProtectedObject._fp_state.__get__  # type: ignore[attr-defined]
_set_state = ProtectedObject._fp_state.__set__  # type: ignore[attr-defined]


def _is_namespace(value: Any) -> bool:
    return isinstance(value, types.SimpleNamespace) or attrs.has(type(value))


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
        return value
    if kind is _FROZEN:
        return frozenset(value)
    return kind(value, owner, path)


_AS_IS, _FROZEN = object(), object()
#: How `readonly` treats each type (every test below depends on the type only), so a read of
#: a tensor or a number costs one dictionary lookup.
_READ_KINDS: dict[type, Any] = {}


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
    if isinstance(value, types.SimpleNamespace) or attrs.has(type(value)) or (
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
