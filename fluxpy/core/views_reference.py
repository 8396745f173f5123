"""The protected view, as a plain reference: the specification of what a callback may do with
the learner.

`reference_view(learner, access, callback)` wraps the learner so that every attribute read and
write is checked against the callback's `stateaccess` tree, all the way down nested
namespaces (`learner.batch.loss`, `learner.cbstate.history`). `ProtectedObject.__getattr__`
and `__setattr__` say it all. For a name at some node of the tree:

- granted `Write()` (or below one): read and written as it is;
- granted `Read()`: read through `readonly` (read-only all the way down, see
  `fluxpy.core.readonly`), a write is a `ProtectedError`;
- granted a subtree `Access(...)`: the view of that namespace, with that subtree;
- not listed: the node's `base` applies (a merge such as `Access(x=Write()) | Read()` gives
  one), and without a base, reading or writing is a `ProtectedError` naming the callback, the
  full path and the declaration to add (never an `AttributeError`, so `getattr(view, name,
  default)` does not quietly hide a missing declaration).

Views are live: the view of `learner.batch` is made once, with its parent, and always shows
the learner's current batch. A view is handed only to its own callback: reached through
another object (a callback that kept its view), it is refused (`readonly`). A view holds the
learner in `_fp_raw_do_not_use`, named for what it is: not API, and the way around the view.
Reading a view changes nothing, so views may be read from any thread.

The learner hands out the faster form of `fluxpy.core.protect`, which is this view with the
granted names looked up in advance; the tests hold the two to the same behaviour.
"""

from __future__ import annotations

import types
from typing import Any

import attrs

from .access import Access, Write
from .errors import ProtectedError
from .readonly import Owned, guard, readonly
from .state import Batch

__all__ = ["ProtectedObject", "reference_view"]


def reference_view(learner: Any, access: Access, callback: Any,
                   path: tuple[str, ...] = ()) -> ProtectedObject:
    """The view of `learner` (at `path`, e.g. `("batch",)`) for `callback`, which declared
    `access` (the node of its tree at `path`)."""
    guard(learner)
    children = {name: reference_view(learner, child, callback, (*path, name))
                for name, child in access.items if isinstance(child, Access)}
    return ProtectedObject(learner, access, callback, path, children)


class ProtectedObject(Owned):
    """The learner, or a namespace of it (`path`, e.g. `("batch",)`), seen through `tree`, the
    node of `owner`'s permission tree at that path. `children` are the views of the
    namespaces the tree grants. Nothing of a view changes after it is made.
    """

    __slots__ = ("_fp_children", "_fp_owner", "_fp_path", "_fp_prefix", "_fp_raw_do_not_use",
                 "_fp_tree")

    def __init__(self, learner: Any, tree: Access, owner: Any, path: tuple[str, ...],
                 children: dict[str, ProtectedObject]) -> None:
        init = object.__setattr__  # (the view's own `__setattr__` checks permissions)
        init(self, "_fp_raw_do_not_use", learner)
        init(self, "_fp_tree", tree)
        init(self, "_fp_owner", owner)
        init(self, "_fp_path", path)
        init(self, "_fp_prefix", "".join(f"{name}." for name in path))
        init(self, "_fp_children", children)

    def _fp_shown(self) -> Any:
        """The object this view shows now: the learner, or e.g. `learner.batch`."""
        obj = self._fp_raw_do_not_use
        for name in self._fp_path:
            obj = getattr(obj, name)
        return obj

    def __getattr__(self, name: str) -> Any:
        # Python calls this for the names the view's class does not have: the learner's.
        permission = self._fp_tree.get(name)
        if isinstance(permission, Access):
            return self._fp_children[name]
        if name.startswith(("__", "_fp_")):  # the view's own protocol, never learner state
            raise AttributeError(name)
        path = self._fp_prefix + name
        if permission is None:
            value = getattr(self._fp_shown(), name, None)
            if _is_namespace(value):  # so the error names the full path: learner.batch.loss
                return _Denied(self._fp_owner, path)
            raise ProtectedError(self._fp_owner, path, "read")
        value = getattr(self._fp_shown(), name)
        if type(permission) is Write:
            return value
        return readonly(value, self._fp_owner, path)

    def __setattr__(self, name: str, value: Any) -> None:
        self._fp_check_write(name)
        setattr(self._fp_shown(), name, value)

    def __delattr__(self, name: str) -> None:
        self._fp_check_write(name)
        delattr(self._fp_shown(), name)

    def _fp_check_write(self, name: str) -> None:
        permission = self._fp_tree.get(name)
        if type(permission) is not Write:
            granted = None if permission is None else (
                "access to parts of it only" if isinstance(permission, Access)
                else "read access")
            raise ProtectedError(self._fp_owner, self._fp_prefix + name, "write", granted)

    def __contains__(self, name: str) -> bool:
        if self._fp_tree.get(name) is None:
            raise ProtectedError(self._fp_owner, self._fp_prefix + name, "read")
        return hasattr(self._fp_shown(), name)

    def __dir__(self) -> list[str]:
        if self._fp_tree.base is not None:
            return dir(self._fp_shown())
        return sorted(name for name, _ in self._fp_tree.items)

    def __repr__(self) -> str:
        where = ".".join(("learner", *self._fp_path))
        return f"<{where} as {type(self._fp_owner).__name__} may see it>"

    def __copy__(self) -> ProtectedObject:
        return self  # a view has no state of its own to copy

    def _fp_not_copyable(self, *args: Any) -> Any:
        # A copy would be a second, working view with this callback's permissions, handed to
        # whoever copied (e.g. another callback deep-copying one that kept its view).
        raise TypeError(f"{self!r}: a protected view is live and cannot be copied or "
                        "pickled; copy the values you need from it instead")

    __deepcopy__ = __reduce__ = __reduce_ex__ = _fp_not_copyable


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
