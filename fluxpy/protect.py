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


class ProtectedObject:
    """An object seen through a permission tree; nested namespaces are protected too."""

    __slots__ = ("_fp_base", "_fp_cache", "_fp_children", "_fp_obj", "_fp_owner", "_fp_prefix")

    def __init__(self, obj: Any, tree: Access, owner: Any, prefix: str) -> None:
        set_ = object.__setattr__
        set_(self, "_fp_obj", obj)
        set_(self, "_fp_children", tree.children)
        set_(self, "_fp_base", tree.base)
        set_(self, "_fp_owner", owner)
        set_(self, "_fp_prefix", prefix)
        set_(self, "_fp_cache", {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        node = self._fp_children.get(name, self._fp_base)
        if node is None:
            value = getattr(self._fp_obj, name, None)
            if _is_namespace(value):  # report the full path: learner.batch.loss, not .batch
                return _Denied(self._fp_owner, self._fp_prefix + name)
            raise ProtectedError(self._fp_owner, self._fp_prefix + name, "read")
        value = getattr(self._fp_obj, name)
        kind = type(node)
        if kind is Write:
            return value
        if kind is Read:
            return readonly(value, self._fp_owner, self._fp_prefix + name)
        hit = self._fp_cache.get(name)
        if hit is not None and hit[0] is value:
            return hit[1]
        view = ProtectedObject(value, node, self._fp_owner, f"{self._fp_prefix}{name}.")
        self._fp_cache[name] = (value, view)
        return view

    def __setattr__(self, name: str, value: Any) -> None:
        self._fp_check_write(name)
        setattr(self._fp_obj, name, value)

    def __delattr__(self, name: str) -> None:
        self._fp_check_write(name)
        delattr(self._fp_obj, name)

    def _fp_check_write(self, name: str) -> None:
        node = self._fp_children.get(name, self._fp_base)
        if type(node) is not Write:
            granted = None if node is None else ("read access" if type(node) is Read else
                                                 "access to parts of it only")
            raise ProtectedError(self._fp_owner, self._fp_prefix + name, "write", granted)

    def __contains__(self, name: str) -> bool:
        if self._fp_children.get(name, self._fp_base) is None:
            raise ProtectedError(self._fp_owner, self._fp_prefix + name, "read")
        return hasattr(self._fp_obj, name)

    def __dir__(self) -> list[str]:
        if self._fp_base is not None:
            return dir(self._fp_obj)
        return sorted(self._fp_children)

    def __repr__(self) -> str:
        where = f"learner.{self._fp_prefix.rstrip('.')}" if self._fp_prefix else "learner"
        return f"<{where} as {type(self._fp_owner).__name__} may see it>"


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
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, Mapping):
        return ReadOnlyMapping(value, owner, path)
    if isinstance(value, (list, tuple)):
        return ReadOnlySequence(value, owner, path)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if isinstance(value, types.SimpleNamespace) or attrs.has(type(value)) or (
        type(value).__module__.startswith("fluxpy.")
        and not isinstance(value, (ProtectedObject, _ReadOnly, torch.nn.Module))
    ):
        return ReadOnlyObject(value, owner, path)
    return value


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
        if name.startswith("__"):
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
